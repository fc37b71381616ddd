"""Influence guidance as a sampler hook: the reverse-step mean shift `w * J`.

`make_influence_guidance` returns `guidance_fn(gparams, x_t, x0_hat, y, info) -> shift[B, T, C]`
for the sampler's guidance hook (`tardiff_jax.sampling`). `gparams` is a pytree passed to the
jitted sampler as an argument (nothing large is baked in as a constant, and changing w never
recompiles):
  {"params": classifier params, "G": cached guidance gradient (pytree like params),
   "scale": w, float32[] or float32[num_classes] (per-class scales, indexed by y)},
and, for a stack of guides (an ensemble, or the checkpoints of a training trajectory: TracIn,
Pruthi et al. 2020), "weights": float32[M] with "params" and "G" carrying a leading member
axis M: J is then sum_m weights[m] * J(params_m, G_m).

J is the input gradient of the influence score (see `scores.py`), taken
  - at x0_hat (default; the classifier was trained on clean data) and applied to x_t's mean,
  - at x_t, or
  - through the denoiser: grad_{x_t} Delta(x0_fn(x_t)) (costs a denoiser backward pass).
Sign: w > 0 moves samples towards higher influence, i.e. towards samples whose addition to the
downstream training set lowers the guidance-set loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from tardiff_jax.config.fields import option
from tardiff_jax.influence import scores
from tardiff_jax.influence.scores import LossFn
from tardiff_jax.sampling.plan import GuidanceFn

EVALUATE_ON = ("x0_hat", "x_t")
INFLUENCE_VARIANTS = ("dot", "cosine")
GATES = ("warn", "error")
CLASS_FILTER_OPTIONS = ("auto", "all", "minority", "majority")
PLACEMENTS = ("mean", "x0")


@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
  """How guided methods steer sampling, and each method's scale w (w > 0 favours samples whose
  addition to the downstream training set lowers the guidance-set loss)."""
  variant: str = option("dot", "Influence score of the tardiff method: 'dot' (paper Algorithm "
                               "1) or 'cosine' (paper Eq. 20).")
  # Measured on the default run (benchmarks/results/influence_vs_scale.md): w = 10 moves samples
  # by ~0.5 SD RMS, w = 100 by ~2.8 SD, w = 1000 by ~22 SD (samples destroyed).
  scale: float | None = option(None, "tardiff's w; None = chosen on evaluation-val AUPRC over "
                                     "scale_grid (never test).")
  scale_grid: tuple[float, ...] = option((0.0, 1.0, 2.0, 3.0, 5.0, 10.0), "Candidate w of every "
                                         "guided method whose scale is None (one grid, one "
                                         "procedure for all).")
  class_scales: tuple[float, ...] = option((), "Per-class w of tardiff (one per label); "
                                               "() = use scale.")
  classifier_scale: float | None = option(None, "w of classifier guidance (grad log p(y|x)); "
                                                "None = chosen on evaluation-val like scale.")
  batch_scale: float | None = option(None, "w of the reference code's batch-normalised "
                                           "guidance; None = chosen on evaluation-val.")
  evaluate_on: str = option("x0_hat", "Where the guide reads the sample: 'x0_hat' or 'x_t'.")
  placement: str = option("mean", "Where w * J enters the step: 'mean' (added to the reverse "
                                  "step's mean, paper Algorithm 1) or 'x0' (added to x0_hat, eps "
                                  "recomputed from it: the mean moves by c_t w J, c_t <= 1, small "
                                  "at noisy steps, 1 at the last).")
  through_denoiser: bool = option(False, "Differentiate through x0_hat(x_t).")
  class_filter: str = option("auto", "G over 'all', 'minority' or 'majority' guidance samples, "
                                     "or 'auto': tardiff's G over all or over the minority "
                                     "class, chosen on evaluation-val together with w when w is "
                                     "chosen there (otherwise 'all').")
  minority_scale_grid: tuple[float, ...] = option((), "Candidate w of tardiff with the "
                                                  "minority-only G when class_filter='auto' "
                                                  "(() = scale_grid).")
  normalize_cache: bool = option(False, "l2-normalise G.")
  cache_batch_size: int = option(256, "Guidance examples per vmapped batch.")
  clip: float = option(0.0, "Max per-sample l2 norm of the guidance gradient J; 0 = off.")
  normalize_grad: bool = option(False, "Divide J by its per-sample l2 norm.")
  class_balance: bool = option(False, "Per-class scales w * m / m_c (m_c: mean norm of the "
                                      "guidance gradient over class-c training stays, m: over "
                                      "all), so one w moves every class alike; per-sample "
                                      "scores only (not 'batch').")
  gate: str = option("warn", "A guide classifier no better than chance on guidance-val (its "
                             "AUROC interval includes 0.5): 'warn' (say so loudly, mark the "
                             "guided methods and the verdict) or 'error' (stop the run).")
  # On the simulator a GRU trained on permuted labels, early-stopped like the guide, ranks
  # guidance-val cases at AUROC 0.40-0.78 (random features see abnormal vitals; early stopping
  # picks a lucky epoch): beating 0.5 is not enough, the guide must beat label-free guides too.
  ensemble: int = option(1, "Guides behind tardiff's score: the guide and ensemble - 1 more "
                              "trained like it with seeds seed+1, ... (one vmapped training), "
                              "each with its own G; their input gradients averaged.")
  trajectory: int = option(0, "TracIn (Pruthi et al. 2020): each guide's score summed over this "
                              "many checkpoints of its training (epochs evenly spaced up to its "
                              "best), each with its G at that checkpoint, weighted by the "
                              "learning rate (constant: an average). 0 = final parameters.")
  gate_permutations: int = option(9, "Guides trained like the guide on permuted training labels "
                                     "(the gate's label-free reference; 0 = compare with 0.5 "
                                     "only).")

  def __post_init__(self):
    if self.variant not in INFLUENCE_VARIANTS:
      raise ValueError(f"guidance.variant={self.variant!r}; expected one of "
                       f"{INFLUENCE_VARIANTS} (classifier and batch guidance are methods of "
                       "their own: list them in evaluation.methods).")
    if self.evaluate_on not in EVALUATE_ON:
      raise ValueError(f"guidance.evaluate_on={self.evaluate_on!r}; expected one of {EVALUATE_ON}.")
    if self.placement not in PLACEMENTS:
      raise ValueError(f"guidance.placement={self.placement!r}; expected one of {PLACEMENTS}.")
    if self.through_denoiser and self.evaluate_on != "x0_hat":
      raise ValueError("guidance.through_denoiser=True differentiates x0_hat(x_t): it needs "
                       "guidance.evaluate_on='x0_hat'.")
    if self.class_filter not in CLASS_FILTER_OPTIONS:
      raise ValueError(f"guidance.class_filter={self.class_filter!r}; expected one of "
                       f"{CLASS_FILTER_OPTIONS}.")
    if any(w < 0 for w in self.minority_scale_grid):
      raise ValueError(f"guidance.minority_scale_grid must hold w >= 0, got "
                       f"{self.minority_scale_grid}.")
    if self.cache_batch_size <= 0:
      raise ValueError(f"guidance.cache_batch_size must be positive, got {self.cache_batch_size}.")
    if self.clip < 0:
      raise ValueError(f"guidance.clip must be >= 0 (0 = off), got {self.clip}.")
    if self.scale is not None and self.class_scales:
      raise ValueError("guidance.scale and guidance.class_scales are both set; set one (the "
                       "per-class scales replace the single one).")
    if self.gate not in GATES:
      raise ValueError(f"guidance.gate={self.gate!r}; expected one of {GATES}.")
    if self.ensemble < 1 or self.trajectory < 0:
      raise ValueError(f"guidance.ensemble must be >= 1 and guidance.trajectory >= 0, got "
                       f"{self.ensemble} and {self.trajectory}.")
    if self.class_balance and self.uses_members:
      raise ValueError("guidance.class_balance is not defined for a stack of guides "
                       "(guidance.ensemble > 1 or guidance.trajectory > 0); use one.")
    if self.gate_permutations < 0:
      raise ValueError(f"guidance.gate_permutations must be >= 0, got {self.gate_permutations}.")
    unset = [n for n in ("classifier_scale", "batch_scale") if getattr(self, n) is None]
    if self.scale is None and not self.class_scales:
      unset.append("scale")
    if unset and not self.scale_grid:
      raise ValueError(f"guidance.{unset[0]} is None (choose w on evaluation-val) but "
                       "guidance.scale_grid is empty.")

  @property
  def uses_members(self) -> bool:
    """Whether tardiff's score uses a stack of guides (ensemble or trajectory)."""
    return self.ensemble > 1 or self.trajectory > 0

  @property
  def fixed_filter(self) -> str:
    """The class filter of G when it is not chosen on evaluation-val ('auto' -> 'all')."""
    return "all" if self.class_filter == "auto" else self.class_filter

  @property
  def selects_scale(self) -> bool:
    """Whether tardiff's w is chosen on evaluation-val (neither scale nor class_scales set)."""
    return self.scale is None and not self.class_scales


