"""`jax.sharding` meshes: data-parallel training, guidance cache, sampler fits, sampling and
protocol groups over one mesh, on one host or several (`jax.distributed`)."""

from tardiff_jax.parallel.sharding import (
    ParallelConfig,
    batch_sharding,
    check_divisible,
    constrain_rows,
    generate_sharded,
    initialize,
    is_writer,
    jit_replicated,
    make_mesh,
    mesh_size,
    replicate,
    replicated,
    round_up,
    run_mesh,
    shard_batch,
    shard_rows,
    shard_sampler,
    to_host,
)

__all__ = ["ParallelConfig", "batch_sharding", "check_divisible", "constrain_rows",
           "generate_sharded", "initialize", "is_writer", "jit_replicated", "make_mesh",
           "mesh_size", "replicate", "replicated", "round_up", "run_mesh", "shard_batch",
           "shard_rows", "shard_sampler", "to_host"]
