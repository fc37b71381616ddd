"""TimesBlock formulations compared on this machine: forward, training step and influence
input-gradient of the TimesNet classifier (impl "conv", "dense"), and the GRU.

  python benchmarks/bench_timesnet_kernels.py [--repeats 5] [--impls conv,dense]
      [--gru 64,256] [--T 24] [--C 7] [--periods 8,6,4] [--out FILE.json]

Quantities (default sizes: d_model 32, d_ff 64, e_layers 2, num_kernels 6):
  forward    logits of a batch of 256 (eval mode);
  train      value_and_grad of the mean BCE of a batch of 128 in params (train mode, dropout) +
             one Adam update, jitted together;
  influence  grad_x of sum_i jvp_params(loss(params, x_i, y_i), G), vmapped over 256 samples
             (the influence-guidance input gradient, `scores.influence_input_grad`'s maths).
"conv" is the former implementation (one XLA convolution per period branch). All variants run
in one process, interleaved: each repeat times every variant once; the reported number is the
median over repeats (the CPU is shared, so compare within one run). Compilation is excluded.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tardiff_jax import io as tio
from tardiff_jax.models.classifier import ClassifierConfig, make_classifier
from tardiff_jax.models.timesnet import TimesNet


def _bce(logits, y):
  return optax.sigmoid_binary_cross_entropy(logits[..., 0], y.astype(logits.dtype))


def make_fns(apply, params, x_fwd, x_tr, y_tr, x_inf, y_inf):
  """Jitted zero-argument callables (forward, train, influence) of a model `apply(p, x, train,
  key)`."""
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)
  leaves, tree = jax.tree.flatten(params)
  ks = jax.random.split(jax.random.key(11), len(leaves))
  g = jax.tree.unflatten(tree, [1e-2 * jax.random.normal(k, a.shape, a.dtype)
                                for k, a in zip(ks, leaves)])

  fwd = jax.jit(lambda p, x: apply(p, x, False, None))

  @jax.jit
  def train(p, s, x, y, key):
    loss, grads = jax.value_and_grad(lambda q: _bce(apply(q, x, True, key), y).mean())(p)
    upd, s = opt.update(grads, s, p)
    return optax.apply_updates(p, upd), s, loss

  @jax.jit
  def influence(p, x, y):
    def total(z):
      one = lambda zi, yi: jax.jvp(lambda q: _bce(apply(q, zi[None], False, None), yi)[0],
                                   (p,), (g,))[1]
      return jnp.sum(jax.vmap(one)(z, y))
    return jax.grad(total)(x)

  key = jax.random.key(3)
  return {
      "forward": lambda: fwd(params, x_fwd),
      "train": lambda: train(params, opt_state, x_tr, y_tr, key),
      "influence": lambda: influence(params, x_inf, y_inf),
  }


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--impls", default="conv,dense")
  ap.add_argument("--gru", default="64,256", help="GRU hidden sizes ('' = none)")
  ap.add_argument("--T", type=int, default=24)
  ap.add_argument("--C", type=int, default=7)
  ap.add_argument("--periods", default="8,6,4")
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  t, c = args.T, args.C
  periods = tuple(int(p) for p in args.periods.split(","))
  rng = np.random.RandomState(0)
  x_fwd = jnp.asarray(rng.randn(256, t, c), jnp.float32)
  x_tr = x_fwd[:128]
  y_tr = jnp.asarray(rng.randint(0, 2, 128), jnp.int32)
  y_inf = jnp.asarray(rng.randint(0, 2, 256), jnp.int32)

  variants = {}
  for impl in [s for s in args.impls.split(",") if s]:
    mod = TimesNet(num_outputs=1, periods=periods, impl=impl)
    params = jax.jit(mod.init)(jax.random.key(0), x_fwd[:1])["params"]

    def apply(p, x, train, key, mod=mod):
      return mod.apply({"params": p}, x, train=train, rngs={"dropout": key} if train else None)
    variants[f"timesnet_{impl}"] = make_fns(apply, params, x_fwd, x_tr, y_tr, x_fwd, y_inf)
  for hid in [int(h) for h in args.gru.split(",") if h]:
    clf = make_classifier(ClassifierConfig(model="gru", T=t, C=c, gru_hidden=hid))
    params = clf.init(jax.random.key(0), t, c)
    apply = lambda p, x, train, key, clf=clf: clf.logits_fn(p, x)
    variants[f"gru_{hid}"] = make_fns(apply, params, x_fwd, x_tr, y_tr, x_fwd, y_inf)

  compile_s = {}
  for name, fns in variants.items():
    for q, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      compile_s[f"{name}/{q}"] = time.perf_counter() - t0
  times = {f"{name}/{q}": [] for name, fns in variants.items() for q in fns}
  load = [os.getloadavg()[0]]
  for _ in range(args.repeats):
    for name, fns in variants.items():
      for q, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times[f"{name}/{q}"].append(time.perf_counter() - t0)
    load.append(os.getloadavg()[0])
  result = {"T": t, "C": c, "periods": list(periods), "repeats": args.repeats,
            "loadavg_1min": load, "cpu_count": os.cpu_count(),
            "median_s": {k: float(np.median(v)) for k, v in times.items()},
            "all_s": times, "first_call_s": compile_s}
  print(f"load average (1 min) during the run: {load}")
  print(f"{'variant/quantity':32s} {'median s':>10s} {'min s':>10s} {'first call s':>13s}")
  for k, v in times.items():
    print(f"{k:32s} {np.median(v):10.4f} {np.min(v):10.4f} {compile_s[k]:13.2f}")
  if args.out:
    tio.write_json(args.out, result)


if __name__ == "__main__":
  main()