def make_gparams(params: Any, G: Any, scale: Any, weights: Any = None) -> dict[str, Any]:
  """The `gparams` pytree of the guidance hook; `scale` becomes a float32 array (no recompiles).
  With `weights` (float32[M]), `params` and `G` are stacks of M guides on a leading axis."""
  out = {"params": params, "G": G, "scale": jnp.asarray(scale, jnp.float32)}
  if weights is not None:
    out["weights"] = jnp.asarray(weights, jnp.float32)
  return out


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


def per_row_batches(fn: Any, x: np.ndarray, y: np.ndarray, batch_size: int) -> np.ndarray:
  """`fn(xb[B], yb[B]) -> per-row values [B]` over (x, y) in batches of one shape B =
  `batch_size` (the last one padded with copies of its last row, dropped after: one compile),
  concatenated on the host."""
  out = []
  for i in range(0, len(y), batch_size):
    xb, yb = x[i:i + batch_size], y[i:i + batch_size]
    pad = batch_size - len(yb)
    if pad:
      xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)])
      yb = np.concatenate([yb, np.repeat(yb[-1:], pad, 0)])
    out.append(np.asarray(fn(xb, yb))[:batch_size - pad])
  return np.concatenate(out)


def class_balance_factors(loss_fn: LossFn, params: Any, G: Any, x: Any, y: Any,
                          num_classes: int, variant: str = "dot", batch_size: int = 256,
                          eps: float = scores.DEFAULT_EPS) -> np.ndarray:
  """Per-class factors f[c] = m / m_c of the guidance scale (`GuidanceConfig.class_balance`).

  m_c is the mean l2 norm of the per-sample guidance gradient J(x_i, y_i) (the input gradient of
  the score, `scores.influence_input_grad`) over the samples of class c, and m its mean over all
  samples; so w * f[y] gives every class the same mean shift, and the mean shift over the samples
  stays w * m. x: float32[N, T, C] (real training stays), y: int[N]. Computed in fixed-size
  batches (the last one padded: one compile). A class without samples gets f = 1.
  """
  if variant not in scores.PER_SAMPLE_VARIANTS:
    raise ValueError(f"class_balance needs a per-sample score, not {variant!r}.")
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
  fn = jax.jit(lambda xb, yb: jnp.sqrt(jnp.sum(jnp.square(
      scores.influence_input_grad(loss_fn, params, G, xb, yb, variant, eps)), axis=(1, 2))))
  norms = per_row_batches(fn, x, y, batch_size).astype(np.float64)
  m = norms.mean()
  return np.array([m / norms[y == c].mean() if np.any(y == c) else 1.0
                   for c in range(num_classes)], np.float64)


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
    weights = gparams.get("weights") if isinstance(gparams, dict) else None
    if through_denoiser:
      x0_fn = _info_get(info, "x0_fn")
      # Per-sample scores summed: the denoiser treats samples independently, so the gradient of
      # the sum w.r.t. x_t is the per-sample gradient (for `batch` it is the batch score's).
      if weights is None:
        J = jax.grad(lambda xt: total_score(params, G, x0_fn(xt), y))(x_t)
      else:
        J = jax.grad(lambda xt: jnp.sum(weights * jax.vmap(
            lambda p, g, x0: total_score(p, g, x0, y), in_axes=(0, 0, None))(
                params, G, x0_fn(xt))))(x_t)
    else:
      x = x0_hat if evaluate_on == "x0_hat" else x_t
      one = lambda p, g: scores.influence_input_grad(loss_fn, p, g, x, y, variant, eps)  # noqa: E731
      if weights is None:
        J = one(params, G)
      else:  # One guide at a time (memory of one backward pass), weighted sum of their J.
        Js = jax.lax.map(lambda pg: one(*pg), (params, G))
        J = jnp.tensordot(weights.astype(Js.dtype), Js, axes=1)
    J = _per_sample_postprocess(J, clip, normalize, eps)
    w = _scale_for(scale, y, x_t.ndim).astype(x_t.dtype)
    return (w * J).astype(x_t.dtype)

  return guidance_fn


