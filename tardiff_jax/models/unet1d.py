"""Class-conditional 1D U-Net denoiser for [T, C] series (the reference code's openai-style U-Net).

Layout is time-major, `x: float32[B, T, C]`. The network predicts the noise `eps: [B, T, C]`
from the noisy series, the diffusion step `t: int[B]` and the class label `y: int[B]`. Label
`num_classes` is the null label of classifier-free guidance; in training, labels are replaced
by it with probability `label_dropout` (rng stream "label").

Structure (as guided-diffusion's `UNetModel` with `dims=1`, `use_scale_shift_norm=True`,
`resblock_updown=True`): sinusoidal time embedding + 2-layer MLP (width 4 * base_channels),
label embedding added to it; input conv; per level `num_res_blocks` residual blocks (+ multi-head
self-attention when the level's downsampling factor is in `attention_resolutions`) and a
down-sampling residual block; a middle ResBlock-Attention-ResBlock; the mirrored decoder with
skip connections and up-sampling residual blocks; GroupNorm-SiLU-zero-initialised output conv.
T is zero-padded at the end to a multiple of 2^(levels-1) and cropped back at the output.

Attention sites (`attention`): "self" is guided-diffusion's `AttentionBlock` (GroupNorm, one qkv
projection, multi-head self-attention, zero-initialised output projection, residual); the
reference code (devin-21/TarDiff `configs/base/mimic_icustay_base.yaml`,
`use_spatial_transformer: True`) puts LDM spatial transformers there instead (Rombach et al.
2022; `ldm/modules/diffusionmodules/unet1d.py` builds `Spatial1DTransformer(ch, num_heads,
ch // num_heads, depth=1, context_dim=32)`): "transformer", see `transformer_block.py`.

The context of the transformer's second attention: the reference's scripts (`train.sh`,
`generation.sh`) pass `--uncond`, which sets `cond_stage_config: __is_unconditional__`
(`train_main.py`, `guidance_generation.py`), so the `DomainUnifiedEncoder` context is never
built and the second attention (`context=None`) attends to the block's own input; its
`CrossAttention` also projects k and v from the query width, not from `context_dim`, so a
32-wide context could not be fed. `context_tokens=0` (the default) is that network: 22.55 M
parameters for `configs/default.py:paper` at C=7, the reference's 22.55 M used ones (its 22.89 M
total adds ResBlock `cond_emb_layers` and a null context its forward never touches).
`context_tokens=n > 0` is an option beyond the reference: a learned per-label sequence
(`nn.Embed` of the label, the null label included, to n x `context_dim`) that the second
attention attends to instead, k and v projected from `context_dim`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from tardiff_jax.config.fields import option
from tardiff_jax.models.transformer_block import SpatialTransformer1D

Array = jax.Array

ATTENTIONS = ("self", "transformer")
# Fields that only shape attention="transformer" networks (left out of the meta otherwise).
TRANSFORMER_FIELDS = ("attention", "transformer_depth", "context_tokens", "context_dim")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Hyper-parameters of `UNet1D` (the default is sized for a 2-core CPU; the reference code's
  network is `configs/default.py:paper`)."""

  base_channels: int = option(32, "Channels at the first level.")
  channel_mult: tuple[int, ...] = option((1, 2, 2), "Channel multiplier per level (each level "
                                                    "halves T).")
  num_res_blocks: int = option(1, "Residual blocks per level.")
  attention_resolutions: tuple[int, ...] = option((2,), "Downsampling factors with "
                                                        "self-attention.")
  num_heads: int = option(4, "Attention heads.")
  dropout: float = option(0.0, "Dropout inside residual blocks.")
  num_classes: int = option(2, "Classes of the label embedding (from the data).", derived=True)
  label_dropout: float = option(0.1, "Probability of the null label in training "
                                     "(classifier-free guidance).")
  # At most this many groups (gcd with the width). 32, the reference's GroupNorm32, is one
  # channel per group at 32 channels: every feature is normalised over time on its own, which
  # deletes each stay's level from every residual branch; samples were 13-51% under-dispersed
  # between stays, 8 groups fixed it (benchmarks/results/archive/diffusion_fidelity_gn8_1k.md).
  norm_groups: int = option(8, "GroupNorm groups (at most; gcd with each width).")
  attention: str = option("self", "Attention sites: 'self' (multi-head self-attention) or "
                                  "'transformer' (the reference code's LDM spatial transformer: "
                                  "self-attention, a second attention and a GEGLU MLP).")
  transformer_depth: int = option(1, "Transformer blocks per attention site (attention="
                                     "'transformer'; the reference: 1).")
  context_tokens: int = option(0, "Learned per-label context tokens for the transformer's second "
                                  "attention; 0: it attends to its own input, as the reference "
                                  "code runs (attention='transformer' only).")
  context_dim: int = option(32, "Width of the context tokens (the reference's context_dim; "
                                "used when context_tokens > 0).")

  def __post_init__(self):
    object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
    object.__setattr__(self, "attention_resolutions",
                       tuple(int(r) for r in self.attention_resolutions))
    if self.base_channels < 1:
      raise ValueError(f"unet.base_channels must be >= 1, got {self.base_channels}.")
    if not self.channel_mult or any(m < 1 for m in self.channel_mult):
      raise ValueError(f"unet.channel_mult must be a non-empty tuple of ints >= 1, "
                       f"got {self.channel_mult}.")
    if self.num_res_blocks < 1:
      raise ValueError(f"unet.num_res_blocks must be >= 1, got {self.num_res_blocks}.")
    if self.num_heads < 1:
      raise ValueError(f"unet.num_heads must be >= 1, got {self.num_heads}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"unet.dropout must be in [0, 1), got {self.dropout}.")
    if not 0.0 <= self.label_dropout <= 1.0:
      raise ValueError(f"unet.label_dropout must be in [0, 1], got {self.label_dropout}.")
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
    if self.norm_groups < 1:
      raise ValueError(f"unet.norm_groups must be >= 1, got {self.norm_groups}.")
    if self.attention not in ATTENTIONS:
      raise ValueError(f"unet.attention must be one of {ATTENTIONS}, got {self.attention!r}.")
    if self.transformer_depth < 1:
      raise ValueError(f"unet.transformer_depth must be >= 1, got {self.transformer_depth}.")
    if self.context_tokens < 0:
      raise ValueError(f"unet.context_tokens must be >= 0, got {self.context_tokens}.")
    if self.context_dim < 1:
      raise ValueError(f"unet.context_dim must be >= 1, got {self.context_dim}.")
    if self.context_tokens and self.attention != "transformer":
      raise ValueError(f"unet.context_tokens={self.context_tokens} needs "
                       f"unet.attention='transformer' (self-attention has no context).")
    factors = [2 ** i for i in range(len(self.channel_mult))]
    for r in self.attention_resolutions:
      if r not in factors:
        raise ValueError(f"unet.attention_resolutions entry {r} is not a downsampling factor of "
                         f"this U-Net (levels have factors {factors}).")
    # Every width that sees attention (the attention levels and the middle block) must split
    # into num_heads heads.
    attn_widths = [self.base_channels * self.channel_mult[factors.index(r)]
                   for r in self.attention_resolutions]
    attn_widths.append(self.base_channels * self.channel_mult[-1])
    for w in attn_widths:
      if w % self.num_heads:
        raise ValueError(f"unet.num_heads={self.num_heads} does not divide attention width {w}.")

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready fields (the checkpoint meta). With attention='self' the transformer-only fields
    are left out: they do not shape that network, and its meta (checkpoint compatibility,
    artifact keys) stays what it was before they existed."""
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
    if self.attention == "self":
      for k in TRANSFORMER_FIELDS:
        d.pop(k)
    return d

  @property
  def time_multiple(self) -> int:
    """T is padded to a multiple of this (2^(levels-1))."""
    return 2 ** (len(self.channel_mult) - 1)


def timestep_embedding(t: Array, dim: int, max_period: float = 10000.0) -> Array:
  """Sinusoidal embedding of integer steps `t: [B]` -> `[B, dim]` ([cos | sin], as the
  reference)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def _groups(channels: int, max_groups: int = 32) -> int:
  """GroupNorm groups: `max_groups` (32 = the reference's GroupNorm32) when it divides the width,
  else the largest common divisor."""
  return math.gcd(max_groups, channels)


def _norm(channels: int, name: str | None = None, max_groups: int = 32) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=_groups(channels, max_groups), epsilon=1e-5, name=name)


