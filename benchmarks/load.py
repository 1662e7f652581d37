"""Checkpoint loading speed: `rwkv7.load_pth` against reading the same bytes from disk.

Writes a random RWKV-7 checkpoint with the 0.4B shapes (official RWKV-LM names, bf16 like the
released files, random values: loading never looks at them) to a temporary folder, then times

  raw read     reading every byte of the file (np.fromfile), the floor for any loader;
  load_pth     our torch-free reader: parse, validate, convert bf16 -> float32, build the params,
               in both layouts (unrolled "blocks_i" and stacked "blocks" for scanned layers).

Both run on a warm page cache (the file was just written and read once), so the comparison is of
the loader's own work, not of the disk. Nothing is randomly initialised (the loader builds params
straight from the file). Prints a table and writes benchmarks/results/load_<backend>.json.

  python benchmarks/load.py [--preset 0.4B] [--dtype bfloat16] [--repeats 3]
"""

import argparse
import os
import tempfile

import jax
import ml_dtypes
import numpy as np

from common import best_of, machine, write_result
from modrwkv_jax.models import rwkv7
from modrwkv_jax.tensor_files import write_pth


def random_checkpoint(config: rwkv7.RWKV7Config, dtype) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  sd = {name: (0.02 * rng.standard_normal(shape, np.float32)).astype(dtype)
        for name, _, shape, _ in rwkv7.checkpoint_layout(config)}
  for name, shape in (("blocks.0.att.v0", (1, 1, config.n_embd)), ("blocks.0.att.v1", (config.n_embd, config.dim_v)),
                      ("blocks.0.att.v2", (config.dim_v, config.n_embd))):
    sd[name] = np.zeros(shape, dtype)
  return sd


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="0.4B", choices=sorted(rwkv7.PRESETS))
  ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args(argv)
  dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}[args.dtype]
  config = rwkv7.preset(args.preset)

  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.pth")
    sd = random_checkpoint(config, dtype)
    write_pth(sd, path)
    del sd
    size = os.path.getsize(path)
    np.fromfile(path, np.uint8)  # warm the page cache

    raw = best_of(lambda: np.fromfile(path, np.uint8), args.repeats)

    def load(scan):
      cfg, params = rwkv7.load_pth(path, scan_layers=scan)
      jax.block_until_ready(params)

    unrolled = best_of(lambda: load(False), args.repeats)
    scanned = best_of(lambda: load(True), args.repeats)

  result = {"benchmark": "load", "machine": machine(), "preset": args.preset, "file_dtype": args.dtype,
            "file_bytes": size, "param_dtype": "float32", "raw_read_s": raw, "load_pth_unrolled_s": unrolled,
            "load_pth_scanned_s": scanned, "unrolled_vs_raw": unrolled / raw, "scanned_vs_raw": scanned / raw,
            "page_cache": "warm"}
  print(f"\nload of a {args.preset} RWKV-7 .pth ({size / 2**20:.0f} MiB, {args.dtype}) -> float32 params "
        f"({jax.default_backend()}, warm page cache, best of {args.repeats})")
  print(f"{'what':>22} | {'seconds':>8} | {'× raw read':>10} | {'GiB/s':>6}")
  for name, t in (("raw read (np.fromfile)", raw), ("load_pth unrolled", unrolled), ("load_pth scanned", scanned)):
    print(f"{name:>22} | {t:>8.2f} | {t / raw:>10.2f} | {size / 2**30 / t:>6.2f}")
  print(f"wrote {write_result(result, 'load')}")


if __name__ == "__main__":
  main()
