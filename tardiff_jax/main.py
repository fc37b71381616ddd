"""The `tardiff` command line: one absl entrypoint for every stage of a TarDiff run.

  tardiff --config=configs/default.py --workdir=runs/sim            # the whole pipeline
  tardiff --config=configs/default.py --workdir=runs/sim --mode=generate --methods=tardiff
      --config.guidance.scale=100                                    # one method at w = 100
  tardiff --config=configs/default.py --workdir=runs/sim --mode=generate --methods=tardiff
      --num_samples=1000000                  # streamed to synthetic/tardiff_n1000000/, resumable
  tardiff --config=configs/default.py --print_config                 # every field and its help
  tardiff --config=configs/default.py --workdir=/shared/run --config.parallel.devices=0 \
      --distributed --coordinator_address=host0:1234 --num_processes=2 --process_id=0
                                             # one of two processes (start the other with 1)

Any config field can be overridden as --config.<section>.<field>=<value>. Every stage skips
work already complete in --workdir, resumes interrupted training, and refuses a workdir whose
checkpoints were trained with other settings (unless --retrain).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("pipeline", "data", "train_diffusion", "train_classifier", "cache_guidance", "generate",
         "evaluate")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/default.py or configs/default.py:paper; override "
    "any field with --config.<section>.<field>=<value> (list them with --print_config).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run: checkpoints, artifacts, "
                               "synthetic sets, report.")
_MODE = flags.DEFINE_enum("mode", "pipeline", MODES, "Stage to run; 'pipeline' runs them all "
                          "and skips what the workdir holds.")
_METHODS = flags.DEFINE_list("methods", None, "--mode=generate: the methods to generate "
                             "(default: evaluation.methods).")
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", None, "--mode=generate: draw this many samples per method (classes as "
    "sampling.counts) into synthetic/<method>_n<N>/ chunk files with a manifest, one chunk in "
    "memory; rerun the same command to resume after a kill.", lower_bound=1)
_CHUNK_SIZE = flags.DEFINE_integer(
    "chunk_size", None, "--num_samples: samples per chunk file, a multiple of "
    "sampling.batch_size (default 64 batches).", lower_bound=1)
_RETRAIN = flags.DEFINE_bool("retrain", False, "Discard checkpoints trained with other settings "
                             "than the config and train again (default: stop with an error).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-process run (jax.distributed.initialize) before anything "
    "else; the mesh (--config.parallel.devices=0) then spans every process's devices, process 0 "
    "alone writes, and --workdir must be on a filesystem every process sees. Without the next "
    "three flags jax detects the cluster (e.g. SLURM, Cloud TPU).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "--distributed: host:port of "
                                   "process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--distributed: number of "
                                      "processes.", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "--distributed: this process's index "
                                   "(0 .. num_processes - 1).", lower_bound=0)
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print every config field with its "
                                  "value and meaning, then exit.")
flags.mark_flag_as_required("config")
KEY_FLAGS = ("config", "workdir", "mode", "methods", "num_samples", "chunk_size", "retrain",
             "distributed", "coordinator_address", "num_processes", "process_id", "print_config")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not _DISTRIBUTED.value and any(f.value is not None for f in (
      _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)):
    raise app.UsageError("--coordinator_address, --num_processes and --process_id need "
                         "--distributed.")
  if _DISTRIBUTED.value:  # Before anything that may start jax's backend.
    from tardiff_jax.parallel import initialize

    initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from tardiff_jax.config import describe, experiment_config

  try:
    cfg = experiment_config(_CONFIG.value)
  except ValueError as e:
    raise app.UsageError(f"--config: {e}") from None
  if _PRINT_CONFIG.value:
    print("\n".join(describe(cfg)))
    return
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (the directory of the run).")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; progress is ours.
  import jax

  from tardiff_jax.experiment import run_mode

  print(f"tardiff: mode={_MODE.value} workdir={_WORKDIR.value} process "
        f"{jax.process_index()}/{jax.process_count()} devices={jax.devices()}",
        file=sys.stderr, flush=True)
  run_mode(_MODE.value, cfg, _WORKDIR.value, retrain=_RETRAIN.value, methods=_METHODS.value,
           num_samples=_NUM_SAMPLES.value, chunk_size=_CHUNK_SIZE.value,
           quiet=jax.process_index() > 0)


def run() -> None:
  """Console-script entry (`tardiff`). `--help` describes the flags of the program that runs
  (`sys.argv[0]`: the console script, or this module under `python -m`), so they are
  registered for it here."""
  sys.modules["__main__"].__doc__ = __doc__
  for name in KEY_FLAGS:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  app.run(main, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad `--config.<field>` override (which ml_collections reports
  as AttributeError, KeyError or TypeError) reported as a usage error instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    msg = str(e)
    if len(msg) > 1 and msg[0] == msg[-1] == "'":  # ml_collections raises with a repr
      msg = msg[1:-1].replace(r"\n", " ").replace(r"\'", "'")
    msg = " ".join(msg.split())
    sys.stderr.write(f"FATAL Flags parsing error: {msg}\n"
                     "Pass --help to see the flags, --print_config for the config fields.\n")
    sys.exit(1)


if __name__ == "__main__":
  run()
