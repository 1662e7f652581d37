"""What every benchmark records: the machine it ran on, and where its JSON goes."""

import json
import os
import platform
import time

import jax


def machine() -> dict:
  """Backend, device kind, CPU count, OS, jax version and the 1-minute load average at the end of the
  run (other jobs sharing the machine slow every number down), for the result JSON."""
  return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "cpus": os.cpu_count(),
          "platform": platform.platform(), "jax": jax.__version__, "load_average_1m": os.getloadavg()[0]}


def write_result(result: dict, stem: str, out: str | None = None) -> str:
  """Writes benchmarks/results/<stem>_<backend>.json (or `out`) and returns the path."""
  out = out or os.path.join(os.path.dirname(__file__), "results", f"{stem}_{jax.default_backend()}.json")
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  return out


def best_of(fn, repeats: int) -> float:
  """The fastest of `repeats` timed calls of fn(), in seconds (the least disturbed by a shared machine)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)
