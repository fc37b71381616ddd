"""One-`lax.scan` samplers with a guidance hook, their offline fits, and batched generation.

`plan` (settings, per-step arrays, the guidance-hook protocol), `predictors` (model call,
classifier-free guidance, x0 calibration), `steppers` (DDIM, DDPM, analytic-variance DDIM),
`sampler` (the scan), `dct` (the time-frequency basis), `fitting` (gamma and the x0 calibration,
fitted once per denoiser), `generate` (fixed-shape batches and class counts), `stream`
(cohorts larger than memory: resumable chunk files with a manifest).
"""

from tardiff_jax.sampling.dct import dct_matrix, from_freq, to_freq
from tardiff_jax.sampling.fitting import (
    SamplerFit,
    estimate_calibration,
    estimate_gamma,
    fit_sampler,
    needs_fit,
)
from tardiff_jax.sampling.generate import class_counts, generate
from tardiff_jax.sampling.plan import (
    SAMPLERS,
    VARIANCES,
    GuidanceFn,
    SamplerConfig,
    StepInfo,
    StepPlan,
    sampling_plan,
)
from tardiff_jax.sampling.predictors import (
    X0Calibration,
    make_predictor,
    model_predictor,
    with_calibration,
    with_cfg,
)
from tardiff_jax.sampling.sampler import SamplerParts, make_sampler, make_sampler_parts
from tardiff_jax.sampling.steppers import (
    Stepper,
    analytic_ddim_stepper,
    analytic_extra,
    ddim_stepper,
    ddpm_stepper,
    make_stepper,
)
from tardiff_jax.sampling.stream import iter_chunks, load_stream, stream_generate

__all__ = [
    "SAMPLERS", "GuidanceFn", "SamplerConfig", "SamplerFit", "SamplerParts", "StepInfo",
    "StepPlan", "Stepper", "VARIANCES", "X0Calibration", "analytic_ddim_stepper",
    "analytic_extra", "class_counts", "dct_matrix", "ddim_stepper", "ddpm_stepper",
    "estimate_calibration", "estimate_gamma", "fit_sampler", "from_freq", "generate",
    "iter_chunks", "load_stream", "make_predictor", "make_sampler", "make_sampler_parts",
    "make_stepper", "model_predictor", "needs_fit", "sampling_plan", "stream_generate", "to_freq",
    "with_calibration", "with_cfg",
]
