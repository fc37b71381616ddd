#!/usr/bin/env bash
# One-shot accelerator checks: environment, guidance and diffusion benchmarks, a correctness test
# subset, and the default pipeline end to end. Each step has its own time limit and the script
# goes on when one fails, so a single run on a borrowed GPU returns as much as it can.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_checks.sh            # results and logs land in $OUT
#
# Where ml-collections is missing (it is the one dependency some GPU images lack), wheels in .whl/
# are installed into /tmp/site first. The repository root must be the working directory.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}  # Only gpu.tgz and steps.txt land here (few files).
W=${WORK:-/tmp/gpu_work}  # Logs and result files, packed into $OUT/gpu.tgz after every step.
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import ml_collections" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
R=benchmarks/results
T0=$(date +%s)
pack() {
  cp $R/bench_guidance_gpu_*.json $R/bench_guidance_gpu_*.md $R/bench_diffusion_gpu_*.json \
    $R/bench_diffusion_gpu_*.md $R/bench_scaling_gpu.* "$W"/ 2>/dev/null
  [ -d /tmp/gpu_run ] && tar czf "$W/run.tgz" -C /tmp gpu_run/report.md gpu_run/report.json \
    gpu_run/config.json gpu_run/manifest.json gpu_run/metrics.jsonl gpu_run/stages \
    gpu_run/eval 2>/dev/null
  tar czf "$OUT/gpu.tgz" -C "$W" . 2>/dev/null
}
step() {  # step NAME LIMIT_S COMMAND...: runs COMMAND under a time limit, logs to $W/NAME.log.
  local name=$1 limit=$2; shift 2
  local s
  s=$(date +%s)
  timeout "$limit" "$@" > "$W/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - s )) elapsed=$(( $(date +%s) - T0 ))" \
    | tee -a "$OUT/steps.txt"
  pack
}
{ nvidia-smi -L; python3 -c "import sys, jax, flax, optax; print(sys.version.split()[0], \
'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } \
  > "$W/env.txt" 2>&1
cat "$W/env.txt"

# Guided sampling throughput on the accelerator: DDIM-20 at batch 1024, paper U-Net + paper GRU.
step guidance_b1024 "${LIM_GUIDANCE:-150}" python3 benchmarks/bench_guidance.py --config=paper \
  --classifier=gru --batch=1024 --variants=dot,classifier --tag=gpu_paper_gru_b1024
# The U-Net benchmark (forward, training step, DDIM-20) at the CPU batch, paper and default U-Nets.
step diffusion_b256 "${LIM_DIFF:-70}" python3 benchmarks/bench_diffusion.py --batch=256 \
  --out=$R/bench_diffusion_gpu_b256
# The default pipeline end to end (CPU: about 15 minutes on 2 cores, see configs/default.py).
step pipeline "${LIM_PIPELINE:-190}" python3 -m tardiff_jax.main --config=configs/default.py \
  --workdir=/tmp/gpu_run
step guidance_b4096 "${LIM_GUIDANCE4K:-50}" python3 benchmarks/bench_guidance.py --config=paper \
  --classifier=gru --batch=4096 --variants=dot --tag=gpu_paper_gru_b4096
# Data-parallel scaling on this machine's real devices (every power-of-two device count), paper
# config, batches 256..8192: samples/s unguided and guided, training examples/s, and the guided
# samples' difference from the one-device result.
step scaling "${LIM_SCALING:-240}" python3 benchmarks/bench_scaling.py --fake_devices=0 \
  --config=paper --batches=256,1024,4096,8192 --tag=gpu
# Correctness on this backend and jax version, with full float32 matrix products (the tests'
# tolerances are float32 ones; GPUs default to TF32 for float32 products).
step tests "${LIM_TESTS:-70}" env JAX_DEFAULT_MATMUL_PRECISION=highest python3 -m pytest -q -x \
  -p no:cacheprovider tests/test_sampler.py tests/test_sharding.py tests/test_multiprocess.py \
  tests/test_guided_sampling.py
cat "$OUT/steps.txt"
