"""The typed config: one converter, one place for defaults, clear errors."""

import dataclasses
import json

import ml_collections
import pytest

from tardiff_jax.config import (
    ConfigError,
    ExperimentConfig,
    default_config_dict,
    describe,
    experiment_config,
    from_mapping,
    load_config,
    to_config_dict,
)


def test_defaults_live_in_the_typed_sections():
  cfg = experiment_config(load_config("default"))
  assert cfg == ExperimentConfig()  # configs/default.py adds nothing to the sections' defaults
  assert cfg.guidance.scale is None and cfg.guidance.selects_scale
  assert cfg.sampling.variance == "analytic" and cfg.train_diffusion.fill == "interp"
  lines = describe(cfg)
  assert all("  # " in line and not line.endswith("# ") for line in lines), lines[:3]
  assert any(line.startswith("data.simulator.num_stays = 10000") for line in lines)


def test_round_trips_through_config_dict_and_json():
  cfg = experiment_config(load_config("tiny"))
  assert experiment_config(to_config_dict(cfg)) == cfg
  assert experiment_config(json.loads(json.dumps(cfg.to_dict()))) == cfg
  paper = experiment_config(load_config("default:paper"))
  assert paper.unet.base_channels == 64 and len(paper.evaluation.alphas) == 5
  with pytest.raises(ValueError, match="variant"):
    load_config("default:huge")


def test_unknown_fields_and_bad_types_are_named():
  c = default_config_dict()
  c.guidance.scalee = 3.0
  with pytest.raises(ConfigError, match="unknown config field guidance.scalee; guidance has"):
    experiment_config(c)
  with pytest.raises(ConfigError, match="unknown config field data.simulator.num_stay"):
    experiment_config({"data": {"simulator": {"num_stay": 3}}})
  with pytest.raises(ConfigError, match="unknown config field colour"):
    experiment_config({"colour": 1})
  for bad, match in (({"seed": "zero"}, "seed must be an integer"),
                     ({"guidance": {"scale_grid": 3.0}}, "guidance.scale_grid must be a tuple"),
                     ({"sampling": {"calibrate_x0": 1}}, "sampling.calibrate_x0 must be True"),
                     ({"unet": {"channel_mult": [1, "x"]}}, r"unet.channel_mult\[1\]"),
                     ({"evaluation": {"alphas": (0.2, -1.0)}}, "evaluation.alphas")):
    with pytest.raises(ValueError, match=match):
      experiment_config(bad)


def test_optional_scale_overrides_as_a_float():
  c = default_config_dict()
  c.guidance.scale = 100  # What --config.guidance.scale=100 does to the placeholder.
  g = experiment_config(c).guidance
  assert g.scale == 100.0 and isinstance(g.scale, float) and not g.selects_scale
  with pytest.raises(ValueError, match="both set"):
    experiment_config({"guidance": {"scale": 1.0, "class_scales": (1.0, 2.0)}})


def test_sections_reject_their_own_bad_values():
  cfg = ExperimentConfig()
  with pytest.raises(ValueError, match="evaluation.downstream"):
    dataclasses.replace(cfg.evaluation, downstream="lstm")
  with pytest.raises(ValueError, match="evaluation.methods"):
    dataclasses.replace(cfg.evaluation, methods=("tardiff", "tardiff"))
  assert isinstance(from_mapping(ExperimentConfig, ml_collections.ConfigDict({"seed": 3})).seed,
                    int)
