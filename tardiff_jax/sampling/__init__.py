"""One-`lax.scan` samplers with a guidance hook, and batched generation."""

from tardiff_jax.sampling.generate import class_counts, generate, write_synthetic
from tardiff_jax.sampling.sampler import (
    SAMPLERS,
    VARIANCES,
    SamplerConfig,
    SamplerParts,
    StepInfo,
    StepPlan,
    X0Calibration,
    analytic_extra,
    dct_matrix,
    estimate_calibration,
    estimate_gamma,
    make_predictor,
    make_sampler,
    make_sampler_parts,
    sampling_plan,
)

__all__ = [
    "SAMPLERS", "SamplerConfig", "SamplerParts", "StepInfo", "StepPlan", "VARIANCES",
    "X0Calibration", "analytic_extra", "class_counts", "dct_matrix", "estimate_calibration",
    "estimate_gamma", "generate", "make_predictor", "make_sampler", "make_sampler_parts",
    "sampling_plan", "write_synthetic",
]
