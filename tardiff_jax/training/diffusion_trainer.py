"""Training loop of the U-Net denoiser: optax AdamW, EMA inside the jitted step, exact resume.

State is one pytree `{step, params, ema_params, opt_state, rng}`. Step `s` uses the key
`fold_in(rng, s)` (noise, timesteps, dropout, label dropout) and the batch
`perm_e[j*B:(j+1)*B]` with `e, j = divmod(s, N // B)` and `perm_e` a permutation drawn from
`fold_in(data_key, e)`: everything a step does is a function of (seed, step), so a run
resumed from a checkpoint at step k reaches bit-identical parameters to one that never stopped
(under the same `steps_per_call`: a step alone in a call and a step inside a call of several are
the same maths, compiled apart, so they may round differently).
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
from jax.sharding import Mesh

from tardiff_jax.config.fields import option
from tardiff_jax.data.dataset import check_series
from tardiff_jax.data.normalizers import interpolate_missing
from tardiff_jax.diffusion import DiffusionConfig, as_eps_model, eps_loss
from tardiff_jax.models.unet1d import UNet1D, UNetConfig, init_params, make_denoiser
from tardiff_jax.parallel.sharding import (
    check_divisible,
    constrain_rows,
    jit_replicated,
    replicate,
    round_up,
    shard_rows,
    to_host,
)
from tardiff_jax.training.checkpoints import CheckpointStore, meta_mismatch
from tardiff_jax.training.progress import Progress

Array = jax.Array
State = dict[str, Any]

# How unobserved entries of a training series are filled in the denoiser's input (the loss is
# masked either way): "zero" = the normalised fill (the channel's train mean for zscore), "interp"
# = linear interpolation in time between the stay's own observations.
FILLS = ("zero", "interp")
# Settings of how a run logs, saves and groups its steps into calls, not of what it trains.
RUN_ONLY = ("checkpoint_every", "log_every", "steps_per_call")


@dataclasses.dataclass(frozen=True)
class DiffusionTrainConfig:
  """Optimisation of the denoiser (the default is sized for a 2-core CPU, ~0.1 s/step)."""

  batch_size: int = option(64, "Examples per step.")
  num_steps: int = option(2500, "Optimiser steps (160 epochs of 1,000 training stays).")
  learning_rate: float = option(1e-3, "Peak learning rate after warm-up.")
  warmup_steps: int = option(200, "Linear warm-up steps.")
  lr_schedule: str = option("cosine", "After warm-up: 'cosine' (decay to 0) or 'constant'.")
  weight_decay: float = option(0.0, "AdamW weight decay (0 = Adam).")
  grad_clip: float = option(1.0, "Global-norm gradient clipping.")
  ema_decay: float = option(0.999, "EMA of parameters (sampling uses the EMA).")
  checkpoint_every: int = option(500, "Steps between orbax checkpoints.")
  log_every: int = option(50, "Steps between metrics.jsonl lines and progress updates.")
  steps_per_call: int = option(8, "Optimiser steps per compiled call (one lax.scan): XLA "
                                  "reuses its work buffers across the steps of a call (on a "
                                  "2-core CPU 8 per call trains 1.3x faster than 1); logs and "
                                  "checkpoints still land on their steps.")
  # Measured: zero-filled holes teach the denoiser to amplify levels, so samples of a channel
  # were over-dispersed in proportion to its missing rate (Temp, 36% missing: +25% std).
  fill: str = option("interp", "Denoiser input at unobserved entries (the loss is masked "
                               "either way): 'interp' (linear interpolation in time) or 'zero' "
                               "(the normalised fill, the train mean).")

  def __post_init__(self):
    for name in ("batch_size", "num_steps", "checkpoint_every", "log_every", "steps_per_call"):
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

  def identity(self) -> dict[str, Any]:
    """The fields that change what training produces (not how often it logs or saves)."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUN_ONLY}


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """A trained denoiser and everything needed to sample from it, as its checkpoint records it.

  `apply_fn(params, x[B,T,C], t[B], y[B])` is the eval-mode network as an eps model (a
  v-predicting network is wrapped by `as_eps_model`); `params` are the EMA parameters the
  samplers use; `schedule` is built from the checkpoint's own diffusion settings, never from a
  live config. `trained_steps` counts the optimiser steps the call that returned it ran (0 when
  a finished run was reloaded).
  """

  apply_fn: Callable[..., Array]
  params: Any
  schedule: Any
  unet: UNetConfig
  diffusion: DiffusionConfig
  train: DiffusionTrainConfig
  seq_len: int
  channels: int
  num_classes: int
  step: int
  meta: dict[str, Any]
  checkpoint_dir: str
  raw_params: Any = None  # The non-EMA parameters (training state), when trained in this call.
  trained_steps: int = 0
  train_time_s: float = 0.0

  @property
  def module(self) -> UNet1D:
    return UNet1D(self.unet)


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
                       loss_fn: Callable[..., Array] | None, mesh: Mesh | None = None):
  """One compiled step (steps_per_call = 1: `make_train_step`) or block of steps (> 1:
  `make_train_steps`) per (configs, N, loss_fn, mesh): repeated / resumed runs do not
  recompile."""
  if loss_fn is None:
    loss_fn = _default_loss_fn(diff_cfg.loss, diff_cfg.prediction)
  make = make_train_step if train_cfg.steps_per_call == 1 else make_train_steps
  return make(UNet1D(unet_cfg), make_optimizer(train_cfg), diff_cfg.make_schedule(), train_cfg,
              num_examples, loss_fn, mesh)


