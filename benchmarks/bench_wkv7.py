"""WKV-7 op speed: every registered implementation vs the lax.scan reference, same inputs, same run.

Times the forward and forward+backward (grad of a scalar loss w.r.t. all inputs) under jit, best of
`--repeats`. Prints a table and writes JSON to benchmarks/results/wkv7_<backend>.json.

  python benchmarks/bench_wkv7.py [--B 1] [--T 1024] [--H 12] [--N 64] [--dtype float32]
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

from common import machine, write_result
from modrwkv_jax.ops import wkv7 as ops


def inputs(B, T, H, N, dtype):
  ks = jax.random.split(jax.random.key(0), 6)
  r, k, v = (jax.random.normal(kk, (B, T, H, N)) for kk in ks[:3])
  log_w = -0.6065306597 * jax.nn.sigmoid(2 * jax.random.normal(ks[3], (B, T, H, N)))
  kappa = jax.random.normal(ks[4], (B, T, H, N))
  kappa = kappa / jnp.linalg.norm(kappa, axis=-1, keepdims=True)
  alpha = jax.nn.sigmoid(jax.random.normal(ks[5], (B, T, H, N)))
  return [x.astype(dtype) for x in (r, log_w, k, v, -kappa, kappa * alpha)]


def timed(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # compile
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--B", type=int, default=1)
  ap.add_argument("--T", type=int, default=1024)
  ap.add_argument("--H", type=int, default=12)
  ap.add_argument("--N", type=int, default=64)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  xs = inputs(args.B, args.T, args.H, args.N, jnp.dtype(args.dtype))
  variants = [("reference", 16)] + [(name, c) for name in ops.available_impls() if name != "reference"
                                     for c in (16, 32, 64)]
  rows = []
  for impl, c in variants:
    fwd = jax.jit(lambda *a, impl=impl, c=c: ops.wkv7(*a, impl=impl, chunk_size=c))
    loss = lambda *a, impl=impl, c=c: sum(jnp.sum(o.astype(jnp.float32)) for o in ops.wkv7(*a, impl=impl, chunk_size=c))
    bwd = jax.jit(jax.grad(loss, argnums=tuple(range(6))))
    rows.append((impl if impl == "reference" else f"{impl} C={c}", timed(fwd, xs, args.repeats),
                 timed(bwd, xs, args.repeats)))
  base_f, base_b = rows[0][1], rows[0][2]
  tokens = args.B * args.T
  print(f"\nWKV-7 B={args.B} T={args.T} H={args.H} N={args.N} {args.dtype}, backend {jax.default_backend()} "
        f"({jax.devices()[0].device_kind}), {os.cpu_count()} cpus")
  print(f"{'impl':<16}{'fwd ms':>10}{'fwd x':>8}{'fwd+bwd ms':>12}{'bwd x':>8}{'Mtok/s fwd':>12}")
  result = {"shape": vars(args), **machine(), "rows": []}
  for name, f, b in rows:
    print(f"{name:<16}{1e3 * f:>10.2f}{base_f / f:>7.2f}x{1e3 * b:>12.2f}{base_b / b:>7.2f}x{tokens / f / 1e6:>12.3f}")
    result["rows"].append({"impl": name, "fwd_s": f, "fwd_bwd_s": b, "fwd_speedup_vs_reference": base_f / f,
                           "fwd_bwd_speedup_vs_reference": base_b / b})
  out = write_result(result, "wkv7", args.out)
  print(f"-> {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
