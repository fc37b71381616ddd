"""Test-wide settings: strict dtype promotion (catches silent float64/int upcasts)."""

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
