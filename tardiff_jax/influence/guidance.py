"""Influence guidance as a sampler hook: the reverse-step mean shift `w * J`.

`make_influence_guidance` returns `guidance_fn(gparams, x_t, x0_hat, y, info) -> shift[B, T, C]`
for the sampler's guidance hook (`tardiff_jax.sampling`). `gparams` is a pytree passed to the
jitted sampler as an argument (nothing large is baked in as a constant, and changing w never
recompiles):
  {"params": classifier params, "G": cached guidance gradient (pytree like params),
   "scale": w, float32[] or float32[num_classes] (per-class scales, indexed by y)}.

J is the input gradient of the influence score (see `scores.py`), taken
  - at x0_hat (default; the classifier was trained on clean data) and applied to x_t's mean,
  - at x_t, or
  - through the denoiser: grad_{x_t} Delta(x0_fn(x_t)) (costs a denoiser backward pass).
Sign: w > 0 moves samples towards higher influence, i.e. towards samples whose addition to the
downstream training set lowers the guidance-set loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from tardiff_jax.influence import scores
from tardiff_jax.influence.scores import LossFn

METHODS = ("tardiff", "classifier", "batch", "none")
EVALUATE_ON = ("x0_hat", "x_t")

GuidanceFn = Callable[[Any, Array, Array, Array, Any], Array]


@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
  """Typed view of the `guidance` config section (see configs/default.py for each field)."""
  method: str = "tardiff"
  variant: str = "dot"
  scale: float = 100.0
  evaluate_on: str = "x0_hat"
  through_denoiser: bool = False
  class_filter: str = "all"
  normalize_cache: bool = False
  cache_batch_size: int = 256
  scale_grid: tuple[float, ...] = (0.0, 10.0, 100.0, 1000.0)
  select_scale: bool = True
  class_scales: tuple[float, ...] = ()
  clip: float = 0.0
  normalize_grad: bool = False

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"guidance.method={self.method!r}; expected one of {METHODS}.")
    scores.check_variant(self.variant)
    if self.evaluate_on not in EVALUATE_ON:
      raise ValueError(f"guidance.evaluate_on={self.evaluate_on!r}; expected one of {EVALUATE_ON}.")
    if self.through_denoiser and self.evaluate_on != "x0_hat":
      raise ValueError("guidance.through_denoiser=True differentiates x0_hat(x_t): it needs "
                       "guidance.evaluate_on='x0_hat'.")
    if self.class_filter not in ("all", "minority", "majority"):
      raise ValueError(f"guidance.class_filter={self.class_filter!r}; expected 'all', "
                       "'minority' or 'majority'.")
    if self.cache_batch_size <= 0:
      raise ValueError(f"guidance.cache_batch_size must be positive, got {self.cache_batch_size}.")
    if self.clip < 0:
      raise ValueError(f"guidance.clip must be >= 0 (0 = off), got {self.clip}.")

  @classmethod
  def from_config(cls, section: Any) -> GuidanceConfig:
    """From a config section (ConfigDict or mapping); unknown fields raise a ValueError."""
    d = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"Unknown guidance config fields {unknown}; known: {sorted(names)}.")
    for k in ("scale_grid", "class_scales"):
      if k in d:
        d[k] = tuple(float(v) for v in d[k])
    for k in ("scale", "clip"):
      if k in d:
        d[k] = float(d[k])
    return cls(**d)

  @property
  def score_variant(self) -> str:
    """The influence variant the method uses (`tardiff` uses `variant`)."""
    return self.variant if self.method == "tardiff" else self.method

  def scale_array(self, num_classes: int | None = None) -> Array:
    """w as float32[] or, with class_scales, float32[num_classes] (gparams["scale"])."""
    if self.class_scales:
      if num_classes is not None and len(self.class_scales) != num_classes:
        raise ValueError(f"guidance.class_scales has {len(self.class_scales)} entries for "
                         f"{num_classes} classes.")
      return jnp.asarray(self.class_scales, jnp.float32)
    return jnp.asarray(self.scale, jnp.float32)


def make_gparams(params: Any, G: Any, scale: Any) -> dict[str, Any]:
  """The `gparams` pytree of the guidance hook; `scale` becomes a float32 array (no recompiles)."""
  return {"params": params, "G": G, "scale": jnp.asarray(scale, jnp.float32)}


def _info_get(info: Any, name: str) -> Any:
  if hasattr(info, name):
    return getattr(info, name)
  return info[name]


def _per_sample_postprocess(J: Array, clip: float | None, normalize: bool, eps: float) -> Array:
  """Optional per-sample l2 normalisation and/or max-norm clipping of J[B, T, C]."""
  if not normalize and not clip:
    return J
  norm = jnp.sqrt(jnp.sum(jnp.square(J), axis=tuple(range(1, J.ndim)), keepdims=True))
  if normalize:
    J = J / (norm + eps)
    norm = norm / (norm + eps)
  if clip:
    J = J * jnp.minimum(1.0, clip / (norm + eps))
  return J


def _scale_for(scale: Array, y: Array, ndim: int) -> Array:
  scale = jnp.asarray(scale)
  if scale.ndim == 0:
    return scale
  if scale.ndim != 1:
    raise ValueError(f"gparams['scale'] must be a scalar or [num_classes], got {scale.shape}.")
  return scale[y].reshape(y.shape + (1,) * (ndim - 1))


def make_influence_guidance(loss_fn: LossFn, variant: str = "dot", evaluate_on: str = "x0_hat",
                            through_denoiser: bool = False, clip: float | None = None,
                            normalize: bool = False,
                            eps: float = scores.DEFAULT_EPS) -> GuidanceFn:
  """Builds `guidance_fn(gparams, x_t[B,T,C], x0_hat[B,T,C], y[B], info) -> w * J [B,T,C]`.

  `loss_fn(params, x[T, C], y[]) -> scalar` is the downstream per-example loss; `clip` (max
  per-sample l2 norm of J, None/0 = off) and `normalize` (J / ||J|| per sample) are off by default.
  """
  scores.check_variant(variant)
  if evaluate_on not in EVALUATE_ON:
    raise ValueError(f"evaluate_on={evaluate_on!r}; expected one of {EVALUATE_ON}.")
  if through_denoiser and evaluate_on != "x0_hat":
    raise ValueError("through_denoiser=True differentiates x0_hat(x_t): use evaluate_on='x0_hat'.")
  if clip is not None and clip < 0:
    raise ValueError(f"clip must be None, 0 (off) or positive, got {clip}.")

  def total_score(params, G, x, y):
    if variant == "batch":
      return scores.batch_score(loss_fn, params, G, x, y, eps)
    return jnp.sum(scores.influence(loss_fn, params, G, x, y, variant, eps))

  def guidance_fn(gparams: Any, x_t: Float[Array, "b t c"], x0_hat: Float[Array, "b t c"],
                  y: Int[Array, " b"], info: Any) -> Float[Array, "b t c"]:
    if variant == "none":
      return jnp.zeros_like(x_t)
    params, scale = gparams["params"], gparams["scale"]
    G = gparams.get("G") if isinstance(gparams, dict) else gparams["G"]
    if through_denoiser:
      x0_fn = _info_get(info, "x0_fn")
      # Per-sample scores summed: the denoiser treats samples independently, so the gradient of
      # the sum w.r.t. x_t is the per-sample gradient (for `batch` it is the batch score's).
      J = jax.grad(lambda xt: total_score(params, G, x0_fn(xt), y))(x_t)
    else:
      x = x0_hat if evaluate_on == "x0_hat" else x_t
      J = scores.influence_input_grad(loss_fn, params, G, x, y, variant, eps)
    J = _per_sample_postprocess(J, clip, normalize, eps)
    w = _scale_for(scale, y, x_t.ndim).astype(x_t.dtype)
    return (w * J).astype(x_t.dtype)

  return guidance_fn


def guidance_from_config(loss_fn: LossFn, cfg: GuidanceConfig) -> GuidanceFn:
  """`make_influence_guidance` with the options of a GuidanceConfig."""
  return make_influence_guidance(loss_fn, variant=cfg.score_variant, evaluate_on=cfg.evaluate_on,
                                 through_denoiser=cfg.through_denoiser,
                                 clip=cfg.clip or None, normalize=cfg.normalize_grad)
