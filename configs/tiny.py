"""Tiny configuration for tests and CI: every stage runs in seconds on a 2-core CPU. It checks
plumbing, not quality."""

from tardiff_jax.config import default_config_dict


def get_config(variant: str | None = None):
  del variant
  c = default_config_dict()
  c.data.simulator.num_stays = 400  # Enough for a stratified split with a few positives each.
  c.data.simulator.val_fraction = 0.1  # 80/10/10 split.
  c.data.simulator.test_fraction = 0.1
  c.unet.base_channels = 8  # Smallest U-Net that still has every block type.
  c.unet.channel_mult = (1, 2)  # Two levels.
  c.unet.num_res_blocks = 1
  c.unet.attention_resolutions = (2,)  # Attention at the second level.
  c.unet.num_heads = 2
  c.train_diffusion.batch_size = 32
  c.train_diffusion.num_steps = 20  # A few steps: checks plumbing, not quality.
  c.train_diffusion.warmup_steps = 5
  c.train_diffusion.checkpoint_every = 10  # Exercise checkpointing.
  c.train_diffusion.log_every = 5
  c.classifier.timesnet.d_model = 8  # Narrow TimesNet.
  c.classifier.timesnet.d_ff = 8
  c.classifier.timesnet.e_layers = 1
  c.classifier.timesnet.top_k = 2
  c.classifier.timesnet.num_kernels = 2  # Kernels 1 and 3.
  c.classifier.gru.hidden = 8  # Narrow GRU.
  c.train_classifier.batch_size = 64
  c.train_classifier.max_epochs = 2
  c.train_classifier.patience = 1
  c.guidance.cache_batch_size = 32
  c.guidance.scale_grid = (0.0, 10.0)  # Two-point sweep.
  c.sampling.num_steps = 4  # Four DDIM steps.
  c.sampling.batch_size = 64
  c.evaluation.num_seeds = 2
  c.evaluation.alphas = (0.2, 1.0)
  c.evaluation.downstream = "gru"  # The fresh models compile much faster than TimesNet.
  c.evaluation.fidelity_repeats = 2
  c.evaluation.fidelity_steps = 40
  return c
