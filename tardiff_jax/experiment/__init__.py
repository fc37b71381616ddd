"""A TarDiff run: its workdir, artifact store, stages, methods, scale selection and evaluation.

- `workdir`: the directory layout and its lock;
- `store`: the content-addressed artifact store (settings digest, checksums, manifest);
- `stages`: the trained pieces (denoiser, guide, guidance cache, sampler fits);
- `methods`: the registry of generation methods (`register_method`);
- `run`: `Experiment` (one workdir and config, stages computed on first use) and `load_run`;
- `selection`: each guided method's guidance scale chosen on evaluation-val;
- `evaluate`: protocols, fidelity, privacy, plots and the report;
- `runner`: the command line's modes (`run_mode`, `run_pipeline`).
"""

from tardiff_jax.experiment.evaluate import evaluate
from tardiff_jax.experiment.methods import (
    METHODS,
    BaselineMethod,
    DiffusionMethod,
    get_method,
    register_method,
)
from tardiff_jax.experiment.run import Experiment, SyntheticSet, load_run
from tardiff_jax.experiment.runner import (
    MODES,
    generate_methods,
    run_mode,
    run_pipeline,
    stream_method,
)
from tardiff_jax.experiment.selection import ScaleSelection, select_scale
from tardiff_jax.experiment.stages import IncompatibleWorkdirError, TrainedGuide
from tardiff_jax.experiment.store import ArtifactStore, CorruptArtifactError
from tardiff_jax.experiment.workdir import Workdir, WorkdirLockedError

__all__ = [
    "METHODS", "MODES", "ArtifactStore", "BaselineMethod", "CorruptArtifactError",
    "DiffusionMethod", "Experiment", "IncompatibleWorkdirError", "ScaleSelection",
    "SyntheticSet", "TrainedGuide", "Workdir", "WorkdirLockedError", "evaluate",
    "generate_methods", "get_method", "load_run", "register_method", "run_mode", "run_pipeline",
    "select_scale", "stream_method",
]
