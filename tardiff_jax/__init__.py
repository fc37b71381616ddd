"""tardiff_jax: target-oriented diffusion guidance (TarDiff) for EHR time series in JAX."""

__version__ = "0.1.0.dev0"