def make_train_step(module: UNet1D, tx: optax.GradientTransformation, schedule: Any,
                    train_cfg: DiffusionTrainConfig, num_examples: int,
                    loss_fn: Callable[..., Array],
                    mesh: Mesh | None = None) -> Callable[..., tuple[State, Array]]:
  """Returns the jitted `step(state, x, y, mask) -> (state, loss)` (state donated).

  `loss_fn(apply_fn, params, schedule, x0, y, mask, key) -> scalar` is the denoising loss; the
  `apply_fn` it receives runs the U-Net in training mode (dropout, label dropout).

  With a `mesh` the step is data-parallel: the minibatch is split over the devices (the batch
  size must divide by their count), the state stays replicated (pass it `replicate`d, and x, y,
  mask `shard_rows`-placed or replicated) and XLA reduces the gradients across devices. The
  minibatch is still drawn from the global permutation, so a step equals the single-device step
  up to the order of float sums.
  """
  return jit_replicated(_step_fn(module, tx, schedule, train_cfg, num_examples, loss_fn, mesh),
                        mesh, donate_argnums=(0,))


def make_train_steps(module: UNet1D, tx: optax.GradientTransformation, schedule: Any,
                     train_cfg: DiffusionTrainConfig, num_examples: int,
                     loss_fn: Callable[..., Array],
                     mesh: Mesh | None = None) -> Callable[..., tuple[State, Array]]:
  """Returns the jitted `steps(state, x, y, mask, count) -> (state, losses[K])` (state donated):
  `count` <= K = `train_cfg.steps_per_call` of `make_train_step`'s steps in one call.

  One `lax.scan` over K iterations; those at or past `count` (a traced int) are skipped by a
  `lax.cond` and report loss 0 (so `loss_fn` must return a float32 scalar, as the default does).
  So every call runs the same compiled program, whatever its count: a run cut into calls
  differently (a resume, a log boundary) takes the same steps with the same arithmetic.
  Arguments and mesh as `make_train_step`.
  """
  step_fn = _step_fn(module, tx, schedule, train_cfg, num_examples, loss_fn, mesh)
  k = train_cfg.steps_per_call

  def steps(state: State, x: Array, y: Array, mask: Array, count: Array) -> tuple[State, Array]:
    def body(st: State, i: Array) -> tuple[State, Array]:
      return jax.lax.cond(i < count, lambda s: step_fn(s, x, y, mask),
                          lambda s: (s, jnp.zeros((), jnp.float32)), st)

    return jax.lax.scan(body, state, jnp.arange(k))

  return jit_replicated(steps, mesh, donate_argnums=(0,))


def _step_fn(module: UNet1D, tx: optax.GradientTransformation, schedule: Any,
             train_cfg: DiffusionTrainConfig, num_examples: int, loss_fn: Callable[..., Array],
             mesh: Mesh | None) -> Callable[..., tuple[State, Array]]:
  """The (unjitted) training step of `make_train_step`."""
  batch = train_cfg.batch_size
  check_divisible("train_diffusion.batch_size", batch, mesh)
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
    xb, yb, mb = constrain_rows(mesh, (x[idx], y[idx], mask[idx]))

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

  return step_fn


