"""What a run reports: a metrics file, TensorBoard scalars, a progress bar, and throughput.

    MetricsWriter  one JSON object per logged step in workdir/metrics.jsonl, {"step": s, "loss": ...},
                   flushed at every write, plus TensorBoard scalar events under workdir/tensorboard/
                   (tensorboardX). On resume from the checkpoint of step s, rows with step > s (written
                   after that checkpoint) are dropped first, in the file and in TensorBoard.
    read_metrics   the rows back, as a list of dicts.
    Progress       a tqdm bar over the steps showing loss, tokens/s and tqdm's ETA (process 0 only).
    Throughput     tokens/s and seconds per step between two logged steps, from wall-clock deltas.

JSON has no NaN or infinity: a non-finite value is written as null, and the row lists its names under
"nonfinite" ({"step": 7, "loss": null, "nonfinite": ["loss"]}), so a diverged step is visible and
the file stays standard JSON. TensorBoard gets the value as it is (it plots NaN).

In a multi-host run only process 0 writes: `MetricsWriter(..., enabled=jax.process_index() == 0)`;
a disabled writer creates no file and every call is a no-op.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
RESERVED = ("step", "nonfinite")  # keys a row sets itself


def _scalar(name: str, value) -> float | int:
  """A Python int or float from an int, float, bool, or a numpy / jax scalar (one element)."""
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(f"metrics: {name!r} has shape {array.shape}; a metric is one number")
  item = array.reshape(()).item()
  if isinstance(item, bool):
    return int(item)
  if isinstance(item, (int, float)):
    return item
  raise ValueError(f"metrics: {name!r} is {value!r} of type {type(value).__name__}; a metric is a number")


def _complete_lines(data: bytes) -> bytes:
  """`data` cut after its last newline: a row a killed run left half-written is dropped."""
  end = data.rfind(b"\n")
  return data[:end + 1]


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """The rows of a metrics.jsonl, in file order. An unfinished last line (a run killed while writing
  it) is skipped; any other line that is not a JSON object raises ValueError naming the line."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    data = _complete_lines(f.read())
  rows = []
  for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{number}: not a JSON object ({e.msg}): {line[:80]!r}") from e
    if not isinstance(row, dict) or "step" not in row:
      raise ValueError(f"{path}:{number}: expected an object with a 'step'; got {line[:80]!r}")
    rows.append(row)
  return rows


