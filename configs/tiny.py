"""Tiny configuration for tests and CI: every stage runs in seconds on a 2-core CPU."""

import importlib.util
import os

import ml_collections

# Load the sibling default config by path: config files are loaded by path, not as a package.
_spec = importlib.util.spec_from_file_location(
    "_tardiff_default_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))
default = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(default)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
  del variant
  c = default.get_config()
  c.data.num_stays = 400  # Enough for a stratified split with a few positives per split.
  c.data.val_fraction = 0.1  # 80/10/10 split.
  c.data.test_fraction = 0.1  # 80/10/10 split.
  c.unet.base_channels = 8  # Smallest U-Net that still has every block type.
  c.unet.channel_mult = (1, 2)  # Two levels.
  c.unet.num_res_blocks = 1  # One residual block per level.
  c.unet.attention_resolutions = (2,)  # Attention at the second level.
  c.unet.num_heads = 2  # Two heads.
  c.train_diffusion.batch_size = 32  # Small batches.
  c.train_diffusion.num_steps = 20  # A few steps: checks plumbing, not quality.
  c.train_diffusion.warmup_steps = 5  # Short warm-up.
  c.train_diffusion.checkpoint_every = 10  # Exercise checkpointing.
  c.train_diffusion.log_every = 5  # Frequent metrics lines.
  c.classifier.timesnet.d_model = 8  # Narrow TimesNet.
  c.classifier.timesnet.d_ff = 8  # Narrow Inception.
  c.classifier.timesnet.e_layers = 1  # One TimesBlock.
  c.classifier.timesnet.top_k = 2  # Two periods.
  c.classifier.timesnet.num_kernels = 2  # Kernels 1 and 3.
  c.classifier.gru.hidden = 8  # Narrow GRU.
  c.train_classifier.batch_size = 64  # Small batches.
  c.train_classifier.max_epochs = 2  # Two epochs.
  c.train_classifier.patience = 1  # Stop fast.
  c.guidance.cache_batch_size = 32  # Small cache batches.
  c.guidance.scale_grid = (0.0, 10.0)  # Two-point sweep.
  c.sampling.num_steps = 4  # Four DDIM steps.
  c.sampling.batch_size = 64  # Small sampler batches.
  c.evaluation.num_seeds = 2  # Two seeds.
  c.evaluation.alphas = (0.2, 1.0)  # Two ratios.
  c.evaluation.downstream = "gru"  # The fresh models compile much faster than TimesNet.
  c.evaluation.fidelity_repeats = 2  # Two discriminative-score repeats.
  c.evaluation.fidelity_steps = 40  # A few GRU steps: checks plumbing.
  return c
