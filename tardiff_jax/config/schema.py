"""`ExperimentConfig`: every setting of a run, as frozen typed sections (one place for defaults).

The sections are the library's own config classes, so a config file, the command line, a
workdir's config.json and Python code all reach the same fields:

  seed             the master seed (model init, training order, sampling keys derive from it)
  data             `DataConfig` (tardiff_jax/data/prepare.py), with `data.simulator`
  diffusion        `DiffusionConfig` (tardiff_jax/diffusion/schedules.py)
  unet             `UNetConfig` (tardiff_jax/models/unet1d.py)
  train_diffusion  `DiffusionTrainConfig` (tardiff_jax/training/diffusion_trainer.py)
  classifier       `ClassifiersConfig` (tardiff_jax/models/classifier.py)
  train_classifier `TrainClassifierConfig` (tardiff_jax/training/classifier_trainer.py)
  guidance         `GuidanceConfig` (tardiff_jax/influence/guidance.py)
  sampling         `SamplerConfig` (tardiff_jax/sampling/plan.py)
  evaluation       `EvaluationConfig` (tardiff_jax/evaluation/protocols.py)
  parallel         `ParallelConfig` (tardiff_jax/parallel/sharding.py)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from tardiff_jax.config.convert import ConfigError, from_mapping, to_config_dict, to_dict
from tardiff_jax.config.fields import option
from tardiff_jax.data.prepare import DataConfig
from tardiff_jax.diffusion.schedules import DiffusionConfig
from tardiff_jax.evaluation.protocols import EvaluationConfig
from tardiff_jax.influence.guidance import GuidanceConfig
from tardiff_jax.models.classifier import ClassifiersConfig
from tardiff_jax.models.unet1d import UNetConfig
from tardiff_jax.parallel.sharding import ParallelConfig
from tardiff_jax.sampling.plan import SamplerConfig
from tardiff_jax.training.classifier_trainer import TrainClassifierConfig
from tardiff_jax.training.diffusion_trainer import DiffusionTrainConfig


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """Every setting of a TarDiff run (see the module docstring for the sections)."""
  seed: int = option(0, "Master seed: model init, training order and sampling keys derive "
                        "from it.")
  data: DataConfig = option(DataConfig(), "Data source, splits and normalisation.")
  diffusion: DiffusionConfig = option(DiffusionConfig(), "Noise schedule and training target.")
  unet: UNetConfig = option(UNetConfig(), "The 1D U-Net denoiser.")
  train_diffusion: DiffusionTrainConfig = option(DiffusionTrainConfig(), "Denoiser training.")
  classifier: ClassifiersConfig = option(ClassifiersConfig(), "Guide and downstream models.")
  train_classifier: TrainClassifierConfig = option(TrainClassifierConfig(),
                                                   "Classifier training.")
  guidance: GuidanceConfig = option(GuidanceConfig(), "Guidance and its scales.")
  sampling: SamplerConfig = option(SamplerConfig(), "Reverse process and generation.")
  evaluation: EvaluationConfig = option(EvaluationConfig(), "Protocols and methods.")
  parallel: ParallelConfig = option(ParallelConfig(), "Devices: one data-parallel mesh for "
                                    "every stage.")

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready nested dict (what a workdir's config.json holds)."""
    return to_dict(self)


def experiment_config(cfg: Any) -> ExperimentConfig:
  """The one converter: a config file's ConfigDict (or a nested mapping such as a workdir's
  config.json, or an ExperimentConfig) -> ExperimentConfig. Unknown fields are an error that
  names them."""
  if isinstance(cfg, ExperimentConfig):
    return cfg
  return from_mapping(ExperimentConfig, cfg)


def default_config_dict() -> ml_collections.ConfigDict:
  """The defaults as the ConfigDict a config file returns (`configs/default.py`)."""
  return to_config_dict(ExperimentConfig())


__all__ = ["ConfigError", "ExperimentConfig", "default_config_dict", "experiment_config"]