def _truncate_after(path: str, step: int) -> None:
  """Rewrites `path` keeping only rows with step <= `step` (temp file, then os.replace: atomic)."""
  kept = [row for row in read_metrics(path) if row["step"] <= step]
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for row in kept:
      f.write(json.dumps(row, allow_nan=False) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class MetricsWriter:
  """Appends metric rows to workdir/metrics.jsonl and TensorBoard scalars to workdir/tensorboard/.

  Args:
    workdir: the run's folder (created if missing).
    enabled: False (processes other than 0) makes every call a no-op and touches no file.
    tensorboard: also write TensorBoard event files.
    resume_step: the step of the checkpoint being resumed: rows with step > resume_step are dropped
      from metrics.jsonl (atomically) and TensorBoard hides its events after it (purge_step).
      None: a fresh run, or one that appends to what is there.
  """

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True,
               resume_step: int | None = None):
    self.enabled = enabled
    self.path = os.path.join(os.fspath(workdir), METRICS_FILE)
    self._file = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(os.fspath(workdir), exist_ok=True)
    if os.path.exists(self.path):
      if resume_step is not None:
        _truncate_after(self.path, resume_step)
      else:  # drop a half-written last row, so the next row starts on a line of its own
        with open(self.path, "rb+") as f:
          f.truncate(len(_complete_lines(f.read())))
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      purge = None if resume_step is None else resume_step + 1
      self._tb = SummaryWriter(logdir=os.path.join(os.fspath(workdir), TENSORBOARD_DIR), purge_step=purge)

  def write(self, step: int, metrics: Mapping[str, float | int]) -> None:
    """Appends {"step": step, **metrics} (plus "nonfinite": [names] when a value is NaN or ±inf, which
    is written as null) and flushes it to the OS: a run killed afterwards keeps the row. Values are
    numbers: Python, numpy or jax scalars."""
    if not self.enabled:
      return
    row: dict = {"step": int(step)}
    nonfinite = []
    values = {}
    for name, value in metrics.items():
      if name in RESERVED:
        raise ValueError(f"metrics: {name!r} is set by the writer; rename the metric")
      value = _scalar(name, value)
      values[name] = value
      if isinstance(value, float) and not math.isfinite(value):
        nonfinite.append(name)
        value = None
      row[name] = value
    if nonfinite:
      row["nonfinite"] = nonfinite
    self._file.write(json.dumps(row, allow_nan=False) + "\n")
    self._file.flush()
    if self._tb is not None:
      for name, value in values.items():
        self._tb.add_scalar(name, value, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class Progress:
  """A tqdm bar over `total` steps: loss, tokens/s and tqdm's ETA (from the steps done in this run).

  Args:
    total: the run's last step.
    initial: the step a resumed run starts from (the bar starts there; the ETA counts only new steps).
    disable: no bar (e.g. config.train.progress = False).
    process_index: the bar shows on process 0 only; None asks jax.
  """

  def __init__(self, total: int, *, initial: int = 0, disable: bool = False, process_index: int | None = None,
               desc: str = "train"):
    if process_index is None:
      process_index = jax.process_index()
    self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                     disable=disable or process_index != 0)

  @property
  def step(self) -> int:
    return self._bar.n

  def update(self, step: int, *, loss: float | None = None, tokens_per_sec: float | None = None, **extra) -> None:
    """Moves the bar to `step` (an absolute step, not an increment) and shows the given values."""
    if self._bar.disable:
      return
    postfix = {}
    if loss is not None:
      postfix["loss"] = f"{float(loss):.4f}"
    if tokens_per_sec is not None:
      postfix["tok/s"] = f"{float(tokens_per_sec):,.0f}"
    postfix.update({k: f"{float(v):.4g}" for k, v in extra.items()})
    if postfix:
      self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(step - self._bar.n)

  def close(self) -> None:
    self._bar.close()

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class Throughput:
  """Tokens/s and seconds per step over the interval between two `mark`s (wall clock).

  The trainer marks logged steps after their results are on the host (so the device work is done).
  The first step's time is mostly compilation: call `reset(step, tokens)` once it is done, so the
  first interval starts after it; likewise after a pause that is no training (evaluation, a
  checkpoint). `tokens` is the run's cumulative count of trained tokens.

      throughput = Throughput()
      ... first step ...; throughput.reset(step, tokens)
      ... at a logged step: rates = throughput.mark(step, tokens)  # {"step_time", "tokens_per_sec"}
  """

  def __init__(self, clock: Callable[[], float] = time.perf_counter):
    self._clock = clock
    self._start: tuple[int, float, float] | None = None  # (step, tokens, time)

  def reset(self, step: int, tokens: float = 0) -> None:
    """Starts a new interval now, at `step` with `tokens` trained so far."""
    self._start = (step, tokens, self._clock())

  def mark(self, step: int, tokens: float) -> dict[str, float] | None:
    """The rates since the last mark or reset, and a new interval from here. None on the first call
    (no interval yet) or when no step or no time has passed."""
    now = self._clock()
    start, self._start = self._start, (step, tokens, now)
    if start is None:
      return None
    steps, seconds = step - start[0], now - start[2]
    if steps <= 0 or seconds <= 0:
      return None
    return {"step_time": seconds / steps, "tokens_per_sec": (tokens - start[1]) / seconds,
            "steps_per_sec": steps / seconds}
