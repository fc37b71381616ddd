"""Training loop of the U-Net denoiser: optax AdamW, EMA inside the jitted step, exact resume.

State is one pytree `{step, params, ema_params, opt_state, rng}`. Step `s` uses the key
`fold_in(rng, s)` (noise, timesteps, dropout, label dropout) and the batch
`perm_e[j*B:(j+1)*B]` with `e, j = divmod(s, N // B)` and `perm_e` a permutation drawn from
`fold_in(data_key, e)`: everything a step does is a function of (seed, step), so a run
resumed from a checkpoint at step k reaches bit-identical parameters to one that never stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tardiff_jax.data.normalizers import interpolate_missing
from tardiff_jax.diffusion import DiffusionConfig
from tardiff_jax.diffusion import as_eps_model
from tardiff_jax.diffusion import eps_loss
from tardiff_jax.models.unet1d import UNet1D
from tardiff_jax.models.unet1d import UNetConfig
from tardiff_jax.models.unet1d import init_params
from tardiff_jax.models.unet1d import make_denoiser
from tardiff_jax.training.checkpoints import CheckpointStore
from tardiff_jax.training.progress import Progress

Array = jax.Array
State = dict[str, Any]

CHECKPOINT_SUBDIR = os.path.join("checkpoints", "diffusion")


# How unobserved entries of a training series are filled in the denoiser's input (the loss is
# masked either way): "zero" = the normalised fill (the channel's train mean for zscore), "interp"
# = linear interpolation in time between the stay's own observations.
FILLS = ("zero", "interp")


@dataclasses.dataclass(frozen=True)
class DiffusionTrainConfig:
  """Typed view of `cfg.train_diffusion` (see configs/default.py)."""

  batch_size: int = 128
  num_steps: int = 3000
  learning_rate: float = 5e-4
  warmup_steps: int = 200
  lr_schedule: str = "cosine"
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  ema_decay: float = 0.999
  checkpoint_every: int = 500
  log_every: int = 50
  fill: str = "zero"

  def __post_init__(self):
    for name in ("batch_size", "num_steps", "checkpoint_every", "log_every"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"train_diffusion.{name} must be >= 1, got {getattr(self, name)}.")
    if self.warmup_steps < 0:
      raise ValueError(f"train_diffusion.warmup_steps must be >= 0, got {self.warmup_steps}.")
    if not self.learning_rate > 0:
      raise ValueError(f"train_diffusion.learning_rate must be > 0, got {self.learning_rate}.")
    if self.lr_schedule not in ("cosine", "constant"):
      raise ValueError(f"train_diffusion.lr_schedule must be 'cosine' or 'constant', "
                       f"got {self.lr_schedule!r}.")
    if self.weight_decay < 0:
      raise ValueError(f"train_diffusion.weight_decay must be >= 0, got {self.weight_decay}.")
    if not self.grad_clip > 0:
      raise ValueError(f"train_diffusion.grad_clip must be > 0, got {self.grad_clip}.")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"train_diffusion.ema_decay must be in [0, 1), got {self.ema_decay}.")
    if self.fill not in FILLS:
      raise ValueError(f"train_diffusion.fill must be one of {FILLS}, got {self.fill!r}.")

  @classmethod
  def from_config(cls, section: Any) -> DiffusionTrainConfig:
    """From a ConfigDict / mapping with `cfg.train_diffusion` fields (missing fields: defaults)."""
    get = section.get if hasattr(section, "get") else lambda k, d=None: getattr(section, k, d)
    kw = {f.name: get(f.name, None) for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in kw.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class DiffusionTrainResult:
  """What `train_diffusion` returns; `apply_fn(params, x, t, y)` is the eval-mode denoiser as an
  eps model (a v-predicting network is wrapped by `as_eps_model`), ready for the samplers."""

  module: UNet1D
  apply_fn: Callable[..., Array]
  params: Any
  ema_params: Any
  step: int
  meta: dict[str, Any]
  train_time_s: float
  checkpoint_dir: str
  trained_steps: int = 0  # Optimiser steps run by this call (0 when a finished run was reloaded).


@functools.lru_cache(maxsize=16)
def make_optimizer(cfg: DiffusionTrainConfig) -> optax.GradientTransformation:
  """AdamW with linear warm-up then cosine decay (to 0) or constant, after global-norm clipping."""
  if cfg.lr_schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, max(cfg.warmup_steps, 1), max(cfg.num_steps, cfg.warmup_steps + 1))
  else:
    lr = optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1)),
         optax.constant_schedule(cfg.learning_rate)], [max(cfg.warmup_steps, 1)])
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(lr, weight_decay=cfg.weight_decay))


def ema_decay_at(step: Array, decay: float) -> Array:
  """EMA decay with the usual warm-up min(decay, (1+s)/(10+s)): short runs still track params."""
  s = step.astype(jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + s) / (10.0 + s))


def init_state(unet_cfg: UNetConfig, tx: optax.GradientTransformation, seed: int,
               seq_len: int, channels: int) -> State:
  """Fresh training state `{step, params, ema_params, opt_state, rng}` for series [seq_len, C]."""
  init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
  params = init_params(unet_cfg, init_key, seq_len, channels)
  return _jitted_state(tx)(params, train_key)


@functools.lru_cache(maxsize=16)
def _jitted_state(tx: optax.GradientTransformation) -> Callable[..., State]:
  return jax.jit(lambda p, k: {"step": jnp.zeros((), jnp.int32), "params": p,
                               "ema_params": jax.tree_util.tree_map(jnp.copy, p),
                               "opt_state": tx.init(p), "rng": k})


def _default_loss_fn(loss: str, prediction: str = "eps") -> Callable[..., Array]:
  """`tardiff_jax.diffusion.eps_loss`; label dropout happens inside the U-Net (rng "label")."""
  return lambda apply_fn, params, schedule, x0, y, mask, key: eps_loss(
      apply_fn, params, schedule, x0, y, mask, key, loss=loss, prediction=prediction)


@functools.lru_cache(maxsize=8)
def _cached_train_step(unet_cfg: UNetConfig, train_cfg: DiffusionTrainConfig,
                       diff_cfg: DiffusionConfig, num_examples: int,
                       loss_fn: Callable[..., Array] | None):
  """One compiled step per (configs, N, loss_fn): repeated / resumed runs do not recompile."""
  if loss_fn is None:
    loss_fn = _default_loss_fn(diff_cfg.loss, diff_cfg.prediction)
  return make_train_step(UNet1D(unet_cfg), make_optimizer(train_cfg), diff_cfg.make_schedule(),
                         train_cfg, num_examples, loss_fn)


def make_train_step(module: UNet1D, tx: optax.GradientTransformation, schedule: Any,
                    train_cfg: DiffusionTrainConfig, num_examples: int,
                    loss_fn: Callable[..., Array]) -> Callable[..., tuple[State, Array]]:
  """Returns the jitted `step(state, x, y, mask) -> (state, loss)` (state donated).

  `loss_fn(apply_fn, params, schedule, x0, y, mask, key) -> scalar` is the denoising loss; the
  `apply_fn` it receives runs the U-Net in training mode (dropout, label dropout).
  """
  batch = train_cfg.batch_size
  if num_examples < batch:
    raise ValueError(f"train_diffusion.batch_size={batch} exceeds the {num_examples} training "
                     f"examples.")
  batches_per_epoch = num_examples // batch

  def step_fn(state: State, x: Array, y: Array, mask: Array) -> tuple[State, Array]:
    step = state["step"]
    data_root, step_root = jax.random.split(state["rng"])
    loss_key, drop_key, label_key = jax.random.split(jax.random.fold_in(step_root, step), 3)
    # The permutation of an epoch depends only on (rng, epoch), not on the step within it.
    epoch, j = jnp.divmod(step, batches_per_epoch)
    perm = jax.random.permutation(jax.random.fold_in(data_root, epoch), num_examples)
    idx = jax.lax.dynamic_slice_in_dim(perm, j * batch, batch)
    xb, yb, mb = x[idx], y[idx], mask[idx]

    def train_apply(p, xt, t, yy):
      return module.apply({"params": p}, xt, t, yy, train=True,
                          rngs={"dropout": drop_key, "label": label_key})

    loss, grads = jax.value_and_grad(
        lambda p: loss_fn(train_apply, p, schedule, xb, yb, mb, loss_key))(state["params"])
    # optax mixes Python floats with int32 counters: allow standard promotion inside it only.
    with jax.numpy_dtype_promotion("standard"):
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    d = ema_decay_at(step, train_cfg.ema_decay)
    ema = jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, state["ema_params"], params)
    new_state = {"step": step + 1, "params": params, "ema_params": ema, "opt_state": opt_state,
                 "rng": state["rng"]}
    return new_state, loss

  return jax.jit(step_fn, donate_argnums=(0,))


def _resolve_configs(config: Any, num_classes: int, seed: int | None):
  """(UNetConfig, DiffusionTrainConfig, DiffusionConfig, seed, config_dict) from either a full
  ConfigDict (sections unet / train_diffusion / diffusion, field seed) or a tuple of the three
  dataclasses."""
  if isinstance(config, (tuple, list)):
    if len(config) != 3:
      raise ValueError("config must be a ConfigDict or a tuple (UNetConfig, DiffusionTrainConfig, "
                       "DiffusionConfig).")
    unet_cfg, train_cfg, diff_cfg = config
    if unet_cfg.num_classes != num_classes:
      unet_cfg = dataclasses.replace(unet_cfg, num_classes=num_classes)
    seed = 0 if seed is None else seed
    cfg_dict = {"unet": unet_cfg.to_dict(), "train_diffusion": dataclasses.asdict(train_cfg),
                "diffusion": dataclasses.asdict(diff_cfg), "seed": seed}
  else:
    unet_cfg = UNetConfig.from_config(config.unet, num_classes)
    train_cfg = DiffusionTrainConfig.from_config(config.train_diffusion)
    diff_cfg = DiffusionConfig.from_config(config.diffusion)
    seed = int(config.get("seed", 0)) if seed is None else seed
    cfg_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return unet_cfg, train_cfg, diff_cfg, int(seed), cfg_dict


def denoiser_inputs(x: np.ndarray, mask: np.ndarray, fill: str) -> np.ndarray:
  """The denoiser's training input from zero-filled normalised `x` and its `mask`, per
  `train_diffusion.fill` (see FILLS)."""
  if fill not in FILLS:
    raise ValueError(f"train_diffusion.fill must be one of {FILLS}, got {fill!r}.")
  return interpolate_missing(x, mask) if fill == "interp" else x


def _check_data(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None):
  x = np.asarray(x)
  y = np.asarray(y)
  if x.ndim != 3:
    raise ValueError(f"x_train must have shape [N, T, C], got {x.shape}.")
  if y.shape != (x.shape[0],):
    raise ValueError(f"y_train must have shape [{x.shape[0]}], got {y.shape}.")
  if mask is None:
    mask = ~np.isnan(x)
  mask = np.asarray(mask, bool)
  if mask.shape != x.shape:
    raise ValueError(f"mask must have the shape of x_train {x.shape}, got {mask.shape}.")
  x = np.where(mask, np.nan_to_num(x), 0.0).astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError("x_train holds non-finite observed values.")
  return x, y.astype(np.int32), mask


def train_diffusion(config: Any, x_train: np.ndarray, y_train: np.ndarray,
                    mask: np.ndarray | None, workdir: str, *, num_classes: int | None = None,
                    normalizer: dict[str, Any] | None = None, seed: int | None = None,
                    loss_fn: Callable[..., Array] | None = None, stop_after: int | None = None,
                    metrics_path: str | None = None, quiet: bool = False) -> DiffusionTrainResult:
  """Trains (or resumes) the denoiser on normalised `x_train[N,T,C]`, `y_train[N]`, `mask[N,T,C]`.

  Checkpoints go to `workdir/checkpoints/diffusion` every `checkpoint_every` steps and at the end
  (meta: the config dict, U-Net/diffusion/train configs, T, C, num_classes, `normalizer`);
  losses to `metrics_path` (default `workdir/metrics.jsonl`). If a checkpoint exists the run
  resumes from it; if it is already at `num_steps` nothing is trained. `stop_after=k` stops (with
  a checkpoint) after k steps in total, to simulate an interruption.
  """
  x, y, m = _check_data(x_train, y_train, mask)
  if num_classes is None:
    num_classes = int(y.max()) + 1
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(f"y_train labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}].")
  unet_cfg, train_cfg, diff_cfg, seed, cfg_dict = _resolve_configs(config, num_classes, seed)
  x = denoiser_inputs(x, m, train_cfg.fill)
  n, seq_len, channels = x.shape
  tx = make_optimizer(train_cfg)
  module, apply_fn = make_denoiser(unet_cfg)
  meta = {"config": cfg_dict, "unet": unet_cfg.to_dict(), "diffusion": dataclasses.asdict(diff_cfg),
          "train_diffusion": dataclasses.asdict(train_cfg), "seq_len": seq_len,
          "channels": channels, "num_classes": num_classes, "seed": seed,
          "normalizer": normalizer or {}}
  ckpt_dir = os.path.join(workdir, CHECKPOINT_SUBDIR)
  metrics_path = metrics_path or os.path.join(workdir, "metrics.jsonl")
  total = train_cfg.num_steps if stop_after is None else min(int(stop_after), train_cfg.num_steps)

  t0 = time.perf_counter()
  with CheckpointStore(ckpt_dir) as store:
    abstract = jax.eval_shape(lambda: init_state(unet_cfg, tx, seed, seq_len, channels))
    latest = store.latest_step()
    if latest is not None:
      _check_compatible(store.restore_meta(), meta)
      state, _ = store.restore(abstract)
      state = jax.tree_util.tree_map(jnp.asarray, state)
    else:
      state = init_state(unet_cfg, tx, seed, seq_len, channels)
    start = int(state["step"])
    if start < total:
      step_fn = _cached_train_step(unet_cfg, train_cfg, diff_cfg, n, loss_fn)
      xd, yd, md = jnp.asarray(x), jnp.asarray(y), jnp.asarray(m)
      progress = Progress("train_diffusion", total, start=start, metrics_path=metrics_path,
                          unit="step", quiet=quiet)
      losses = []
      for s in range(start + 1, total + 1):
        state, loss = step_fn(state, xd, yd, md)
        losses.append(loss)
        if s % train_cfg.log_every == 0 or s == total:
          progress.report(s, loss=float(jnp.mean(jnp.stack(losses))))
          losses = []
        if s % train_cfg.checkpoint_every == 0 or s == total:
          store.save(s, state, meta)
  state = jax.device_get(state)
  eps_apply = as_eps_model(apply_fn, diff_cfg.make_schedule(), diff_cfg.prediction)  # eps out.
  return DiffusionTrainResult(module=module, apply_fn=eps_apply, params=state["params"],
                              ema_params=state["ema_params"], step=int(state["step"]), meta=meta,
                              train_time_s=time.perf_counter() - t0, checkpoint_dir=ckpt_dir,
                              trained_steps=max(0, total - start))


def _check_compatible(saved: dict[str, Any], meta: dict[str, Any]) -> None:
  """Refuses to resume a checkpoint trained with a different model or data shape."""
  for k in ("unet", "diffusion", "seq_len", "channels", "num_classes"):
    if saved.get(k) != meta[k]:
      raise ValueError(f"Checkpoint {k}={saved.get(k)!r} does not match this run's {meta[k]!r}; "
                       f"use a fresh workdir.")
  fill = saved.get("train_diffusion", {}).get("fill", "zero")  # It changes the inputs seen.
  if fill != meta["train_diffusion"]["fill"]:
    raise ValueError(f"Checkpoint was trained with train_diffusion.fill={fill!r}, this run asks "
                     f"for {meta['train_diffusion']['fill']!r}; use a fresh workdir.")


def _find_ckpt_dir(path: str) -> str:
  sub = os.path.join(path, CHECKPOINT_SUBDIR)
  return sub if os.path.isdir(sub) else path


def load_diffusion(ckpt_dir: str) -> tuple[UNet1D, Callable[..., Array], Any, dict[str, Any]]:
  """Loads `(module, apply_fn, ema_params, meta)` from a checkpoint dir (or a workdir); `apply_fn`
  predicts eps whatever the network's `diffusion.prediction` target."""
  ckpt_dir = _find_ckpt_dir(ckpt_dir)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"No diffusion checkpoint directory {ckpt_dir}.")
  with CheckpointStore(ckpt_dir) as store:
    if store.latest_step() is None:
      raise FileNotFoundError(f"No diffusion checkpoint in {ckpt_dir}.")
    meta = store.restore_meta()
    u = dict(meta["unet"])
    unet_cfg = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in u.items()})
    train_cfg = DiffusionTrainConfig(**meta["train_diffusion"])
    tx = make_optimizer(train_cfg)
    abstract = jax.eval_shape(lambda: init_state(unet_cfg, tx, int(meta["seed"]),
                                                 int(meta["seq_len"]), int(meta["channels"])))
    state, meta = store.restore(abstract)
  module, apply_fn = make_denoiser(unet_cfg)
  diff_cfg = DiffusionConfig(**meta["diffusion"])
  ema = jax.tree_util.tree_map(jnp.asarray, state["ema_params"])
  return module, as_eps_model(apply_fn, diff_cfg.make_schedule(), diff_cfg.prediction), ema, meta
