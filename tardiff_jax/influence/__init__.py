"""Influence guidance: the guidance-gradient cache, influence scores and the sampler hook."""

from tardiff_jax.influence.cache import (
                                         CLASS_FILTERS,
                                         GuidanceCache,
                                         build_guidance_cache,
                                         load_cache,
                                         save_cache,
                                         select_rows,
)
from tardiff_jax.influence.guidance import (
                                         INFLUENCE_VARIANTS,
                                         GuidanceConfig,
                                         guidance_from_config,
                                         make_gparams,
                                         make_influence_guidance,
)
from tardiff_jax.influence.scores import (
                                         VARIANTS,
                                         batch_score,
                                         influence,
                                         influence_and_input_grad,
                                         influence_input_grad,
                                         influence_single,
                                         tree_norm,
                                         tree_vdot,
)

__all__ = [
    "CLASS_FILTERS", "GuidanceCache", "build_guidance_cache", "load_cache", "save_cache",
    "select_rows", "INFLUENCE_VARIANTS", "GuidanceConfig", "guidance_from_config", "make_gparams",
    "make_influence_guidance", "VARIANTS", "batch_score", "influence", "influence_and_input_grad",
    "influence_input_grad", "influence_single", "tree_norm", "tree_vdot",
]
