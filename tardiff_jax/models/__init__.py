"""Flax Linen networks: the 1D U-Net denoiser and the downstream classifiers."""

from tardiff_jax.models.unet1d import UNet1D, UNetConfig, count_params, init_params, make_denoiser

__all__ = ["UNet1D", "UNetConfig", "count_params", "init_params", "make_denoiser"]
