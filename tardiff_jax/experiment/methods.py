"""The generation methods a run compares, as one registry.

A method turns the run into a synthetic set of (x, y) in the model's normalised space. Two
kinds exist:

- `DiffusionMethod`: the trained denoiser's one-scan sampler, unguided or with a guidance score
  (`score`: "influence" is TarDiff's score `guidance.variant`; any other name is a score of
  `tardiff_jax.influence.scores.VARIANTS`) at the scale the run resolves for it. All diffusion
  methods share one sampling key (common random numbers): w = 0 reproduces the unguided set
  exactly, and differences between methods come from guidance alone.
- `BaselineMethod`: a function of the real training split, e.g. random oversampling.

Adding a method is one entry, e.g.

  register_method(BaselineMethod(
      "smote", "SMOTE interpolation between same-class neighbours",
      make=lambda train, counts, seed: my_smote(train.x, train.y, counts, seed)))

after which `--config.evaluation.methods` may list "smote".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from tardiff_jax.data.dataset import Dataset
from tardiff_jax.evaluation import baselines

DIFFUSION_KEY = 1  # The shared sampling stream of every diffusion method (common random numbers).


@dataclasses.dataclass(frozen=True)
class DiffusionMethod:
  """Sampling from the trained denoiser; `score` None = unguided. `scale_field` names the
  `GuidanceConfig` field holding its w ("scale" is TarDiff's, which may be chosen on
  evaluation-val)."""
  name: str
  summary: str
  score: str | None = None
  scale_field: str | None = None

  @property
  def guided(self) -> bool:
    return self.score is not None


@dataclasses.dataclass(frozen=True)
class BaselineMethod:
  """`make(train: Dataset, counts: int[K], seed) -> (x, y)` from the real training split."""
  name: str
  summary: str
  make: Callable[[Dataset, np.ndarray, int], tuple[np.ndarray, np.ndarray]]
  guided = False


Method = DiffusionMethod | BaselineMethod
METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
  """Adds `method` to the registry (a name may be registered once)."""
  if method.name in METHODS or method.name == "real":
    raise ValueError(f"A method named {method.name!r} exists already.")
  METHODS[method.name] = method
  return method


def get_method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; known: {', '.join(METHODS)}.")
  return METHODS[name]


def check_methods(names) -> tuple[str, ...]:
  """The names, or a ValueError naming the unknown ones."""
  bad = [n for n in names if n not in METHODS]
  if bad:
    raise ValueError(f"evaluation.methods has unknown methods {bad}; known: "
                     f"{', '.join(METHODS)}.")
  return tuple(names)


register_method(DiffusionMethod(
    "unguided", "class-conditional diffusion without guidance (w = 0)"))
register_method(DiffusionMethod(
    "tardiff", "influence guidance (TarDiff, paper Algorithm 1)", score="influence",
    scale_field="scale"))
register_method(DiffusionMethod(
    "classifier", "classifier guidance, grad_x log p(y | x)", score="classifier",
    scale_field="classifier_scale"))
register_method(DiffusionMethod(
    "batch", "the reference code's batch-level normalised influence score", score="batch",
    scale_field="batch_scale"))
register_method(BaselineMethod(
    "oversample", "random oversampling of real training series",
    make=lambda train, counts, seed: baselines.random_oversample(train.x, train.y, counts, seed)))
register_method(BaselineMethod(
    "augment", "jitter + magnitude and time warping of real training series",
    make=lambda train, counts, seed: baselines.augment(train.x, train.y, counts, seed,
                                                       mask=train.mask)))
