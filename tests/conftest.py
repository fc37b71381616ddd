"""Test-wide settings: strict dtype promotion (catches silent float64/int upcasts) and a cheaper
XLA backend (tests compile many tiny programs on 2 cores; LLVM optimisation buys them nothing)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
