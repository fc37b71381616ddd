"""The downstream classifier behind one interface: config, init, logits, losses, probabilities.

`make_classifier(ClassifierConfig)` returns a `Classifier` of pure functions over an explicit
params pytree. `loss_fn(params, x[T, C], y[])` is the per-example loss in eval mode (no dropout);
influence guidance differentiates it (`jax.jvp` w.r.t. params, `jax.grad` w.r.t. x). Binary tasks
have one logit (BCE with logits); K > 2 classes have K logits (softmax cross-entropy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from tardiff_jax.config.fields import option
from tardiff_jax.models.gru import GRUClassifier
from tardiff_jax.models.timesnet import TimesNet, validate_periods

MODELS = ("timesnet", "gru")


@dataclasses.dataclass(frozen=True)
class TimesNetConfig:
  """TimesNet widths. The default is CPU-sized: the Time-Series-Library sizes (d_model 32, d_ff
  64, e_layers 2, num_kernels 6; `configs/default.py:paper`) train at ~590 examples/s on 2
  cores, these at ~7,800 with the same test AUROC/AUPRC at 1,000 training stays
  (benchmarks/results/learning_curve_timesnet.md)."""
  d_model: int = option(16, "Hidden width (even: sinusoidal positions).")
  d_ff: int = option(16, "Inception hidden width.")
  e_layers: int = option(1, "TimesBlocks.")
  top_k: int = option(3, "Periods, fixed at setup from the training split's spectrum.")
  num_kernels: int = option(3, "Inception kernels 1, 3, 5, ...")
  dropout: float = option(0.1, "Dropout.")
  periods: tuple[int, ...] = option((), "Fixed periods; () = timesnet_periods(x_train, top_k).")


@dataclasses.dataclass(frozen=True)
class GRUConfig:
  """The bidirectional GRU (the reference code's guidance model: hidden 256, 2 layers)."""
  hidden: int = option(64, "Hidden size per direction.")
  num_layers: int = option(2, "Stacked bidirectional layers.")


@dataclasses.dataclass(frozen=True)
class ClassifiersConfig:
  """The classifier families: which one guides sampling, and the widths of each (the protocols'
  fresh downstream models, `evaluation.downstream`, use the same widths)."""
  model: str = option("gru", "Guidance model: 'gru' (as the reference code) or 'timesnet'.")
  timesnet: TimesNetConfig = option(TimesNetConfig(), "TimesNet widths.")
  gru: GRUConfig = option(GRUConfig(), "GRU widths.")

  def __post_init__(self):
    if self.model not in MODELS:
      raise ValueError(f"classifier.model must be one of {MODELS}, got {self.model!r}.")

  def spec(self, num_classes: int, T: int, C: int, model: str | None = None,  # noqa: N803
           periods: Sequence[int] | None = None) -> ClassifierConfig:
    """The network of family `model` (default: the guidance model) for data of `num_classes`,
    T and C. TimesNet periods: `periods`, else `timesnet.periods`; one of them must be set."""
    tn, gru = self.timesnet, self.gru
    if periods is None and tn.periods:
      periods = tn.periods
    return ClassifierConfig(model=model or self.model, num_classes=int(num_classes), T=int(T),
                            C=int(C), periods=None if periods is None else tuple(periods),
                            d_model=tn.d_model, d_ff=tn.d_ff, e_layers=tn.e_layers,
                            top_k=tn.top_k, num_kernels=tn.num_kernels, dropout=tn.dropout,
                            gru_hidden=gru.hidden, gru_num_layers=gru.num_layers)


_TN, _GRU = TimesNetConfig(), GRUConfig()


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """One downstream network, fully specified (what `make_classifier` builds; usually made by
  `ClassifiersConfig.spec`). Width defaults are those of `TimesNetConfig` and `GRUConfig`.

  `periods` are the TimesNet periods (static ints from `timesnet_periods` on the train split);
  required for TimesNet, ignored by the GRU.
  """

  model: str = "timesnet"
  num_classes: int = 2
  T: int = 24
  C: int = 7
  periods: tuple[int, ...] | None = None
  d_model: int = _TN.d_model
  d_ff: int = _TN.d_ff
  e_layers: int = _TN.e_layers
  top_k: int = _TN.top_k
  num_kernels: int = _TN.num_kernels
  dropout: float = _TN.dropout
  gru_hidden: int = _GRU.hidden
  gru_num_layers: int = _GRU.num_layers

  def __post_init__(self):
    if self.periods is not None:
      object.__setattr__(self, "periods", tuple(int(p) for p in self.periods))
    if self.model not in MODELS:
      raise ValueError(f"classifier.model must be one of {MODELS}, got {self.model!r}.")
    if self.num_classes < 2:
      raise ValueError(f"num_classes must be >= 2, got {self.num_classes}.")
    if self.T < 2 or self.C < 1:
      raise ValueError(f"Classifier needs T >= 2 and C >= 1, got T={self.T}, C={self.C}.")
    if self.model == "timesnet":
      if self.d_model < 2 or self.d_model % 2:
        raise ValueError(f"classifier.timesnet.d_model must be even and >= 2, got {self.d_model}.")
      if self.d_ff < 1 or self.e_layers < 1 or self.num_kernels < 1 or self.top_k < 1:
        raise ValueError("classifier.timesnet d_ff, e_layers, num_kernels and top_k must be >= 1, "
                         f"got {self.d_ff}, {self.e_layers}, {self.num_kernels}, {self.top_k}.")
      if not 0.0 <= self.dropout < 1.0:
        raise ValueError(f"classifier.timesnet.dropout must be in [0, 1), got {self.dropout}.")
      if self.periods is None:
        raise ValueError("TimesNet needs periods: compute them with "
                         "timesnet_periods(x_train, top_k) and pass periods=...")
      if len(self.periods) != self.top_k:
        raise ValueError(f"Got {len(self.periods)} periods {self.periods} but "
                         f"timesnet.top_k={self.top_k}.")
      validate_periods(self.T, self.periods)
    else:
      if self.gru_hidden < 1 or self.gru_num_layers < 1:
        raise ValueError("classifier.gru hidden and num_layers must be >= 1, got "
                         f"{self.gru_hidden}, {self.gru_num_layers}.")

  @property
  def num_outputs(self) -> int:
    """Logits per example: 1 for binary tasks, num_classes otherwise."""
    return 1 if self.num_classes == 2 else self.num_classes

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict (for checkpoint meta)."""
    d = dataclasses.asdict(self)
    d["periods"] = None if self.periods is None else list(self.periods)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> ClassifierConfig:
    d = dict(d)
    if d.get("periods") is not None:
      d["periods"] = tuple(d["periods"])
    return cls(**d)


class Classifier(NamedTuple):
  """Pure functions of a downstream classifier (params are a plain pytree).

  init(key, T, C) -> params
  logits_fn(params, x[B,T,C], train=False, rngs=None) -> [B, K]   (K = 1 for binary)
  loss_fn(params, x[T,C], y[]) -> scalar          per example, eval mode
  batch_loss_fn(params, x[B,T,C], y[B], weights=None, train=True, rngs=None) -> scalar
  predict_proba(params, x[B,T,C]) -> [B] (binary: P(y=1)) or [B, K]
  """

  config: ClassifierConfig
  module: nn.Module
  init: Callable[..., Any]
  logits_fn: Callable[..., Array]
  loss_fn: Callable[..., Array]
  batch_loss_fn: Callable[..., Array]
  predict_proba: Callable[..., Array]


def make_module(config: ClassifierConfig, impl: str = "auto") -> nn.Module:
  """The Flax module of a config. `impl` is TimesNet's maths path ("auto", "dense", "spectral",
  "unfold", "conv": the same function, see `models.timesnet.choose_impl`); not in the config."""
  if config.model == "timesnet":
    return TimesNet(num_outputs=config.num_outputs, periods=tuple(config.periods),
                    d_model=config.d_model, d_ff=config.d_ff, e_layers=config.e_layers,
                    num_kernels=config.num_kernels, dropout=config.dropout, impl=impl)
  return GRUClassifier(num_outputs=config.num_outputs, hidden=config.gru_hidden,
                       num_layers=config.gru_num_layers)


def _as_rngs(rngs: Any) -> dict[str, Array] | None:
  if rngs is None or isinstance(rngs, dict):
    return rngs
  return {"dropout": rngs}


def per_example_losses(logits: Float[Array, "... K"], y: Int[Array, "..."]) -> Float[Array, "..."]:
  """BCE on one logit (K = 1, binary) or softmax cross-entropy (K > 1): [..., K], [...] ->
  [...] (one example or a batch)."""
  if logits.shape[-1] == 1:
    return optax.sigmoid_binary_cross_entropy(logits[..., 0], y.astype(logits.dtype))
  return optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(jnp.int32))


def class_probability(logits: Float[Array, "B K"], target: int = 1) -> Float[Array, " B"]:
  """P(y = target | x) from logits [B, K] (K = 1: the sigmoid is P(y = 1); K >= 2: softmax)."""
  if logits.shape[-1] == 1:
    p1 = jax.nn.sigmoid(logits[:, 0])
    return p1 if target == 1 else 1.0 - p1
  return jax.nn.softmax(logits, axis=-1)[:, target]


def make_classifier(config: ClassifierConfig, impl: str = "auto") -> Classifier:
  """Builds the module and its pure functions; see `Classifier` (`impl`: see `make_module`)."""
  module = make_module(config, impl)
  binary = config.num_classes == 2
  needs_rng = config.model == "timesnet" and config.dropout > 0.0
  jit_init = jax.jit(module.init)

  def init(key: Array, T: int = config.T, C: int = config.C) -> Any:
    if (T, C) != (config.T, config.C):
      raise ValueError(f"init(T={T}, C={C}) does not match the config (T={config.T}, "
                       f"C={config.C}).")
    return jit_init(key, jnp.zeros((1, T, C), jnp.float32))["params"]

  def logits_fn(params: Any, x: Float[Array, "B T C"], train: bool = False,
                rngs: Any = None) -> Float[Array, "B K"]:
    rngs = _as_rngs(rngs)
    if train and needs_rng and rngs is None:
      raise ValueError("logits_fn(train=True) needs rngs={'dropout': key} (or a key).")
    return module.apply({"params": params}, x, train=train, rngs=rngs if train else None)

  def loss_fn(params: Any, x: Float[Array, "T C"], y: Int[Array, ""]) -> Float[Array, ""]:
    return per_example_losses(logits_fn(params, x[None])[0], jnp.asarray(y))

  def batch_loss_fn(params: Any, x: Float[Array, "B T C"], y: Int[Array, " B"],
                    weights: Float[Array, " B"] | None = None, train: bool = True,
                    rngs: Any = None) -> Float[Array, ""]:
    """mean_i(w_i * l_i) (w = 1 when None): weights scale examples, e.g. inverse class freq."""
    losses = per_example_losses(logits_fn(params, x, train=train, rngs=rngs), y)
    if weights is not None:
      losses = losses * weights.astype(losses.dtype)
    return losses.mean()

  def predict_proba(params: Any, x: Float[Array, "B T C"]) -> Array:
    logits = logits_fn(params, x)
    if binary:
      return jax.nn.sigmoid(logits[:, 0])
    return jax.nn.softmax(logits, axis=-1)

  return Classifier(config, module, init, logits_fn, loss_fn, batch_loss_fn, predict_proba)
