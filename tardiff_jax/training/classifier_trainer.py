"""Training of the downstream classifiers (TimesNet / GRU): Adam, early stopping on VALIDATION.

One engine trains S seeds of one setting together: the per-seed state (params, Adam state, rng,
step) is stacked along a leading axis and a single jitted, `jax.vmap`ped epoch function (a
`lax.scan` over the epoch's minibatches) advances all seeds at once. Each seed has its own init
key, dropout keys and minibatch order, so seed s trained inside a group of S equals seed s
trained alone (up to float re-association). Early stopping is per seed: a seed whose validation
AUPRC has not improved for `patience` epochs is frozen by a mask (its state no longer changes)
and its best parameters are kept.

Honesty: the functions here take training and validation arrays only; test data never enters
(the threshold and the stopping epoch are chosen on validation).

Members may train on different row subsets of one pool (`subsets`, e.g. every TSTR / TSRTR set
of a method) or labels (`labels`); an epoch is `epoch_size` minibatch positions for every member
(default: the largest subset), smaller subsets cycling through fresh permutations of their rows.
Static shapes: minibatches have a fixed size `min(batch_size, epoch_size)`; the last minibatch
of an epoch is padded with zero-weight examples, so one compile serves every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn import metrics as skm

from tardiff_jax.config.fields import option
from tardiff_jax.data.dataset import check_series
from tardiff_jax.data.prepare import target_class
from tardiff_jax.models.classifier import class_probability, per_example_losses
from tardiff_jax.parallel.sharding import mesh_size, replicate, shard_rows, to_host
from tardiff_jax.training.checkpoints import CheckpointStore, meta_mismatch
from tardiff_jax.training.minibatches import check_subsets, epoch_indices, example_weights
from tardiff_jax.training.progress import Progress

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True)
class TrainClassifierConfig:
  """Optimisation of every classifier (the guide and the protocols' fresh models)."""

  batch_size: int = option(128, "Examples per step (clamped to the training-set size).")
  max_epochs: int = option(12, "Upper bound on epochs (a budget; TimesNet often uses all).")
  patience: int = option(3, "Epochs without a validation-AUPRC improvement before a member "
                            "stops (never test).")
  learning_rate: float = option(1e-3, "Adam learning rate.")
  class_weighting: bool = option(False, "Weight the loss by inverse class frequency.")
  eval_batch_size: int = option(1024, "Validation examples per jitted prediction call.")

  def __post_init__(self):
    if int(self.batch_size) < 1:
      raise ValueError(f"train_classifier.batch_size must be >= 1, got {self.batch_size}.")
    if int(self.max_epochs) < 1:
      raise ValueError(f"train_classifier.max_epochs must be >= 1, got {self.max_epochs}.")
    if int(self.patience) < 1:
      raise ValueError(f"train_classifier.patience must be >= 1, got {self.patience}.")
    if not (float(self.learning_rate) > 0 and math.isfinite(float(self.learning_rate))):
      raise ValueError(
          f"train_classifier.learning_rate must be finite and > 0, got {self.learning_rate}.")
    if int(self.eval_batch_size) < 1:
      raise ValueError(
          f"train_classifier.eval_batch_size must be >= 1, got {self.eval_batch_size}.")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- the engine


def train_classifier_seeds(classifier, x_train, y_train, x_val, y_val,
                           config: TrainClassifierConfig, seeds: Sequence[int], *,
                           subsets: Sequence[np.ndarray] | None = None,
                           epoch_size: int | None = None, target: int | None = None,
                           labels: Sequence[np.ndarray] | None = None,
                           name: str = "train_classifier", metrics_path: str | None = None,
                           quiet: bool = False, mesh=None,
                           epoch_callback: Callable[[int, PyTree], None] | None = None
                           ) -> tuple[PyTree, list[dict[str, Any]]]:
  """Trains one classifier per member (seed), all members in one vmapped computation.

  Members may train on different data: with `subsets`, member i learns from the rows
  `subsets[i]` of (x_train, y_train) only (e.g. the TSTR set and every TSRTR mix of a method,
  three seeds each, stacked in one pool). All members share the validation split.

  Epochs: every member runs `ceil(epoch_size / B)` minibatch steps per epoch, where
  `epoch_size` defaults to the largest member's row count. A member with fewer rows draws its
  minibatches from successive seeded permutations of its rows (so it may see its rows more than
  once per epoch); a member with `epoch_size` rows sees each row exactly once. Nothing is padded
  away except the last minibatch's tail, so a group wastes no compute on its smaller members.

  Args:
    classifier: an object with `init(key, T, C)` and `logits_fn(params, x[B,T,C], train, rngs)
      -> [B, K]` (K = 1: one logit, binary).
    x_train: float32[N, T, C] (finite: missing values already filled), y_train: int[N].
    x_val: float32[M, T, C], y_val: int[M] with the target class and another (the target's
      one-vs-rest validation AUPRC drives stopping).
    config: training hyper-parameters.
    seeds: S integer seeds (init, dropout and minibatch order all derive from the seed);
      distinct unless `subsets` tell the members apart.
    subsets: optional S int arrays of row indices into x_train (distinct rows, non-empty);
      None = every member trains on all N rows.
    epoch_size: minibatch positions per epoch (>= 1); None = the largest member's row count.
    target: the class whose one-vs-rest validation AUPRC stops training; None = class 1 of a
      binary task, the rarest training class otherwise (`tardiff_jax.data.target_class`).
    labels: optional S int arrays [N]: member i learns the labels `labels[i]` of the pool's rows
      instead of y_train (e.g. permuted labels, without copying x).
    name, metrics_path, quiet: progress output (one line per epoch; metrics.jsonl lines).
    mesh: optional `jax.sharding.Mesh` (`tardiff_jax.parallel.run_mesh`): the members are split
      over its devices (padded with copies of the last member to a multiple of the device
      count; the copies are dropped). Each member's result does not depend on it.
    epoch_callback: called as `epoch_callback(epoch, params)` after every epoch with the
      members' current parameters (stacked, copies of the padding members dropped), e.g. to
      keep a training trajectory (TracIn).
  Returns:
    (params, histories): the best-validation-AUPRC params of every member stacked on a leading
    axis of size S, and one history dict per member.
  """
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise ValueError("train_classifier: need at least one seed.")
  if subsets is None and labels is None and len(set(seeds)) != len(seeds):
    raise ValueError(f"train_classifier: seeds must be distinct; got {seeds}.")
  if any(s < 0 for s in seeds):
    raise ValueError(f"train_classifier: seeds must be >= 0; got {seeds}.")
  x_train, y_train = check_series(x_train, y_train, what="train_classifier: training x")
  subsets = check_subsets(subsets, len(seeds), x_train.shape[0])
  x_val, y_val = check_series(x_val, y_val, what="train_classifier: validation x")
  if x_val.shape[1:] != x_train.shape[1:]:
    raise ValueError(f"train_classifier: validation [T, C] {x_val.shape[1:]} differs from "
                     f"training {x_train.shape[1:]}.")
  k = max(int(y_train.max()), int(y_val.max()), 1) + 1
  if target is None:
    target = target_class(np.bincount(y_train, minlength=k))
  y_val_target = y_val == int(target)
  if not 0 < int(y_val_target.sum()) < y_val.size:
    raise ValueError(f"train_classifier: the validation split needs the target class {target} "
                     "and another; validation AUPRC (the early-stopping criterion) is "
                     "undefined.")
  n, t, c = x_train.shape
  s_count = len(seeds)
  sizes = [n if sub is None else int(sub.size) for sub in subsets]
  n_epoch = max(sizes) if epoch_size is None else int(epoch_size)
  if n_epoch < 1:
    raise ValueError(f"train_classifier: epoch_size must be >= 1, got {epoch_size}.")
  batch = min(int(config.batch_size), n_epoch)
  steps = -(-n_epoch // batch)
  # Per member: its rows in the pool and their loss weights (class weights from its own rows).
  rows = [np.arange(n, dtype=np.int64) if sub is None else sub for sub in subsets]
  if labels is not None:
    labels = [check_series(x_train, lab, what="train_classifier: member labels")[1]
              for lab in labels]
    if len(labels) != s_count:
      raise ValueError(f"train_classifier: got {len(labels)} label arrays for {s_count} seeds.")
  member_y = [y_train if labels is None else labels[i] for i in range(s_count)]
  member_w = [example_weights(member_y[i][r], config.class_weighting)
              for i, r in enumerate(rows)]

  members = s_count
  extra = (-s_count) % mesh_size(mesh)  # Copies of the last member: the group splits evenly.
  seeds, rows, sizes, member_y, member_w = (v + v[-1:] * extra for v in
                                            (seeds, rows, sizes, member_y, member_w))
  s_count += extra
  fns = _make_fns(classifier, config.learning_rate, t, c, int(target))
  state = fns["init"](shard_rows(mesh, np.stack([jax.random.PRNGKey(s) for s in seeds])))
  best_params = jax.tree_util.tree_map(jnp.copy, state["params"])  # The chunk fn donates state.
  # An epoch runs as ceil(steps / CHUNK) calls of one compiled chunk of CHUNK minibatches that
  # are gathered here on the host, so the compiled shapes never depend on N: every training of
  # a setting (TSTR, each TSRTR ratio, each method) reuses one executable. Padding steps carry
  # no valid example and leave the state untouched.
  num_chunks = -(-steps // CHUNK)

  eval_b = min(int(config.eval_batch_size), x_val.shape[0])
  x_val_chunks, n_val = _chunks(x_val, eval_b)
  x_val_chunks = replicate(mesh, x_val_chunks)

  hist = [{"seed": s, "train_loss": [], "val_auprc": [], "val_auroc": [], "best_epoch": 0,
           "best_val_auprc": -math.inf, "stopped_epoch": None} for s in seeds]
  best = np.full(s_count, -np.inf)
  wait = np.zeros(s_count, np.int64)
  active = np.ones(s_count, bool)
  progress = Progress(name, total=config.max_epochs, metrics_path=metrics_path, unit="epoch",
                      quiet=quiet)
  t0 = time.perf_counter()
  epochs_run = 0
  for epoch in range(1, config.max_epochs + 1):
    local = [epoch_indices(s, epoch, sizes[i], batch, num_chunks * CHUNK, n_epoch)
             for i, s in enumerate(seeds)]
    idx = np.stack([rows[i][loc] for i, loc in enumerate(local)])  # [S, steps, B] pool rows
    weights = np.stack([member_w[i][loc] for i, loc in enumerate(local)])
    valid = (np.arange(num_chunks * CHUNK * batch) < n_epoch).reshape(-1, batch).astype(
        np.float32)
    losses = []
    active_dev = shard_rows(mesh, active)
    for k in range(num_chunks):
      sl = slice(k * CHUNK, (k + 1) * CHUNK)
      ib = idx[:, sl]  # [S, CHUNK, B]
      yb = y_train[ib] if labels is None else np.stack([member_y[i][ib[i]]
                                                        for i in range(s_count)])
      state, loss_k = fns["epoch"](state, active_dev, *(shard_rows(mesh, a) for a in (
          x_train[ib], yb, weights[:, sl] * valid[sl][None])))
      losses.append(to_host(loss_k)[:, : max(0, min(CHUNK, steps - k * CHUNK))])
    losses = np.concatenate(losses, axis=1)
    probs = np.concatenate(
        [to_host(fns["proba"](state["params"], xc)) for xc in x_val_chunks], axis=1)[:, :n_val]
    losses = np.asarray(losses).mean(axis=1)
    improved = np.zeros(s_count, bool)
    for i in range(s_count):
      if not active[i]:
        continue
      auprc = float(skm.average_precision_score(y_val_target, probs[i]))
      auroc = float(skm.roc_auc_score(y_val_target, probs[i]))
      h = hist[i]
      h["train_loss"].append(float(losses[i]))
      h["val_auprc"].append(auprc)
      h["val_auroc"].append(auroc)
      if auprc > best[i]:
        best[i], wait[i], improved[i] = auprc, 0, True
        h["best_epoch"], h["best_val_auprc"] = epoch, auprc
      else:
        wait[i] += 1
    best_params = fns["keep"](shard_rows(mesh, improved), state["params"], best_params)
    if epoch_callback is not None:
      epoch_callback(epoch, jax.tree_util.tree_map(lambda a: jnp.asarray(a[:members]),
                                                   to_host(state["params"])))
    epochs_run = epoch
    stop = active & (wait >= config.patience)
    for i in np.flatnonzero(stop):
      hist[i]["stopped_epoch"] = epoch
    active = active & ~stop
    act_losses = [hist[i]["train_loss"][-1] for i in range(s_count) if hist[i]["stopped_epoch"]
                  in (None, epoch)]
    progress.report(epoch, loss=float(np.mean(act_losses)), val_auprc=float(np.mean(best)),
                    active_seeds=int(active.sum()))
    if not active.any():
      break
  jax.block_until_ready(best_params)
  if s_count > members or mesh is not None:
    best_params = jax.tree_util.tree_map(lambda a: jnp.asarray(a[:members]), to_host(best_params))
    hist = hist[:members]
  elapsed = time.perf_counter() - t0
  for h, size in zip(hist, sizes):
    h.update(epochs_run=len(h["val_auprc"]), batch_size=batch, steps_per_epoch=steps,
             time_s=elapsed, group_epochs=epochs_run, n_train=size, epoch_size=n_epoch,
             group_size=members)
  return best_params, hist


CHUNK = 8  # Minibatches per compiled call (fixed, so compiled shapes never depend on N).
_FN_CACHE: dict[Any, dict[str, Any]] = {}


def _memo(cache: dict[Any, Any], limit: int, classifier, extra: tuple, build: Callable[[], Any]):
  """`build()`, cached per (classifier config, its module's maths path: TimesNet's `impl`,
  *extra) with at most `limit` entries (oldest dropped); objects without a config: not cached."""
  cfg = getattr(classifier, "config", None)
  if cfg is None:
    return build()
  key = (cfg, getattr(getattr(classifier, "module", None), "impl", None), *extra)
  if key not in cache:
    if len(cache) >= limit:
      cache.pop(next(iter(cache)))
    cache[key] = build()
  return cache[key]


def _make_fns(classifier, learning_rate: float, t: int, c: int, target: int) -> dict[str, Any]:
  """The jitted, seed-vmapped pieces: init, one epoch (scan over minibatches), predict, keep.

  Cached per (classifier config and maths path, learning rate, T, C, target) so repeated
  trainings of one setting (seeds, TSRTR ratios) reuse the compiled functions.
  """
  return _memo(_FN_CACHE, 8, classifier, (float(learning_rate), int(t), int(c), int(target)),
               lambda: _build_fns(classifier, learning_rate, t, c, target))


def _build_fns(classifier, learning_rate: float, t: int, c: int, target: int) -> dict[str, Any]:
  tx = optax.adam(learning_rate)

  def init_one(key):
    init_key, rng = jax.random.split(key)
    params = classifier.init(init_key, t, c)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "rng": rng}

  def loss(params, xb, yb, wb, key):
    logits = classifier.logits_fn(params, xb, train=True, rngs={"dropout": key})
    per = per_example_losses(logits, yb)
    return jnp.sum(wb * per) / jnp.maximum(jnp.sum(wb), 1e-12)

  def step_one(state, active, xb, yb, wb):
    key = jax.random.fold_in(state["rng"], state["step"])
    value, grads = jax.value_and_grad(loss)(state["params"], xb, yb, wb, key)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes float ** int.
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
           "opt_state": opt_state, "rng": state["rng"]}
    live = active & (jnp.sum(wb) > 0)  # Stopped seeds and padding steps change nothing.
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(live, a, b), new, state)
    return new, value

  def epoch_one(state, active, xs, ys, ws):
    """CHUNK minibatches: xs [CHUNK, B, T, C], ys / ws [CHUNK, B]."""
    def body(st, inp):
      return step_one(st, active, *inp)
    return jax.lax.scan(body, state, (xs, ys, ws))

  def keep(mask, new, old):
    return jax.tree_util.tree_map(
        lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)

  return {
      "init": jax.jit(jax.vmap(init_one)),
      "epoch": jax.jit(jax.vmap(epoch_one), donate_argnums=(0,)),
      "proba": _proba_fn(classifier, True, target),
      "keep": jax.jit(keep),
  }


