"""Compile time of the RWKV-7 training step, scanned against unrolled layers, and the from-scratch init.

For 4, 12 and 24 layers of the 0.4B width (D 1024, the released LoRA ranks, the World vocabulary) it
lowers and compiles `jax.value_and_grad` of the token-mean cross-entropy at batch 1 × T tokens, once
with `scan_layers=False` (one copy of the block per layer in the program) and once with
`scan_layers=True` (one block inside `nn.scan`). Compile time is the time of `.lower().compile()`;
nothing is executed. The target of the model-surface issue: scanned 24 layers within 1.5× of 4.

It also times `rwkv7.init_params` for the full 0.4B model (compile + run), scanned and unrolled.
Prints a table and writes benchmarks/results/compile_<backend>.json.

  python benchmarks/compile.py [--layers 4 12 24] [--tokens 64] [--no-init]
"""

import argparse
import time

import jax
import jax.numpy as jnp

from common import machine, write_result
from modrwkv_jax.models import rwkv7


def step_fn(config):
  def loss(params, tokens):
    logits, _ = rwkv7.forward(config, params, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))
  return jax.value_and_grad(loss)


def compile_seconds(config, tokens: int) -> float:
  params = rwkv7.abstract_params(config)
  batch = jax.ShapeDtypeStruct((1, tokens + 1), jnp.int32)
  t0 = time.perf_counter()
  jax.jit(step_fn(config)).lower(params, batch).compile()
  return time.perf_counter() - t0


def time_init(scan: bool = True) -> dict:
  config = rwkv7.preset("0.4B", scan_layers=scan)
  t0 = time.perf_counter()
  params = rwkv7.init_params(config, jax.random.key(0))
  jax.block_until_ready(params)
  return {"preset": "0.4B", "scan_layers": scan, "seconds": time.perf_counter() - t0,
          "parameters": sum(x.size for x in jax.tree.leaves(params))}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--layers", type=int, nargs="+", default=[4, 12, 24])
  ap.add_argument("--tokens", type=int, default=64)
  ap.add_argument("--no-init", action="store_true", help="skip the 0.4B init timing")
  ap.add_argument("--only-init", action="store_true", help="time only the 0.4B init (prints, writes no JSON)")
  args = ap.parse_args(argv)

  if args.only_init:
    print(f"init_params 0.4B scanned: {time_init()['seconds']:.1f} s (compile + run)")
    return
  rows = []
  for layers in args.layers:
    row = {"layers": layers}
    for scan in (False, True):
      config = rwkv7.preset("0.4B", n_layer=layers, scan_layers=scan)
      row["scanned_s" if scan else "unrolled_s"] = compile_seconds(config, args.tokens)
    rows.append(row)
    print(f"{layers:3d} layers: unrolled {row['unrolled_s']:7.2f} s   scanned {row['scanned_s']:7.2f} s", flush=True)
  base = rows[0]
  for row in rows:
    row["unrolled_vs_first"] = row["unrolled_s"] / base["unrolled_s"]
    row["scanned_vs_first"] = row["scanned_s"] / base["scanned_s"]

  init = None if args.no_init else [time_init(scan=True), time_init(scan=False)]

  print(f"\ncompile of value_and_grad, 0.4B width, batch 1 × {args.tokens} tokens ({jax.default_backend()})")
  print(f"{'layers':>6} | {'unrolled s':>10} | {'scanned s':>9} | {'unrolled ×':>10} | {'scanned ×':>9}")
  for row in rows:
    print(f"{row['layers']:>6} | {row['unrolled_s']:>10.2f} | {row['scanned_s']:>9.2f} | "
          f"{row['unrolled_vs_first']:>10.2f} | {row['scanned_vs_first']:>9.2f}")
  print(f"(× = compile time relative to {base['layers']} layers of the same layout)")
  for row in init or []:
    print(f"init_params 0.4B ({row['parameters'] / 1e6:.0f} M parameters, "
          f"{'scanned' if row['scan_layers'] else 'unrolled'}): {row['seconds']:.1f} s (compile + run)")
  path = write_result({"benchmark": "compile", "machine": machine(), "tokens": args.tokens, "rows": rows,
                       "init_0.4b": init}, "compile")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
