"""The `tardiff` command line: one absl entrypoint for every stage (SPECS 3).

  tardiff --config=configs/default.py --workdir=runs/sim            # the whole pipeline
  tardiff --config=configs/default.py --workdir=runs/sim --mode=generate \
      --config.guidance.method=tardiff --config.guidance.scale=100

Every stage skips work already complete in `workdir` and resumes interrupted training.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("pipeline", "data", "train_diffusion", "train_classifier", "cache_guidance", "generate",
         "evaluate")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, e.g. configs/default.py or configs/default.py:paper.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and reports.")
_MODE = flags.DEFINE_enum("mode", "pipeline", MODES, "Which stage to run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; progress is ours.
  import jax

  from tardiff_jax import pipeline

  logging.info("JAX devices: %s", jax.devices())
  print(f"tardiff: mode={_MODE.value} workdir={_WORKDIR.value} devices={jax.devices()}",
        file=sys.stderr, flush=True)
  pipeline.run_mode(_MODE.value, _CONFIG.value, _WORKDIR.value)


def run() -> None:
  """Console-script entry (`tardiff`)."""
  app.run(main)


if __name__ == "__main__":
  run()
