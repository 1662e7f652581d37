"""What every benchmark records: the machine it ran on, and where its JSON goes.

Results: the committed files under benchmarks/results/ (`<stem>_<backend>.json`, `wkv7-<device>.json`,
`efficiency-<device>.json`, ...) are the blessed numbers the README quotes. A benchmark never replaces
one by default: when the blessed file already exists, the run writes
`build/benchmarks/<name>-<YYYYmmdd-HHMMSS>.<ext>` instead (build/ is ignored by git) and says so.
`--overwrite` (benchmarks that take `add_output_args`) or `BENCH_OVERWRITE=1` in the environment (every
benchmark; `make bench BENCH_OVERWRITE=1`) writes the blessed file; `--out PATH` writes exactly PATH.
"""

import argparse
import json
import os
import platform
import statistics
import time

import jax

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RUNS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "benchmarks")
_STAMP = time.strftime("%Y%m%d-%H%M%S")  # one per process: a run's JSON and PNG share it


def machine() -> dict:
  """Backend, device kind, CPU count, OS, jax version and the 1-minute load average at the end of the
  run (other jobs sharing the machine slow every number down), for the result JSON."""
  return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "cpus": os.cpu_count(),
          "platform": platform.platform(), "jax": jax.__version__, "load_average_1m": os.getloadavg()[0]}


def device_tag() -> str:
  """The device part of a result name: "cpu", "nvidia_h200", "tpu_v5_lite", ..."""
  return jax.devices()[0].device_kind.replace(" ", "_").lower()


def add_output_args(parser: argparse.ArgumentParser) -> None:
  """--out PATH and --overwrite, the two ways to say where a benchmark's result goes (see module docstring)."""
  parser.add_argument("--out", default=None, help="write the JSON here (other files next to it)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the committed result in benchmarks/results/ (also BENCH_OVERWRITE=1)")


def overwrite_requested(overwrite: bool = False) -> bool:
  return overwrite or os.environ.get("BENCH_OVERWRITE", "") not in ("", "0", "false", "False", "no")


def output_path(name: str, out: str | None = None, overwrite: bool = False) -> str:
  """Where to write the result file `name` (e.g. "efficiency-cpu.json"): `out` if given; the blessed
  benchmarks/results/<name> if asked to overwrite or if it does not exist yet; otherwise a new
  build/benchmarks/<name stem>-<timestamp><ext>, so a committed result is never replaced by accident."""
  if out:
    return out
  blessed = os.path.join(RESULTS, name)
  if overwrite_requested(overwrite) or not os.path.exists(blessed):
    return blessed
  os.makedirs(RUNS, exist_ok=True)
  stem, ext = os.path.splitext(name)
  return os.path.join(RUNS, f"{stem}-{_STAMP}{ext}")


def sibling_path(json_path: str, ext: str) -> str:
  """The path of a companion file (a plot) next to a result: same name, other extension."""
  return os.path.splitext(json_path)[0] + ext


def write_json(result: dict, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  return path


def write_result(result: dict, stem: str, out: str | None = None, overwrite: bool = False) -> str:
  """Writes the result for benchmarks/results/<stem>_<backend>.json under the policy of `output_path`
  and returns the path written."""
  path = write_json(result, output_path(f"{stem}_{jax.default_backend()}.json", out, overwrite))
  if not path.startswith(RESULTS) and not out:
    print(f"(kept the committed benchmarks/results/{stem}_{jax.default_backend()}.json; "
          "--overwrite or BENCH_OVERWRITE=1 replaces it)")
  return path


def best_of(fn, repeats: int) -> float:
  """The fastest of `repeats` timed calls of fn(), in seconds (the least disturbed by a shared machine)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def timed_runs(fn, *, min_runs: int = 2, max_runs: int = 5, max_seconds: float = 10.0,
               warmup_unless_over: float = 5.0, first: float | None = None) -> list[float]:
  """Seconds of repeated calls of fn() (which must block until its result is ready).

  One untimed warm-up call first, unless that call alone takes more than `warmup_unless_over` seconds
  (then one-off costs are noise and it counts as the first run); then runs until `max_runs`, or until
  `min_runs` are done and `max_seconds` spent. Report the median: a shared machine slows runs at random.
  `first`: the seconds of a warm-up call the caller already made (then none is made here).
  """
  if first is None:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
  times = [first] if first > warmup_unless_over else []
  spent = sum(times)
  while len(times) < max_runs and (len(times) < min_runs or spent < max_seconds):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
    spent += times[-1]
  return times


def median(xs) -> float:
  return float(statistics.median(xs))
