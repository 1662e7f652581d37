"""The training step of train.py: throughput of configs/demo.py on this machine, and the memory per device
of the paper recipes compiled for 8 simulated devices.

1. Throughput: the demo config's jitted train step (the one train.py runs) on batches from its real
   pipeline, after 3 warm-up steps, timed over --steps steps; tokens/s counts real (non-padding)
   positions; MFU is the model FLOPs of `training/flops.py` per second against the fp32 matmul
   throughput measured in the same run (`flops.measure_cpu_matmul_flops`) on a CPU, the device's
   dense bf16 peak elsewhere.
2. Memory: `trainer.compile_only` (as `train.py --compile_only`) for 0.4B / 1.5B phase II on fsdp = 8 and
   0.4B phase I on data = 8, each in a subprocess with 8 simulated CPU devices; XLA's memory analysis
   per device and the model FLOPs per step. Nothing is executed.

Prints a table and writes benchmarks/results/train_step_<backend>.json.

  python benchmarks/train_step.py [--steps 20] [--no-memory]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

from common import machine, write_result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = [
    ("modrwkv_0.4b_siglip2_phase2.py", ["mesh.data=1", "mesh.fsdp=8", "train.grad_accum=8"]),
    ("modrwkv_1.5b_siglip2_phase2.py", ["mesh.data=1", "mesh.fsdp=8", "train.grad_accum=8"]),
    ("modrwkv_0.4b_siglip2_phase1.py", ["mesh.data=8", "train.grad_accum=4"]),
]
MEMORY_SCRIPT = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
from modrwkv_jax.training import config as config_lib, trainer
c = config_lib.apply_overrides(config_lib.load_config_file(sys.argv[1]), sys.argv[2:])
print("RESULT " + json.dumps(trainer.compile_only(c)))
"""


def throughput(steps: int) -> dict:
  from modrwkv_jax.models import modrwkv
  from modrwkv_jax.training import config as config_lib, data as data_lib, flops, trainer
  config = config_lib.load_config_file(os.path.join(ROOT, "configs", "demo.py"))
  config.data.cache_dir = os.path.join(ROOT, "build", "data")
  mesh = trainer.make_mesh(config)
  setup = trainer.Setup(config, mesh)
  state = setup.init_state(modrwkv.init_params(setup.model, jax.random.key(0), mesh=mesh))
  step, _ = setup.jit_step()
  data_lib.prepare(config)
  it, _ = data_lib.make_iterators(config, setup.model, mesh, seed=0)
  batches = [next(it) for _ in range(steps + 3)]
  for local in batches[:3]:  # compile every length bucket first
    state, m = step(state, data_lib.global_batch(local, mesh))
  jax.block_until_ready(m)
  parts = trainer._trainable_parts(setup, setup.model)
  t0, tokens, model_flops = time.perf_counter(), 0, 0.0
  for local in batches[3:]:
    batch = data_lib.global_batch(local, mesh)
    state, m = step(state, batch)
    tokens += int(local["mask"].sum())
    model_flops += flops.step_flops(setup.model, trainer._batch_shape(batch, setup.model), parts)["total"]
  jax.block_until_ready(m)
  seconds = time.perf_counter() - t0
  peak = flops.peak_flops_per_device(jax.devices()[0]) or flops.measure_cpu_matmul_flops()
  return {"config": "configs/demo.py", "steps": steps, "batch_size": config.train.batch_size,
          "seconds_per_step": seconds / steps, "tokens_per_sec": tokens / seconds,
          "model_flops_per_sec": model_flops / seconds, "peak_flops_per_device": peak,
          "peak_is_measured_cpu_matmul": jax.devices()[0].platform == "cpu",
          "mfu": model_flops / seconds / (peak * jax.device_count())}


def memory() -> list:
  rows = []
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  for name, overrides in RECIPES:
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, os.path.join(ROOT, "configs", name), *overrides],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
      raise RuntimeError(f"{name}: {proc.stderr[-3000:]}")
    rows.append({"config": name, "overrides": overrides, **json.loads(line[0][len("RESULT "):])})
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--no-memory", action="store_true")
  args = ap.parse_args()
  result = {"machine": machine(), "throughput": throughput(args.steps)}
  t = result["throughput"]
  print(f"demo train step: {t['seconds_per_step']:.3f} s/step, {t['tokens_per_sec']:.0f} tokens/s, "
        f"MFU {t['mfu']:.3f} (peak {t['peak_flops_per_device']:.3g} FLOP/s per device"
        f"{', measured fp32 matmul' if t['peak_is_measured_cpu_matmul'] else ''})")
  if not args.no_memory:
    result["memory"] = memory()
    print(f"{'config':<34s} {'mesh':<34s} {'compile s':>9s} {'peak GiB/device':>16s} {'model FLOPs/step':>17s}")
    for r in result["memory"]:
      print(f"{r['config']:<34s} {str(r['mesh']):<34s} {r['compile_seconds']:9.1f} "
            f"{r['peak_bytes_per_device'] / 2 ** 30:16.2f} {r['model_flops_per_step']:17.3e}")
  print("wrote", write_result(result, "train_step"))


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  main()