def denoiser_inputs(x: np.ndarray, mask: np.ndarray, fill: str) -> np.ndarray:
  """The denoiser's training input from zero-filled normalised `x` and its `mask`, per
  `train_diffusion.fill` (see FILLS)."""
  if fill not in FILLS:
    raise ValueError(f"train_diffusion.fill must be one of {FILLS}, got {fill!r}.")
  return interpolate_missing(x, mask) if fill == "interp" else x


def checkpoint_meta(unet: UNetConfig, diffusion: DiffusionConfig, train: DiffusionTrainConfig,
                    seq_len: int, channels: int, num_classes: int, seed: int,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """The JSON meta a denoiser checkpoint carries: every setting that shaped it, plus `extra`
  (e.g. the normaliser and a fingerprint of the training data)."""
  return {"unet": unet.to_dict(), "diffusion": dataclasses.asdict(diffusion),
          "train_diffusion": dataclasses.asdict(train), "seq_len": int(seq_len),
          "channels": int(channels), "num_classes": int(num_classes), "seed": int(seed),
          **(extra or {})}


def checkpoint_mismatch(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
  """Dotted names of the settings in which a denoiser checkpoint's meta differs from `wanted`
  (empty: it can be resumed or reused). Logging and saving intervals and steps per call do not
  count."""
  return meta_mismatch(saved, wanted, ignore=tuple(f"train_diffusion.{k}" for k in RUN_ONLY))


def train_diffusion(x_train: np.ndarray, y_train: np.ndarray, mask: np.ndarray | None,
                    checkpoint_dir: str, *, unet: UNetConfig | None = None,
                    diffusion: DiffusionConfig | None = None,
                    train: DiffusionTrainConfig | None = None, num_classes: int | None = None,
                    seed: int = 0, extra_meta: dict[str, Any] | None = None,
                    loss_fn: Callable[..., Array] | None = None, stop_after: int | None = None,
                    metrics_path: str | None = None, quiet: bool = False,
                    mesh: Mesh | None = None) -> Denoiser:
  """Trains (or resumes) the denoiser on normalised `x_train[N,T,C]`, `y_train[N]`, `mask`.

  Checkpoints go to `checkpoint_dir` every `train.checkpoint_every` steps and at the end, with
  `checkpoint_meta` (plus `extra_meta`); losses go to `metrics_path` (default: metrics.jsonl
  beside the checkpoint directory). An existing checkpoint is resumed (bit-identically)
  when its meta matches, refused with the differing settings named otherwise; one already at
  `num_steps` is returned without training. `stop_after=k` stops (with a checkpoint) after k
  steps in total, to simulate an interruption. Missing values: NaN or mask False. With a
  `mesh` (`tardiff_jax.parallel.run_mesh`) training is data-parallel (see `make_train_step`);
  the training rows are split over the devices, each process placing only its devices' rows.
  """
  unet, diffusion = unet or UNetConfig(), diffusion or DiffusionConfig()
  train = train or DiffusionTrainConfig()
  x, y = check_series(x_train, y_train, what="x_train", allow_nan=True)
  if num_classes is None:
    num_classes = int(y.max()) + 1
  if y.size and y.max() >= num_classes:
    raise ValueError(f"y_train labels must be in [0, {num_classes}), got max {y.max()}.")
  m = ~np.isnan(x) if mask is None else np.asarray(mask, bool)
  if m.shape != x.shape:
    raise ValueError(f"mask must have the shape of x_train {x.shape}, got {m.shape}.")
  x = np.where(m, np.nan_to_num(x), 0.0).astype(np.float32)
  if unet.num_classes != num_classes:
    unet = dataclasses.replace(unet, num_classes=int(num_classes))
  x = denoiser_inputs(x, m, train.fill)
  n, seq_len, channels = x.shape
  tx = make_optimizer(train)
  _, apply_fn = make_denoiser(unet)
  meta = checkpoint_meta(unet, diffusion, train, seq_len, channels, num_classes, seed, extra_meta)
  checkpoint_dir = os.path.abspath(checkpoint_dir)
  metrics_path = metrics_path or os.path.join(os.path.dirname(checkpoint_dir), "metrics.jsonl")
  total = train.num_steps if stop_after is None else min(int(stop_after), train.num_steps)

  t0 = time.perf_counter()
  with CheckpointStore(checkpoint_dir) as store:
    abstract = jax.eval_shape(lambda: init_state(unet, tx, seed, seq_len, channels))
    if store.latest_step() is not None:
      differ = checkpoint_mismatch(store.restore_meta(), meta)
      if differ:
        raise ValueError(f"The checkpoint in {checkpoint_dir} was trained with other settings "
                         f"({', '.join(differ)}); use a fresh directory.")
      state, _ = store.restore(abstract)
      state = jax.tree_util.tree_map(jnp.asarray, state)
    else:
      state = init_state(unet, tx, seed, seq_len, channels)
    start = int(to_host(state["step"]))
    if start < total:
      step_fn = _cached_train_step(unet, train, diffusion, n, loss_fn, mesh)
      state = replicate(mesh, state)
      pad = round_up(n, mesh) - n  # Rows never drawn (the permutation indexes the first n).
      xd, yd, md = (shard_rows(mesh, np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]))
                    if mesh is not None else jnp.asarray(a) for a in (x, y, m))
      progress = Progress("train_diffusion", total, start=start, metrics_path=metrics_path,
                          unit="step", quiet=quiet)
      losses, s = [], start
      while s < total:
        # A call ends at the next log / checkpoint step at the latest.
        n = min(train.steps_per_call, total - s, train.log_every - s % train.log_every,
                train.checkpoint_every - s % train.checkpoint_every)
        if train.steps_per_call == 1:
          state, loss = step_fn(state, xd, yd, md)
        else:
          state, loss = step_fn(state, xd, yd, md, n)
        losses.append((loss, n))
        s += n
        if s % train.log_every == 0 or s == total:
          per_step = [np.atleast_1d(to_host(v))[:k] for v, k in losses]
          progress.report(s, loss=float(np.mean(np.concatenate(per_step))))
          losses = []
        if s % train.checkpoint_every == 0 or s == total:
          store.save(s, state, meta)
  state = to_host(state)
  eps_apply = as_eps_model(apply_fn, diffusion.make_schedule(), diffusion.prediction)
  return Denoiser(apply_fn=eps_apply, params=state["ema_params"],
                  schedule=diffusion.make_schedule(),
                  unet=unet, diffusion=diffusion, train=train, seq_len=seq_len,
                  channels=channels, num_classes=int(num_classes), step=int(state["step"]),
                  meta=meta, checkpoint_dir=checkpoint_dir, raw_params=state["params"],
                  trained_steps=max(0, total - start), train_time_s=time.perf_counter() - t0)


