"""The guide-quality gate: a guide that learned nothing is named, marked and (optionally) fatal;
a real guide passes; only guidance-val is read."""

import ast
import dataclasses

import ml_collections
import numpy as np
import pytest

from tardiff_jax.config import experiment_config, load_config
from tardiff_jax.data import prepare_data
from tardiff_jax.evaluation import report_markdown as rmd
from tardiff_jax.experiment import gate, stages
from tardiff_jax.experiment.store import ArtifactStore
from tardiff_jax.experiment.workdir import Workdir

GUIDED = ["tardiff", "classifier", "batch"]


@pytest.fixture(scope="module")
def default_setup():
  """The default config's data and guide (GRU, 1,000 training stays, 1,000 guidance-val), with
  4 permuted-label guides instead of 9 to keep CI short (a permutation test at level 0.2)."""
  cfg = experiment_config(load_config("default"))
  cfg = dataclasses.replace(cfg, guidance=dataclasses.replace(cfg.guidance, gate_permutations=4))
  return cfg, prepare_data(cfg.data)


def _guide(cfg, data, path):
  return stages.train_guide(cfg, data, Workdir(path), ArtifactStore(str(path)), quiet=True)


@pytest.fixture(scope="module")
def guides(default_setup, tmp_path_factory):
  """The default guide, a guide trained the same way on shuffled training labels, and the
  label-free reference (permuted-label guides; one set serves both: the shuffled guide's
  permutations are permutations of the same labels)."""
  cfg, data = default_setup
  real = _guide(cfg, data, tmp_path_factory.mktemp("real"))
  rng = np.random.default_rng(0)
  shuffled = dataclasses.replace(data, train=dataclasses.replace(
      data.train, y=rng.permutation(data.train.y)))
  noise = _guide(cfg, shuffled, tmp_path_factory.mktemp("shuffled"))
  return real, noise, gate.permuted_guides_auroc(cfg, data, real)


def test_the_default_guide_has_a_signal(default_setup, guides, tmp_path):
  cfg, data = default_setup
  q = gate.assess_guide(cfg, data, guides[0], ArtifactStore(str(tmp_path)), permuted=guides[2])
  assert q.signal and q.metrics["auroc"]["lo"] > 0.6, q.metrics
  assert len(q.permuted_auroc) == cfg.guidance.gate_permutations
  assert max(q.permuted_auroc) < q.metrics["auroc"]["value"]
  assert q.n == len(data.guide_val) and q.positives == int((data.guide_val.y == 1).sum())
  gate.check(q, cfg, GUIDED)  # Silent.


def test_a_guide_trained_on_shuffled_labels_trips_the_gate(default_setup, guides, tmp_path,
                                                           capfd):
  cfg, data = default_setup
  q = gate.assess_guide(cfg, data, guides[1], ArtifactStore(str(tmp_path)), permuted=guides[2])
  # A network that never saw a real label can still rank cases by abnormal vitals: it is the
  # permuted-label guides, not 0.5, that it fails to beat.
  assert not q.signal and q.metrics["auroc"]["value"] <= max(q.permuted_auroc), q
  gate.check(q, cfg, GUIDED)
  err = capfd.readouterr().err
  assert "WARNING: The guide classifier shows no guidance signal" in err
  assert "--config.train_classifier.class_weighting=True" in err
  # The report marks the guided methods and does not compare them.
  rep = {"tstr": {m: {"auroc": 0.7, "auprc": 0.3} for m in ("real", "unguided", "tardiff")},
         "guide": {**q.to_dict(), "guided_methods": GUIDED}}
  assert rmd.verdict(rep).startswith("TarDiff vs unguided: not compared: no guidance")
  assert rmd.method_label("tardiff", rep) == "tardiff (no guidance signal)"
  assert rmd.method_label("unguided", rep) == "unguided"
  # With guidance.gate = "error" the run stops, saying what to try.
  strict = dataclasses.replace(cfg, guidance=dataclasses.replace(cfg.guidance, gate="error"))
  with pytest.raises(gate.NoGuidanceSignalError, match="no guidance signal(.|\n)*max_epochs"):
    gate.check(q, strict, GUIDED)
  gate.check(q, strict, [])  # Nothing guided is asked for: nothing to stop.


class _WithoutTest:
  """The prepared data with its test split locked away: any access fails the test."""

  def __init__(self, data):
    self._data = data

  def __getattr__(self, name):
    if name in ("test", "raw"):
      raise AssertionError(f"the gate read data.{name}")
    return getattr(self._data, name)

  def fingerprint(self, *splits):
    assert "test" not in splits
    return self._data.fingerprint(*splits)


def test_the_gate_never_reads_the_test_split(default_setup, guides, tmp_path):
  cfg, data = default_setup
  one = dataclasses.replace(cfg, guidance=dataclasses.replace(cfg.guidance, gate_permutations=1))
  q = gate.assess_guide(one, _WithoutTest(data), guides[0], ArtifactStore(str(tmp_path)))
  assert len(q.permuted_auroc) == 1 and 0.0 <= q.permuted_auroc[0] <= 1.0


def test_suggestions_are_overrides_that_exist(default_setup):
  cfg, _ = default_setup
  for c in (cfg, dataclasses.replace(cfg, classifier=dataclasses.replace(
      cfg.classifier, model="timesnet"))):
    for s in gate.suggestions(c):
      flag = s.split(" ")[0]
      path, value = flag.removeprefix("--config.").split("=")
      cd = ml_collections.ConfigDict(c.to_dict())
      *sections, field = path.split(".")
      node = cd
      for sec in sections:
        node = node[sec]
      assert field in node, s
      node[field] = ast.literal_eval(value) if value not in ("timesnet", "gru") else value
      assert experiment_config(cd) != c, s  # The override changes the config.
