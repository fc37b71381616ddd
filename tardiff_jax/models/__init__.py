"""Flax Linen networks: the 1D U-Net denoiser and the downstream classifiers."""

from tardiff_jax.models.unet1d import UNet1D
from tardiff_jax.models.unet1d import UNetConfig
from tardiff_jax.models.unet1d import count_params
from tardiff_jax.models.unet1d import init_params
from tardiff_jax.models.unet1d import make_denoiser
