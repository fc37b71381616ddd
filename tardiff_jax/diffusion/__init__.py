"""Noise schedules and Gaussian diffusion maths."""

from tardiff_jax.diffusion.gaussian import (
    alpha_bar_at,
    analytic_extra_var,
    as_eps_model,
    ddim_invert_step,
    ddim_sigma,
    ddim_step,
    ddpm_step,
    eps_from_v,
    eps_from_x0,
    eps_loss,
    q_sample,
    v_target,
    x0_from_eps,
)
from tardiff_jax.diffusion.schedules import (
    SCHEDULES,
    DiffusionConfig,
    Schedule,
    ddim_timesteps,
    make_schedule,
)

__all__ = [
    "SCHEDULES", "DiffusionConfig", "Schedule", "alpha_bar_at", "analytic_extra_var",
    "ddim_invert_step", "ddim_sigma",
    "ddim_step", "ddim_timesteps", "ddpm_step", "eps_from_x0", "eps_loss", "make_schedule",
    "q_sample", "x0_from_eps", "as_eps_model", "eps_from_v", "v_target",
]
