"""RWKV-7 LM speed: this project vs the `rwkv` PyPI package (the PyTorch original), same weights,
same machine, same run.

Measures prefill throughput (tokens/s over a T-token prompt) and decode latency (ms per token with
the carried state), both in fp32. Prints a table and writes JSON to benchmarks/results/.

  python benchmarks/bench_rwkv7.py [--preset 0.1B] [--layers 4] [--prompt 128] [--decode 32]
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("RWKV_V7_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")
os.environ.setdefault("RWKV_JIT_ON", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import best_of, machine, write_result  # noqa: E402
from modrwkv_jax.models import rwkv7  # noqa: E402
from modrwkv_jax.ops.wkv7 import resolve_impl  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="0.1B", choices=sorted(rwkv7.PRESETS))
  ap.add_argument("--layers", type=int, default=4, help="override n_layer (keeps CPU runs short)")
  ap.add_argument("--prompt", type=int, default=128)
  ap.add_argument("--decode", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/rwkv7_<backend>.json)")
  args = ap.parse_args(argv)

  config = rwkv7.preset(args.preset, n_layer=args.layers)
  params = rwkv7.init_params(config, jax.random.key(0))
  tokens = np.random.RandomState(0).randint(0, config.vocab_size, size=(1, args.prompt)).astype(np.int32)
  rows = []

  # Ours: jitted forward (prefill) and jitted one-token step (decode).
  fwd = jax.jit(rwkv7.forward, static_argnums=0)
  t0 = time.perf_counter()
  jax.block_until_ready(fwd(config, params, jnp.asarray(tokens)))
  compile_s = time.perf_counter() - t0
  ours_prefill = best_of(lambda: jax.block_until_ready(fwd(config, params, jnp.asarray(tokens))), args.repeats)
  _, state = fwd(config, params, jnp.asarray(tokens))
  step_tokens = jnp.asarray(tokens[:, :1])
  jax.block_until_ready(fwd(config, params, step_tokens, state))

  def ours_decode():
    s = state
    for _ in range(args.decode):
      logits, s = fwd(config, params, step_tokens, s)
    jax.block_until_ready(logits)
  ours_step = best_of(ours_decode, args.repeats) / args.decode

  # Baseline: the rwkv package, cpu fp32, on the same weights.
  import torch
  from rwkv.model import RWKV
  torch.set_num_threads(os.cpu_count())
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "bench.pth")
    rwkv7.save_pth(config, params, path)
    ref = RWKV(model=path[:-4], strategy="cpu fp32")
  ids = tokens[0].tolist()
  ref.forward(ids, None, full_output=True)
  ref_prefill = best_of(lambda: ref.forward(ids, None, full_output=True), args.repeats)
  _, ref_state = ref.forward(ids, None, full_output=True)

  def ref_decode():
    s = [x.clone() for x in ref_state]
    for _ in range(args.decode):
      ref.forward([ids[0]], s)
  ref_step = best_of(ref_decode, args.repeats) / args.decode

  rows.append(("prefill tokens/s", args.prompt / ours_prefill, args.prompt / ref_prefill))
  rows.append(("decode ms/token", 1e3 * ours_step, 1e3 * ref_step))
  print(f"\nRWKV-7 {args.preset} shape with {config.n_layer} layers, fp32, wkv impl "
        f"'{resolve_impl(config.wkv_impl)}', backend {jax.default_backend()}, {os.cpu_count()} cpus")
  print(f"{'metric':<20}{'modrwkv-jax':>14}{'rwkv (torch)':>14}{'ratio':>8}")
  result = {"config": {k: getattr(config, k) for k in ("n_layer", "n_embd", "head_size", "vocab_size")},
            "preset": args.preset, "prompt": args.prompt, "decode": args.decode, "compile_s": compile_s,
            "wkv_impl": resolve_impl(config.wkv_impl), **machine(), "torch": torch.__version__, "metrics": {}}
  for name, ours, base in rows:
    better = ours / base if "tokens/s" in name else base / ours  # > 1 means we are faster
    print(f"{name:<20}{ours:>14.2f}{base:>14.2f}{better:>7.2f}x")
    result["metrics"][name] = {"ours": ours, "rwkv_torch": base, "speedup": better}
  out = write_result(result, "rwkv7", args.out)
  print(f"(speedup > 1: modrwkv-jax faster; compile {compile_s:.1f}s not included) -> {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
