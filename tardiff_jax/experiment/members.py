"""A stack of guides behind TarDiff's influence score, each with its own guidance gradient G:

- an ensemble (`guidance.ensemble = n`): the guide and n - 1 more GRUs/TimesNets trained like
  it (same data, early-stopping split and settings) with seeds seed+1, ..., in one vmapped
  training; the guide itself is member 0 (a member's training does not depend on its group);
- a trajectory (`guidance.trajectory = k`, TracIn: Pruthi et al. 2020; trajectory influence in
  Influence-Guided Diffusion, Chen et al. 2025): each member's parameters at k epochs evenly
  spaced up to its best epoch, G recomputed at each. Adam's learning rate is constant here, so
  TracIn's learning-rate weights are equal: the stack's scores are averaged (weights 1/M), which
  keeps one w comparable with the single guide's.

The guidance hook sums weights[m] * J(params_m, G_m) (`influence.guidance`); the stack is an
artifact of the guide, the guidance split and these settings.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tardiff_jax.config.schema import ExperimentConfig
from tardiff_jax.data.prepare import PreparedData
from tardiff_jax.experiment.stages import GUIDE_STOP_SPLIT, TrainedGuide, cache_key_settings, log
from tardiff_jax.experiment.store import ArtifactStore
from tardiff_jax.influence.cache import build_guidance_cache
from tardiff_jax.training.classifier_trainer import train_classifier_seeds, unstack


@dataclasses.dataclass(frozen=True)
class GuideMembers:
  """M guides stacked on a leading axis (`params`, `G`), their weights float64[M] and what each
  is (`entries`: {"seed", "epoch"}); `identity` is the artifact's digest."""
  params: Any
  G: Any
  weights: np.ndarray
  entries: list[dict[str, int]]
  identity: str


def trajectory_epochs(best_epoch: int, k: int) -> list[int]:
  """k epochs evenly spaced over 1..best_epoch, the last one the best: ceil(best * j / k) for
  j = 1..k (fewer, without repeats, when best_epoch < k)."""
  if best_epoch < 1 or k < 1:
    raise ValueError(f"need best_epoch >= 1 and k >= 1, got {best_epoch} and {k}.")
  return sorted({math.ceil(best_epoch * j / k) for j in range(1, k + 1)})


def _stack(trees: list[Any]) -> Any:
  return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)


def guide_members(cfg: ExperimentConfig, data: PreparedData, guide: TrainedGuide,
                  store: ArtifactStore, quiet: bool = False, mesh=None) -> GuideMembers:
  """The stack of `guidance.ensemble` guides x `guidance.trajectory` checkpoints with their G
  over guidance-val (trained and built once, then read from the store)."""
  g = cfg.guidance
  settings = {"guide": guide.identity, "ensemble": g.ensemble, "trajectory": g.trajectory,
              "cache": cache_key_settings(cfg, data, guide)}
  key = store.key("guide_members", "guide_members", settings, ext="npz")
  treedef = jax.tree_util.tree_structure(guide.params)
  arrays = store.read_arrays(key)
  if arrays is None:
    store.check_writable(key)
    t0 = time.perf_counter()
    seeds = [cfg.seed + i for i in range(g.ensemble)]
    snapshots: dict[int, Any] = {}
    stop = getattr(data, GUIDE_STOP_SPLIT)
    params, hists = train_classifier_seeds(
        guide.classifier, data.train.x, data.train.y, stop.x, stop.y, cfg.train_classifier,
        seeds, target=data.target_class, name="guide_members", quiet=quiet, mesh=mesh,
        epoch_callback=(lambda e, p: snapshots.__setitem__(e, p)) if g.trajectory else None)
    entries, stack = [], []
    for i, h in enumerate(hists):
      epochs = trajectory_epochs(h["best_epoch"], g.trajectory) if g.trajectory else [None]
      for e in epochs:
        stack.append(unstack(params if e is None else snapshots[e], i))
        entries.append({"seed": seeds[i], "epoch": int(h["best_epoch"] if e is None else e)})
    gv = data.guide_val
    Gs = [build_guidance_cache(guide.classifier.loss_fn, p, gv.x, gv.y,
                               batch_size=g.cache_batch_size, class_filter=g.fixed_filter,
                               normalize=g.normalize_cache, mesh=mesh).G for p in stack]
    leaves = lambda trees: jax.tree_util.tree_leaves(_stack(trees))  # noqa: E731
    arrays = {**{f"params_{i:04d}": np.asarray(a) for i, a in enumerate(leaves(stack))},
              **{f"G_{i:04d}": np.asarray(a) for i, a in enumerate(leaves(Gs))},
              "weights": np.full(len(stack), 1.0 / len(stack)),
              "seeds": np.asarray([m["seed"] for m in entries], np.int64),
              "epochs": np.asarray([m["epoch"] for m in entries], np.int64)}
    store.write_arrays(key, arrays, seconds=time.perf_counter() - t0)
    if not quiet:
      log(f"guide_members: {len(stack)} guides (seed, epoch) "
          f"{[(m['seed'], m['epoch']) for m in entries]} with their G in "
          f"{time.perf_counter() - t0:.1f}s")
  n = treedef.num_leaves
  unflat = lambda name: jax.tree_util.tree_unflatten(  # noqa: E731
      treedef, [jnp.asarray(arrays[f"{name}_{i:04d}"]) for i in range(n)])
  entries = [{"seed": int(s), "epoch": int(e)} for s, e in zip(arrays["seeds"], arrays["epochs"])]
  return GuideMembers(unflat("params"), unflat("G"), np.asarray(arrays["weights"], np.float64),
                      entries, key.digest)