def load_diffusion(checkpoint_dir: str) -> Denoiser:
  """The denoiser of a checkpoint directory, rebuilt from its own meta (EMA parameters; the
  schedule from the checkpoint's diffusion settings)."""
  if not os.path.isdir(checkpoint_dir):
    raise FileNotFoundError(f"No diffusion checkpoint directory {checkpoint_dir}.")
  with CheckpointStore(checkpoint_dir) as store:
    if store.latest_step() is None:
      raise FileNotFoundError(f"No diffusion checkpoint in {checkpoint_dir}.")
    meta = store.restore_meta()
    unet = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in meta["unet"].items()})
    train = DiffusionTrainConfig(**meta["train_diffusion"])
    tx = make_optimizer(train)
    abstract = jax.eval_shape(lambda: init_state(unet, tx, int(meta["seed"]),
                                                 int(meta["seq_len"]), int(meta["channels"])))
    state, meta = store.restore(abstract)
  _, apply_fn = make_denoiser(unet)
  diffusion = DiffusionConfig(**meta["diffusion"])
  schedule = diffusion.make_schedule()
  return Denoiser(apply_fn=as_eps_model(apply_fn, schedule, diffusion.prediction),
                  params=jax.tree_util.tree_map(jnp.asarray, state["ema_params"]),
                  schedule=schedule, unet=unet, diffusion=diffusion, train=train,
                  seq_len=int(meta["seq_len"]), channels=int(meta["channels"]),
                  num_classes=int(meta["num_classes"]), step=int(state["step"]), meta=meta,
                  checkpoint_dir=os.path.abspath(checkpoint_dir))