def _chunks(x: np.ndarray, size: int) -> tuple[list[Array], int]:
  """Splits [M, ...] into equal chunks of `size` rows (last one zero-padded): static shapes."""
  m = x.shape[0]
  pad = (-m) % size
  if pad:
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
  return [jnp.asarray(x[i:i + size]) for i in range(0, x.shape[0], size)], m


_PROBA_CACHE: dict[Any, Any] = {}


def _proba_fn(classifier, seeds_axis: bool, target: int = 1):
  """jit(P(y=target|x)) for one params pytree, or vmapped over seed-stacked params; cached."""
  one = lambda p, xb: class_probability(classifier.logits_fn(p, xb, train=False), target)
  return _memo(_PROBA_CACHE, 16, classifier, (seeds_axis, int(target)),
               lambda: jax.jit(jax.vmap(one, in_axes=(0, None)) if seeds_axis else one))


def predict_proba(classifier, params: PyTree, x, batch_size: int = 1024,
                  stacked: bool = False, target: int = 1) -> np.ndarray:
  """P(y = target | x) for float32[N, T, C] in fixed-size jitted chunks -> float64[N] (numpy).

  With `stacked=True`, `params` carry a leading seed axis and the result is float64[S, N].
  """
  x = np.asarray(x, np.float32)
  size = max(1, min(int(batch_size), x.shape[0]))
  chunks, n = _chunks(x, size)
  fn = _proba_fn(classifier, stacked, target)
  out = np.concatenate([np.asarray(fn(params, xc)) for xc in chunks], axis=-1)
  return out[..., :n].astype(np.float64)