def conv1d_as_matmul(xp: Array, kernel: Array) -> Array:
  """A 'VALID' 1-D convolution of the padded `xp[B, T+k-1, Cin]` with `kernel[k, Cin, Cout]` as
  one matmul: the k shifted copies of `xp` side by side on the channel axis ([B, T, k*Cin],
  im2col) times `kernel.reshape(k*Cin, Cout)` -> [B, T, Cout]."""
  k, cin, cout = kernel.shape
  t = xp.shape[1] - k + 1
  cols = xp if k == 1 else jnp.concatenate([xp[:, j:j + t] for j in range(k)], axis=-1)
  return cols @ kernel.reshape(k * cin, cout)


class Conv1D(nn.Module):
  """'SAME' 1-D convolution over time with bias, computed by `conv1d_as_matmul`.

  Its parameters are `nn.Conv`'s (`kernel[k, Cin, Cout]` with the same initialiser, `bias`), so
  it is `nn.Conv(features, (k,), padding="SAME")` up to float rounding. Why a matmul: on CPU the
  matmul runs through the same fast kernels as the network's dense layers, and XLA's convolution
  weight-gradients inside a loop (several training steps per compiled call) are very slow there.
  """

  features: int
  kernel_size: int
  zero_init: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    init = nn.initializers.zeros if self.zero_init else nn.linear.default_kernel_init
    kernel = self.param("kernel", init, (k, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    lo = (k - 1) // 2
    xp = jnp.pad(x, ((0, 0), (lo, k - 1 - lo), (0, 0))) if k > 1 else x
    return conv1d_as_matmul(xp, kernel) + bias


def _conv(features: int, kernel: int, name: str | None = None, zero: bool = False) -> Conv1D:
  return Conv1D(features, kernel, zero_init=zero, name=name)


def _down(h: Array) -> Array:
  """Average-pools time by 2: [B, T, C] -> [B, T/2, C]."""
  b, t, c = h.shape
  return h.reshape(b, t // 2, 2, c).mean(axis=2)


def _up(h: Array) -> Array:
  """Nearest-neighbour upsampling of time by 2: [B, T, C] -> [B, 2T, C]."""
  return jnp.repeat(h, 2, axis=1)


class ResBlock(nn.Module):
  """GroupNorm-SiLU-conv, scale-shift norm from the embedding, dropout, zero conv; optional
  resample."""

  out_channels: int
  dropout: float = 0.0
  resample: str | None = None  # None, "down" or "up".
  norm_groups: int = 32

  @nn.compact
  def __call__(self, x: Array, emb: Array, train: bool) -> Array:
    c_in = x.shape[-1]
    h = nn.silu(_norm(c_in, "in_norm", self.norm_groups)(x))
    if self.resample == "down":
      h, x = _down(h), _down(x)
    elif self.resample == "up":
      h, x = _up(h), _up(x)
    h = _conv(self.out_channels, 3, "in_conv")(h)
    scale_shift = nn.Dense(2 * self.out_channels, name="emb_proj")(nn.silu(emb))[:, None, :]
    scale, shift = jnp.split(scale_shift, 2, axis=-1)
    h = _norm(self.out_channels, "out_norm", self.norm_groups)(h) * (1.0 + scale) + shift
    h = nn.silu(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = _conv(self.out_channels, 3, "out_conv", zero=True)(h)
    if c_in != self.out_channels:
      x = _conv(self.out_channels, 1, "skip")(x)
    return x + h


class AttentionBlock(nn.Module):
  """Multi-head self-attention over time with a residual connection (zero-initialised output)."""

  num_heads: int
  norm_groups: int = 32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, t, c = x.shape
    d = c // self.num_heads
    qkv = nn.Dense(3 * c, name="qkv")(_norm(c, "norm", self.norm_groups)(x))
    q, k, v = jnp.split(qkv.reshape(b, t, 3, self.num_heads, d), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [B, T, H, D]
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(jnp.float32(d))
    weights = jax.nn.softmax(logits, axis=-1)
    h = jnp.einsum("bhts,bshd->bthd", weights, v).reshape(b, t, c)
    h = nn.Dense(c, name="proj_out", kernel_init=nn.initializers.zeros)(h)
    return x + h


class UNet1D(nn.Module):
  """Epsilon-prediction U-Net: `(x[B,T,C], t[B], y[B]) -> eps[B,T,C]`."""

  config: UNetConfig

  @nn.compact
  def __call__(self, x: Array, t: Array, y: Array, train: bool = False) -> Array:
    cfg = self.config
    if x.ndim != 3:
      raise ValueError(f"UNet1D expects x of shape [B, T, C], got {x.shape}.")
    b, length, c_in = x.shape
    chex.assert_shape(t, (b,))
    chex.assert_shape(y, (b,))
    emb_dim = 4 * cfg.base_channels

    # Time and label embeddings.
    emb = timestep_embedding(t, cfg.base_channels)
    emb = nn.Dense(emb_dim, name="time_mlp_0")(emb)
    emb = nn.Dense(emb_dim, name="time_mlp_1")(nn.silu(emb))
    y = y.astype(jnp.int32)
    if train and cfg.label_dropout > 0.0:
      drop = jax.random.bernoulli(self.make_rng("label"), cfg.label_dropout, y.shape)
      y = jnp.where(drop, jnp.int32(cfg.num_classes), y)
    emb = emb + nn.Embed(cfg.num_classes + 1, emb_dim, name="label_emb")(y)
    context = None  # The transformer's second attention attends to its own input.
    if cfg.context_tokens:
      context = nn.Embed(cfg.num_classes + 1, cfg.context_tokens * cfg.context_dim,
                         name="label_context")(y).reshape(b, cfg.context_tokens, cfg.context_dim)

    # Pad T to a multiple of 2^(levels-1); crop at the end.
    mult = cfg.time_multiple
    padded = -(-length // mult) * mult
    h = jnp.pad(x, ((0, 0), (0, padded - length), (0, 0))) if padded != length else x

    res_block = functools.partial(ResBlock, dropout=cfg.dropout, norm_groups=cfg.norm_groups)

    def attention(h: Array, name: str) -> Array:
      if cfg.attention == "transformer":
        return SpatialTransformer1D(cfg.num_heads, cfg.transformer_depth, cfg.norm_groups,
                                    name=name)(h, context)
      return AttentionBlock(cfg.num_heads, cfg.norm_groups, name=name)(h)

    h = _conv(cfg.base_channels, 3, "in_conv")(h)
    skips = [h]
    ds = 1
    for level, m in enumerate(cfg.channel_mult):
      for i in range(cfg.num_res_blocks):
        h = res_block(cfg.base_channels * m, name=f"down_{level}_res_{i}")(h, emb, train)
        if ds in cfg.attention_resolutions:
          h = attention(h, f"down_{level}_attn_{i}")
        skips.append(h)
      if level != len(cfg.channel_mult) - 1:
        h = res_block(h.shape[-1], resample="down", name=f"down_{level}_resample")(
            h, emb, train)
        skips.append(h)
        ds *= 2

    h = res_block(h.shape[-1], name="mid_res_0")(h, emb, train)
    h = attention(h, "mid_attn")
    h = res_block(h.shape[-1], name="mid_res_1")(h, emb, train)

    for level in reversed(range(len(cfg.channel_mult))):
      m = cfg.channel_mult[level]
      for i in range(cfg.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res_block(cfg.base_channels * m, name=f"up_{level}_res_{i}")(h, emb, train)
        if ds in cfg.attention_resolutions:
          h = attention(h, f"up_{level}_attn_{i}")
      if level != 0:
        h = res_block(h.shape[-1], resample="up", name=f"up_{level}_resample")(
            h, emb, train)
        ds //= 2

    h = nn.silu(_norm(h.shape[-1], "out_norm", cfg.norm_groups)(h))
    h = _conv(c_in, 3, "out_conv", zero=True)(h)
    return h[:, :length, :]


def make_denoiser(config: UNetConfig) -> tuple[UNet1D, Callable[..., Array]]:
  """Returns `(module, apply_fn)`; `apply_fn(params, x, t, y) -> eps` runs in eval mode."""
  module = UNet1D(config)

  def apply_fn(params: Any, x: Array, t: Array, y: Array) -> Array:
    return module.apply({"params": params}, x, t, y, train=False)

  return module, apply_fn


def init_params(config: UNetConfig, key: Array, seq_len: int, channels: int) -> Any:
  """Initialises U-Net parameters for series of shape [seq_len, channels] (deterministic in key)."""
  return _jitted_init(config, int(seq_len), int(channels))(key)


@functools.lru_cache(maxsize=16)
def _jitted_init(config: UNetConfig, seq_len: int, channels: int) -> Callable[[Array], Any]:
  """One compiled init per (config, shape): an eager init would dispatch hundreds of small ops."""
  module = UNet1D(config)

  def init(key: Array) -> Any:
    x = jnp.zeros((1, seq_len, channels), jnp.float32)
    z = jnp.zeros((1,), jnp.int32)
    # The counter-based "rbg" generator compiles much faster than threefry for the many
    # initialiser draws; it is seeded deterministically from `key`.
    data = jax.random.key_data(key).reshape(-1)[:2]
    rbg_key = jax.random.wrap_key_data(jnp.concatenate([data, data]), impl="rbg")
    return module.init({"params": rbg_key}, x, z, z, train=False)["params"]

  return jax.jit(init)


def count_params(params: Any) -> int:
  """Total number of scalars in a parameter pytree."""
  return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


__all__: Sequence[str] = ("UNet1D", "UNetConfig", "make_denoiser", "init_params", "count_params",
                          "timestep_embedding")
