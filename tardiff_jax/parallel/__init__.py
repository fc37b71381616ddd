"""`jax.sharding` meshes for data-parallel sampling."""

from tardiff_jax.parallel.sharding import (
    batch_sharding,
    generate_sharded,
    make_mesh,
    replicate,
    shard_batch,
    shard_sampler,
)

__all__ = ["batch_sharding", "generate_sharded", "make_mesh", "replicate", "shard_batch",
           "shard_sampler"]
