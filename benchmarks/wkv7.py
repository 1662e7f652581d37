"""WKV-7 op benchmark: every implementation and the installable peers, same inputs, same run.

For T in {512, 2048, 8192} (and, on a GPU, the anchor shape B=8, T=4096, H=64, N=64 in bf16) it
times the forward and the forward+backward (grad of a scalar loss w.r.t. all six inputs) under jit,
best of `--repeats`, and reports tokens/s, the speed-up over `reference` measured in the same run,
compiled peak memory (XLA's memory analysis: arguments + outputs + temporaries), and the achieved
FLOP/s and bytes/s of the chunked algorithm as a fraction of the device's measured matmul peak (and
of the nominal peak on known GPUs).

Peers, where installable: `rwkv-ops` (its JAX path; on the CPU that is its native sequential op),
on NVIDIA GPUs `fla` (flash-linear-attention `chunk_rwkv7`, torch). Pallas runs in interpret mode on
the CPU, which measures correctness plumbing, not kernel speed: it is timed at the smallest T only.

  python benchmarks/wkv7.py [--T 512 2048 8192] [--B 1] [--H 4] [--N 64] [--dtype float32]

Writes benchmarks/results/wkv7-<device>.json (a new file under build/benchmarks/ when that one exists,
unless BENCH_OVERWRITE=1 or --out: benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # rwkv-ops picks its backend at import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, output_path, write_json  # noqa: E402
from modrwkv_jax.ops import wkv7 as ops  # noqa: E402

# Nominal dense peaks (FLOP/s for the benchmark dtype, HBM bytes/s) of GPUs we report against.
NOMINAL = {"H100": {"bfloat16": 989e12, "float32": 67e12, "bytes": 3.35e12},
           "H200": {"bfloat16": 989e12, "float32": 67e12, "bytes": 4.8e12}}


def make_inputs(B, T, H, N, dtype, seed=0):
  """RWKV-7-like inputs (docs/rwkv7.md#the-wkv-7-operator): log_w = −0.6065·σ(2·z), a = −κ̂, b = κ̂·σ(·)."""
  ks = jax.random.split(jax.random.key(seed), 6)
  r, k, v = (jax.random.normal(kk, (B, T, H, N)) for kk in ks[:3])
  log_w = -0.6065306597 * jax.nn.sigmoid(2 * jax.random.normal(ks[3], (B, T, H, N)))
  kappa = jax.random.normal(ks[4], (B, T, H, N))
  kappa = kappa / jnp.linalg.norm(kappa, axis=-1, keepdims=True)
  alpha = jax.nn.sigmoid(jax.random.normal(ks[5], (B, T, H, N)))
  return [x.astype(dtype) for x in (r, log_w, k, v, -kappa, kappa * alpha)]


def chunked_cost(B, T, H, N, C, itemsize):
  """(forward FLOPs, backward FLOPs, forward bytes, backward bytes) of the chunked algorithm.

  Per chunk and head: matmuls of C×C×N (9 forward, 24 backward incl. recomputation), C×N×N
  (4 forward, 9 backward) and the Neumann inverse, 2·(log2 C − 1) C×C×C products in each pass.
  Bytes: the six inputs, output/cotangent and per-chunk states moving through memory once.
  """
  chunks = B * H * math.ceil(T / C)
  ccn, cnn, ccc = 2 * C * C * N, 2 * C * N * N, 2 * C ** 3 * (2 * (int(math.log2(C)) - 1))
  fwd = chunks * (9 * ccn + 4 * cnn + ccc)
  bwd = chunks * (24 * ccn + 9 * cnn + ccc)
  seq = B * T * H * N * itemsize
  states = chunks * N * N * 4
  return fwd, bwd, 7 * seq + states, 14 * seq + states


def timed(fn, args, repeats):
  jax.block_until_ready(fn(*args))  # compile + warm up
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def peak_bytes(fn, args):
  """XLA's compiled memory estimate: arguments + outputs + temporaries (bytes), or None."""
  try:
    m = fn.lower(*args).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
  except Exception:  # some backends do not report
    return None


def matmul_peak(dtype, repeats):
  """Measured FLOP/s of a large square matmul: the device's practical peak for this dtype."""
  n = 4096 if jax.default_backend() != "cpu" else 1024
  x = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  return 2 * n ** 3 / timed(f, (x,), repeats)


def jax_op(impl, C):
  fwd = jax.jit(lambda *a: ops.wkv7(*a, impl=impl, chunk_size=C))
  loss = lambda *a: sum(jnp.sum(o.astype(jnp.float32)) for o in ops.wkv7(*a, impl=impl, chunk_size=C))
  return fwd, jax.jit(jax.grad(loss, argnums=tuple(range(6))))


def rwkv_ops_op(N):
  """rwkv-ops' generalized_delta_rule (w convention: decay = exp(−exp(w)), so w = log(−log_w))."""
  from rwkv_ops.rwkv7_kernel import get_generalized_delta_rule  # pylint: disable=g-import-not-at-top
  op = get_generalized_delta_rule(HEAD_SIZE=N, KERNEL_TYPE="cuda" if jax.default_backend() == "gpu" else "native")
  op = op[0] if isinstance(op, tuple) else op
  def run(r, log_w, k, v, a, b):
    w = jnp.log(-log_w.astype(jnp.float32)).astype(r.dtype)
    return op(r, w, k, v, a, b, output_final_state=True)
  loss = lambda *a: sum(jnp.sum(o.astype(jnp.float32)) for o in run(*a))
  return jax.jit(run), jax.jit(jax.grad(loss, argnums=tuple(range(6)))), op.__module__


def fla_times(xs, repeats):
  """fla chunk_rwkv7 on the same inputs (torch, CUDA): (fwd s, fwd+bwd s, peak bytes)."""
  import torch  # pylint: disable=g-import-not-at-top
  from fla.ops.rwkv7 import chunk_rwkv7  # pylint: disable=g-import-not-at-top
  ts = [torch.from_dlpack(x).cuda().requires_grad_(True) for x in xs]
  def fwd():
    return chunk_rwkv7(ts[0], ts[1], ts[2], ts[3], ts[4], ts[5], scale=1.0, output_final_state=True)
  def fwd_bwd():
    o, s = fwd()
    (o.float().sum() + s.sum()).backward()
  out = []
  for fn in (fwd, fwd_bwd):
    fn(); torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter(); fn(); torch.cuda.synchronize()
      best = min(best, time.perf_counter() - t0)
    out.append(best)
  return out[0], out[1], torch.cuda.max_memory_allocated()


def version(pkg):
  try:
    return importlib.metadata.version(pkg)
  except importlib.metadata.PackageNotFoundError:
    return None


def bench_shape(B, T, H, N, dtype, repeats, max_peer_bytes, include_slow):
  xs = make_inputs(B, T, H, N, jnp.dtype(dtype))
  cpu = jax.default_backend() == "cpu"
  variants = [("reference", 16)] + [("chunked", c) for c in (16, 32, 64)]
  if not cpu or include_slow:
    variants += [("pallas", c) for c in ((16, 32, 64) if not cpu else (16,))]
  rows = []
  for impl, C in variants:
    fwd, bwd = jax_op(impl, C)
    name = impl if impl == "reference" else f"{impl} C={C}" + (" (interpret)" if impl == "pallas" and cpu else "")
    rows.append(dict(impl=name, fwd_s=timed(fwd, xs, repeats), fwd_bwd_s=timed(bwd, xs, repeats),
                     peak_fwd_bytes=peak_bytes(fwd, xs), peak_fwd_bwd_bytes=peak_bytes(bwd, xs), chunk=C))
  try:
    fwd, bwd, module = rwkv_ops_op(N)
    row = dict(impl=f"rwkv-ops ({module.rsplit('.', 1)[-1]})", peak_fwd_bytes=peak_bytes(fwd, xs),
               peak_fwd_bwd_bytes=peak_bytes(bwd, xs))
    row["fwd_s"] = timed(fwd, xs, repeats)
    need = row["peak_fwd_bwd_bytes"] or 0
    if need > max_peer_bytes:
      row["fwd_bwd_s"] = None
      row["note"] = f"fwd+bwd skipped: XLA plans {need / 2**30:.1f} GiB (its loop carries the whole output)"
    else:
      row["fwd_bwd_s"] = timed(bwd, xs, repeats)
    rows.append(row)
  except Exception as e:  # not installed / unsupported here
    rows.append(dict(impl="rwkv-ops", fwd_s=None, fwd_bwd_s=None, note=f"unavailable: {type(e).__name__}: {e}"[:200]))
  if jax.default_backend() == "gpu":
    try:
      f, fb, peak = fla_times(xs, repeats)
      rows.append(dict(impl="fla chunk_rwkv7", fwd_s=f, fwd_bwd_s=fb, peak_fwd_bwd_bytes=peak))
    except Exception as e:
      rows.append(dict(impl="fla chunk_rwkv7", fwd_s=None, fwd_bwd_s=None, note=f"unavailable: {e}"[:200]))
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--T", type=int, nargs="+", default=[512, 2048, 8192])
  ap.add_argument("--B", type=int, default=1)
  ap.add_argument("--H", type=int, default=4)
  ap.add_argument("--N", type=int, default=64)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--max-peer-gib", type=float, default=6.0, help="skip a peer's fwd+bwd above this plan")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)

  info = machine()
  gpu = jax.default_backend() == "gpu"
  shapes = [(args.B, T, args.H, args.N, args.dtype) for T in args.T]
  if gpu:
    shapes.append((8, 4096, 64, 64, "bfloat16"))  # the anchor shape of the issue
  peaks = {d: matmul_peak(jnp.dtype(d), args.repeats) for d in sorted({s[4] for s in shapes})}
  nominal = next((v for k, v in NOMINAL.items() if k in info["device"]), None)
  result = {**info, "versions": {p: version(p) for p in ("jax", "jaxlib", "rwkv-ops", "flash-linear-attention", "torch")},
            "measured_matmul_flops": peaks, "nominal_peak": nominal, "shapes": []}

  for B, T, H, N, dtype in shapes:
    rows = bench_shape(B, T, H, N, dtype, args.repeats, args.max_peer_gib * 2**30, include_slow=T == min(args.T))
    base = rows[0]
    tokens = B * T
    print(f"\nWKV-7 B={B} T={T} H={H} N={N} {dtype} on {info['device']} ({info['backend']}, {info['cpus']} cpus)")
    print(f"{'impl':<28}{'fwd ms':>9}{'x ref':>7}{'fwd+bwd ms':>12}{'x ref':>7}{'Mtok/s f+b':>11}"
          f"{'peak MiB':>10}{'%peak':>7}")
    for row in rows:
      f, fb = row.get("fwd_s"), row.get("fwd_bwd_s")
      row["fwd_tokens_per_s"] = tokens / f if f else None
      row["fwd_bwd_tokens_per_s"] = tokens / fb if fb else None
      row["fwd_speedup_vs_reference"] = base["fwd_s"] / f if f else None
      row["fwd_bwd_speedup_vs_reference"] = base["fwd_bwd_s"] / fb if fb else None
      if "chunk" in row and not row["impl"].startswith("reference"):
        ff, bf_, fbytes, bbytes = chunked_cost(B, T, H, N, row["chunk"], jnp.dtype(dtype).itemsize)
        row["flops_fwd_bwd"] = ff + bf_
        row["achieved_flops_fwd_bwd"] = (ff + bf_) / fb
        row["fraction_of_measured_matmul_peak"] = row["achieved_flops_fwd_bwd"] / peaks[dtype]
        row["achieved_bytes_per_s_fwd_bwd"] = (fbytes + bbytes) / fb
        if nominal:
          row["fraction_of_nominal_flops"] = row["achieved_flops_fwd_bwd"] / nominal[dtype]
          row["fraction_of_nominal_bandwidth"] = row["achieved_bytes_per_s_fwd_bwd"] / nominal["bytes"]
      ms = lambda s: f"{1e3 * s:9.2f}" if s else f"{'-':>9}"
      x = lambda s: f"{s:6.2f}x" if s else f"{'-':>7}"
      peak = row.get("peak_fwd_bwd_bytes")
      frac = row.get("fraction_of_measured_matmul_peak")
      print(f"{row['impl']:<28}{ms(f)}{x(row['fwd_speedup_vs_reference'])}{ms(fb):>12}"
            f"{x(row['fwd_bwd_speedup_vs_reference'])}{(tokens / fb / 1e6 if fb else 0):11.3f}"
            f"{(peak / 2**20 if peak else 0):10.1f}{(100 * frac if frac else 0):6.1f}%"
            + (f"  {row['note']}" if row.get("note") else ""))
    result["shapes"].append({"B": B, "T": T, "H": H, "N": N, "dtype": dtype, "rows": rows})

  device = info["device"].replace(" ", "_").lower()
  out = write_json(result, output_path(f"wkv7-{device}.json", args.out))  # a new file unless asked: common.py
  print("\nmatmul peak measured: " + ", ".join(f"{d} {p / 1e9:.1f} GFLOP/s" for d, p in peaks.items()))
  print(f"-> {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
