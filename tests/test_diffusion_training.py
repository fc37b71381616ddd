"""Tests of the diffusion training loop: loss falls, checkpoints round-trip, exact resume."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tardiff_jax import io as tio
from tardiff_jax.data import simulate_icu
from tardiff_jax.diffusion import DiffusionConfig
from tardiff_jax.models import UNetConfig
from tardiff_jax.training.checkpoints import CHECKSUMS, CorruptCheckpointError
from tardiff_jax.training.diffusion_trainer import (
  DiffusionTrainConfig,
  load_diffusion,
  train_diffusion,
)

UNET = UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(2,), num_heads=2, dropout=0.1, num_classes=2,
                  label_dropout=0.2)
TRAIN = DiffusionTrainConfig(batch_size=32, num_steps=40, learning_rate=3e-3, warmup_steps=5,
                             lr_schedule="constant", grad_clip=1.0, ema_decay=0.99,
                             checkpoint_every=15, log_every=10)
DIFF = DiffusionConfig(num_timesteps=50, loss="l1", prediction="eps")
CONFIG = dict(unet=UNET, train=TRAIN, diffusion=DIFF)
NORM = {"normalizer": {"kind": "zscore", "mean": [1.0, 2.0], "std": [3.0, 4.0]}}


def _data():
  sim = simulate_icu(160, seed=1)
  x, mask, y = sim.dataset.x, sim.dataset.mask, sim.dataset.y
  mean = np.nanmean(np.where(mask, x, np.nan), axis=(0, 1))
  std = np.nanstd(np.where(mask, x, np.nan), axis=(0, 1))
  x = np.where(mask, (np.nan_to_num(x) - mean) / std, 0.0).astype(np.float32)
  return x, y, mask


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  x, y, mask = _data()
  full_dir = str(tmp_path_factory.mktemp("full"))
  part_dir = str(tmp_path_factory.mktemp("part"))
  kw = dict(CONFIG, extra_meta=NORM, seed=3, quiet=True)
  full = train_diffusion(x, y, mask, os.path.join(full_dir, "ckpt"), **kw)
  stopped = train_diffusion(x, y, mask, os.path.join(part_dir, "ckpt"), stop_after=20, **kw)
  resumed = train_diffusion(x, y, mask, os.path.join(part_dir, "ckpt"), **kw)
  return dict(x=x, y=y, mask=mask, full=full, stopped=stopped, resumed=resumed,
              full_dir=full_dir, part_dir=part_dir)


def test_loss_falls_and_metrics_written(runs):
  records = [r for r in tio.read_jsonl(os.path.join(runs["full_dir"], "metrics.jsonl"))
             if r["stage"] == "train_diffusion"]
  assert [r["step"] for r in records] == [10, 20, 30, 40]
  losses = [r["loss"] for r in records]
  assert all(np.isfinite(losses))
  # Zero-initialised output: eps_hat = 0 at first, L1 ~ E|N(0,1)| = 0.80; it must drop.
  assert losses[-1] < 0.95 * losses[0], losses
  assert losses == sorted(losses, reverse=True), losses
  assert runs["full"].step == 40


def test_resume_is_bit_identical(runs):
  assert runs["stopped"].step == 20 and runs["stopped"].trained_steps == 20
  full, resumed = runs["full"], runs["resumed"]
  assert resumed.step == 40 and resumed.trained_steps == 20 and full.trained_steps == 40
  for a, b in ((full.raw_params, resumed.raw_params), (full.params, resumed.params)):
    for la, lb in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
  # And training actually moved the parameters away from the interrupted point.
  moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
      jax.tree_util.tree_leaves(runs["stopped"].raw_params),
      jax.tree_util.tree_leaves(full.raw_params))]
  assert max(moved) > 0


def test_checkpoint_round_trip_and_load(runs):
  d = load_diffusion(os.path.join(runs["full_dir"], "ckpt"))
  apply_fn, ema, meta = d.apply_fn, d.params, d.meta
  for la, lb in zip(jax.tree_util.tree_leaves(runs["full"].params),
                    jax.tree_util.tree_leaves(ema)):
    np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
  assert meta["normalizer"] == NORM["normalizer"]
  assert d.diffusion == DIFF and d.unet == UNET and d.schedule.num_timesteps == 50
  assert meta["unet"]["channel_mult"] == [1, 2] and meta["num_classes"] == 2
  assert meta["seq_len"] == 24 and meta["channels"] == 7
  out = jax.jit(apply_fn)(ema, jnp.asarray(runs["x"][:4]), jnp.array([0, 5, 10, 49], jnp.int32),
                          jnp.asarray(runs["y"][:4]))
  assert out.shape == (4, 24, 7) and bool(jnp.all(jnp.isfinite(out)))


def test_finished_run_returns_immediately(runs):
  again = train_diffusion(runs["x"], runs["y"], runs["mask"],
                          os.path.join(runs["full_dir"], "ckpt"), extra_meta=NORM, seed=3,
                          quiet=True, **CONFIG)
  assert again.step == 40 and again.trained_steps == 0
  n_lines = len(tio.read_jsonl(os.path.join(runs["full_dir"], "metrics.jsonl")))
  assert n_lines == 4  # Nothing was trained or logged again.
  for la, lb in zip(jax.tree_util.tree_leaves(runs["full"].params),
                    jax.tree_util.tree_leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))


def test_mismatched_checkpoint_is_refused(runs):
  other = dict(CONFIG, unet=UNetConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                                       attention_resolutions=(2,), num_heads=2))
  ckpt = os.path.join(runs["full_dir"], "ckpt")
  with pytest.raises(ValueError, match="unet.base_channels"):
    train_diffusion(runs["x"], runs["y"], runs["mask"], ckpt, seed=3, quiet=True, **other)
  with pytest.raises(ValueError, match="train_diffusion.learning_rate"):
    train_diffusion(runs["x"], runs["y"], runs["mask"], ckpt, seed=3, quiet=True,
                    **dict(CONFIG, train=dataclasses.replace(TRAIN, learning_rate=1e-2)))
  # Logging and saving intervals are not settings of the model: the finished run is reused.
  again = train_diffusion(runs["x"], runs["y"], runs["mask"], ckpt, seed=3, quiet=True,
                          extra_meta=NORM, **dict(CONFIG, train=dataclasses.replace(
                              TRAIN, log_every=7, checkpoint_every=3)))
  assert again.trained_steps == 0 and again.step == 40


def test_damaged_checkpoint_falls_back_to_the_previous_step(runs, tmp_path):
  """The newest step's files fail their checksums: the store warns and restores the step
  before (orbax keeps two), and training resumes from there to the same parameters."""
  src = os.path.join(runs["full_dir"], "ckpt")
  ckpt = str(tmp_path / "ckpt")
  shutil.copytree(src, ckpt)
  steps = sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())
  assert steps == [30, 40]
  victim = max((os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(ckpt, "40"))
                for f in fs), key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.truncate(os.path.getsize(victim) // 2)
  redone = train_diffusion(runs["x"], runs["y"], runs["mask"], ckpt, extra_meta=NORM, seed=3,
                           quiet=True, **CONFIG)
  assert redone.trained_steps == 10 and redone.step == 40
  for la, lb in zip(jax.tree_util.tree_leaves(runs["full"].params),
                    jax.tree_util.tree_leaves(redone.params)):
    np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
  # With every step damaged there is nothing to fall back to: an error names the directory.
  for dp, _, fs in os.walk(ckpt):
    for f in fs:
      if f != CHECKSUMS and os.path.basename(dp) != ckpt:
        with open(os.path.join(dp, f), "ab") as fh:
          fh.write(b"x")
  with pytest.raises(CorruptCheckpointError, match=re.escape(ckpt)):
    load_diffusion(ckpt)


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def test_steps_per_call_takes_the_same_steps(runs, tmp_path):
  """steps_per_call=4 (one lax.scan per call): the same 40 steps as one step per call, logged
  and saved on the same steps; a run interrupted off a call boundary (step 18) and resumed
  reaches the uninterrupted run's parameters bit for bit; a one-step-per-call checkpoint is
  resumed with it (steps per call are not a setting of the model)."""
  multi = dict(CONFIG, train=dataclasses.replace(TRAIN, steps_per_call=4))
  x, y, mask = runs["x"], runs["y"], runs["mask"]
  kw = dict(multi, extra_meta=NORM, seed=3, quiet=True)
  full = train_diffusion(x, y, mask, str(tmp_path / "full" / "ckpt"), **kw)
  records = [r for r in tio.read_jsonl(str(tmp_path / "full" / "metrics.jsonl"))
             if r["stage"] == "train_diffusion"]
  assert [r["step"] for r in records] == [10, 20, 30, 40]
  want = [r for r in tio.read_jsonl(os.path.join(runs["full_dir"], "metrics.jsonl"))
          if r["stage"] == "train_diffusion"]
  np.testing.assert_allclose([r["loss"] for r in records], [r["loss"] for r in want], rtol=1e-3)
  assert sorted(int(d) for d in os.listdir(tmp_path / "full" / "ckpt") if d.isdigit()) == [30, 40]
  assert full.step == 40 and full.trained_steps == 40
  for a, b in zip(_leaves(full.raw_params), _leaves(runs["full"].raw_params)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)

  part = str(tmp_path / "part" / "ckpt")
  assert train_diffusion(x, y, mask, part, stop_after=18, **kw).step == 18
  resumed = train_diffusion(x, y, mask, part, **kw)
  assert resumed.trained_steps == 22
  for a, b in zip(_leaves(full.raw_params) + _leaves(full.params),
                  _leaves(resumed.raw_params) + _leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)

  mixed = str(tmp_path / "mixed" / "ckpt")
  train_diffusion(x, y, mask, mixed, stop_after=20, **dict(kw, train=TRAIN))
  assert train_diffusion(x, y, mask, mixed, **kw).trained_steps == 20


def test_bad_train_config():
  with pytest.raises(ValueError, match="batch_size"):
    DiffusionTrainConfig(batch_size=0)
  with pytest.raises(ValueError, match="lr_schedule"):
    DiffusionTrainConfig(lr_schedule="linear")
  with pytest.raises(ValueError, match="fill"):
    DiffusionTrainConfig(fill="mean")
  with pytest.raises(ValueError, match="steps_per_call"):
    DiffusionTrainConfig(steps_per_call=0)