def guidance_from_config(loss_fn: LossFn, cfg: GuidanceConfig,
                         variant: str | None = None) -> GuidanceFn:
  """`make_influence_guidance` with the options of a GuidanceConfig; `variant` (a score of
  `scores.VARIANTS`, e.g. "classifier") replaces the influence variant `cfg.variant`."""
  fn = make_influence_guidance(loss_fn, variant=variant or cfg.variant,
                               evaluate_on=cfg.evaluate_on, through_denoiser=cfg.through_denoiser,
                               clip=cfg.clip or None, normalize=cfg.normalize_grad)
  return at_x0(fn) if cfg.placement == "x0" else fn


def x0_shift_factor(info: Any) -> Array:
  """c_t: how far the mean of a DDIM step moves per unit shift of x0_hat when eps is recomputed
  from the shifted x0_hat (x_t fixed):

    mean = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps,
    eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
    => c_t = sqrt(ab_prev) - sqrt(1 - ab_prev - sigma^2) sqrt(ab / (1 - ab)),

  the DDPM posterior's x0 coefficient sqrt(ab_prev) beta_t / (1 - ab) at eta = 1, and 1 at the
  last step (ab_prev = 1)."""
  ab, ab_prev = _info_get(info, "alpha_bar"), _info_get(info, "alpha_bar_prev")
  sigma = _info_get(info, "sigma")
  return (jnp.sqrt(ab_prev) - jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma ** 2, 0.0))
          * jnp.sqrt(ab / (1.0 - ab)))


def at_x0(guidance_fn: GuidanceFn) -> GuidanceFn:
  """The hook `guidance_fn` with its shift added to x0_hat before the DDIM update instead of to
  the step's mean (eps recomputed from the shifted x0_hat): the mean shift times `x0_shift_factor`
  (manifold-preserving style: the guided point is a clean-sample estimate carried through the
  step's own posterior)."""
  def fn(gparams, x_t, x0_hat, y, info):
    return x0_shift_factor(info).astype(x_t.dtype) * guidance_fn(gparams, x_t, x0_hat, y, info)
  return fn
