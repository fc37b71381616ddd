"""One-`lax.scan` samplers with a guidance hook, and batched generation."""

from tardiff_jax.sampling.generate import class_counts, generate, write_synthetic
from tardiff_jax.sampling.sampler import (
    SAMPLERS,
    SamplerConfig,
    SamplerParts,
    StepInfo,
    StepPlan,
    make_sampler,
    make_sampler_parts,
    sampling_plan,
)

__all__ = [
    "SAMPLERS", "SamplerConfig", "SamplerParts", "StepInfo", "StepPlan", "class_counts",
    "generate", "make_sampler", "make_sampler_parts", "sampling_plan", "write_synthetic",
]