def unstack(tree: PyTree, i: int) -> PyTree:
  """Seed `i` of a seed-stacked pytree."""
  return jax.tree_util.tree_map(lambda a: a[i], tree)


# ---------------------------------------------------------------------------- single model


def train_classifier(classifier, x_train, y_train, x_val, y_val, config: TrainClassifierConfig,
                     seed: int, checkpoint_dir: str | None = None,
                     metrics_path: str | None = None, target: int | None = None,
                     extra_meta: dict[str, Any] | None = None,
                     quiet: bool = False) -> tuple[PyTree, dict[str, Any]]:
  """Trains one classifier (e.g. the guidance model), early-stopping on validation.

  With `checkpoint_dir`, the best parameters are saved there with meta {"final": True,
  "classifier_config", "train_config", "seed", "history", **extra_meta}; a later call finding
  that final checkpoint restores it and skips training, or refuses it (naming the differing
  settings) when it was trained otherwise. Progress lines go to stderr and `metrics_path`.

  Args/returns: as `train_classifier_seeds` with a single `seed`; returns (params, history).
  """
  meta = classifier_meta(classifier, config, seed, extra_meta)
  x_train = np.asarray(x_train)
  if checkpoint_dir is not None:
    with CheckpointStore(checkpoint_dir) as store:
      if store.latest_step() is not None:
        saved = store.restore_meta()
        if saved.get("final"):
          differ = meta_mismatch(saved, meta)
          if differ:
            raise ValueError(f"train_classifier: the checkpoint in {checkpoint_dir} was trained "
                             f"with other settings ({', '.join(differ)}); use a fresh "
                             "directory.")
          t, c = x_train.shape[1:]
          abstract = jax.eval_shape(lambda: classifier.init(jax.random.PRNGKey(0), t, c))
          state, saved = store.restore({"params": abstract})
          history = dict(saved.get("history", {}))
          history["restored"] = True
          return state["params"], history
  params, hists = train_classifier_seeds(
      classifier, x_train, y_train, x_val, y_val, config, [seed], metrics_path=metrics_path,
      target=target, quiet=quiet)
  params = unstack(params, 0)
  history = hists[0]
  if checkpoint_dir is not None:
    with CheckpointStore(checkpoint_dir) as store:
      store.save(history["epochs_run"], {"params": params}, meta={**meta, "history": history})
  return params, history


def classifier_meta(classifier, config: TrainClassifierConfig, seed: int,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """The JSON meta of a final classifier checkpoint (without its history)."""
  cfg = getattr(classifier, "config", None)
  cls_cfg = None if cfg is None else json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists
  return {"final": True, "classifier_config": cls_cfg, "train_config": config.to_dict(),
          "seed": int(seed), **(extra or {})}
