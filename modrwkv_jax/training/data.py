"""The trainer's data: offline data built on first use, an endless checkpointable iterator over epochs of
the Grain pipeline (each host reads its own shard), and global batches on the mesh.

Iterator state is `{"epoch": e, "next_index": i}`: the pipeline is random access and deterministic in
(seed, epoch), every host yields the same number of batches, so the state is the same on every host and
restoring it (in a new process, on another number of devices) continues with exactly the next batch.
With `data.packing` the same holds: each packing window is planned identically on every host, and i
indexes the windows' batch slots (data/pipeline.py, "Sequence packing"). A `data.curriculum` adds the
phase to the state (CurriculumIterator).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from modrwkv_jax import sharding
from modrwkv_jax.data import pipeline as pipe
from modrwkv_jax.training import config as config_lib
from modrwkv_jax.training import step as step_lib

log = logging.getLogger(__name__)

# data.builder -> (sub-folder of data.cache_dir, modrwkv_jax.data.demo.build keyword arguments)
BUILDERS = {
    "tiny": ("tiny", dict(shapes=(48, 16, 16), spoken=(24, 8, 8), parts=("shapes", "spoken", "series"))),
    "demo": ("demo", dict(shapes=(2000, 200, 200), spoken=(300, 50, 50),
                          parts=("shapes", "digits", "spoken", "series"))),
}


@contextlib.contextmanager
def _file_lock(path: str):
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare(config) -> None:
  """Builds the offline data of `data.builder` into data.cache_dir/<name> unless it is there (a file lock
  makes concurrent processes on one machine build it once)."""
  name = config.data.builder
  if not name:
    return
  if name not in BUILDERS:
    raise ValueError(f"data.builder must be one of {sorted(BUILDERS)} or None; got {name!r}")
  folder, kwargs = BUILDERS[name]
  out = os.path.join(config.data.cache_dir, folder)
  done = os.path.join(out, ".complete")
  if os.path.exists(done):
    return
  with _file_lock(os.path.join(config.data.cache_dir, f".{folder}.lock")):
    if os.path.exists(done):
      return
    from modrwkv_jax.data import demo
    t0 = time.perf_counter()
    print(f"building the offline {name!r} data into {out} (once) ...", flush=True)
    demo.build(out, 0, **kwargs)
    with open(done, "w") as f:
      f.write("ok\n")
    print(f"built {out} in {time.perf_counter() - t0:.0f}s", flush=True)


class EpochIterator:
  """Batches of `split` epoch after epoch (epoch e shuffled with (seed, e)); numpy dicts for this host."""

  def __init__(self, pipeline_config: pipe.PipelineConfig, split: str, seed: int, *, repeat: bool = True):
    self.config, self.split, self.seed, self.repeat = pipeline_config, split, seed, repeat
    self.epoch, self._pipeline, self._it = 0, None, None
    self.stats: dict[str, int] = {}

  def _open(self, epoch: int, next_index: int = 0):
    self.epoch = epoch
    self._pipeline = pipe.make_pipeline(self.config, self.split, seed=self.seed, epoch=epoch)
    self._it = iter(self._pipeline)
    if next_index:
      self._it.set_state({"next_index": int(next_index)})

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._it is None:
      self._open(self.epoch)
    try:
      return next(self._it)
    except StopIteration:
      self._merge_stats()
      if not self.repeat:
        raise
      self._open(self.epoch + 1)
      return next(self._it)

  def _merge_stats(self):
    if self._pipeline is not None:
      s = self._pipeline.stats
      self.stats["skipped_total"] = self.stats.get("skipped_total", 0) + s["skipped_total"]

  @property
  def skipped(self) -> int:
    """Bad records skipped so far by this process (this run)."""
    current = self._pipeline.stats["skipped_total"] if self._pipeline is not None else 0
    return self.stats.get("skipped_total", 0) + current

  def get_state(self) -> dict:
    index = self._it.get_state()["next_index"] if self._it is not None else 0
    return {"epoch": int(self.epoch), "next_index": int(index)}

  def set_state(self, state: Mapping) -> None:
    self._open(int(state["epoch"]), int(state["next_index"]))


class CurriculumIterator:
  """data.curriculum's phases, then data.sources: the iterator of the phase that training step
  `step + 1` belongs to (phase k covers the steps after the first n_0 + ... + n_{k-1}, for n_k steps).

  State `{"phase": k, "epoch": e, "next_index": i}`: the phase's own EpochIterator state (each phase
  starts at its epoch 0). A state without "phase" (a run that had no curriculum) continues the phase
  of the step it resumes at, from that state.
  """

  def __init__(self, phases: list[tuple[int | None, pipe.PipelineConfig]], split: str, seed: int,
               start_step: int = 0):
    self.ends = list(np.cumsum([n for n, _ in phases[:-1]])) + [None]  # the last phase never ends
    self.iterators = [EpochIterator(c, split, seed) for _, c in phases]  # each opens on its first batch
    self.step = int(start_step)

  def _phase_of(self, step: int) -> int:
    return next(k for k, end in enumerate(self.ends) if end is None or step < end)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self.iterators[self._phase_of(self.step)])
    self.step += 1
    return batch

  @property
  def skipped(self) -> int:
    return sum(it.skipped for it in self.iterators)

  def get_state(self) -> dict:
    phase = self._phase_of(self.step)  # the phase of the next batch (epoch 0, index 0 before its first)
    return {"phase": phase, **self.iterators[phase].get_state()}

  def set_state(self, state: Mapping) -> None:
    phase = int(state.get("phase", self._phase_of(self.step)))
    if not 0 <= phase < len(self.iterators):
      raise ValueError(f"data iterator state {dict(state)!r}: phase {phase} does not exist; this config has "
                       f"{len(self.iterators) - 1} data.curriculum phase(s)")
    self.iterators[phase].set_state(state)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, sharding.logical_to_mesh_axes(("batch",)))


def global_batch(local: Mapping, mesh) -> dict:
  """This host's rows -> global jax arrays sharded over the batch axes (`make_array_from_process_local_data`)."""
  shard = batch_sharding(mesh)
  out = {}
  arrays = step_lib.model_batch(local)  # includes segment_ids of packed rows
  for k, v in arrays.items():
    v = np.asarray(v)
    spec = P(*shard.spec, *([None] * (v.ndim - 1)))
    out[k] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), v)
  return out


def check_batch(config, mesh) -> tuple[int, int]:
  """(per-host batch, micro-batch) sizes; raises before compiling when the batch does not divide or the
  data settings cannot work (packing with a forecasting head)."""
  config_lib.check_packing(config)
  B, A = config.train.batch_size, config.train.grad_accum
  procs = jax.process_count()
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if A < 1 or B % A:
    raise ValueError(f"train.batch_size={B} is not divisible by train.grad_accum={A}")
  if (B // A) % shards:
    raise ValueError(f"the micro-batch train.batch_size / train.grad_accum = {B // A} is not divisible by the batch "
                     f"shards mesh.data × mesh.fsdp = {mesh.shape['data']} × {mesh.shape['fsdp']} = {shards}")
  if B % procs:
    raise ValueError(f"train.batch_size={B} is not divisible by the {procs} processes")
  return B // procs, B // A


def make_iterators(config, model, mesh, *, seed: int, start_step: int = 0):
  """(train iterator, eval pipeline config or None) for this host; with a data.curriculum the train
  iterator is a CurriculumIterator positioned at `start_step` (the step the run starts from)."""
  per_host, _ = check_batch(config, mesh)
  train_cfg = config_lib.pipeline_config(config, model, batch_size=per_host)
  phases = config_lib.curriculum(config)
  if phases:
    configs = [(n, config_lib.pipeline_config(config, model, batch_size=per_host, sources=sources,
                                              where=f"data.curriculum[{k}].sources"))
               for k, (n, sources) in enumerate(phases)]
    train = CurriculumIterator(configs + [(None, train_cfg)], config.data.train_split, seed, start_step)
  else:
    train = EpochIterator(train_cfg, config.data.train_split, seed)
  eval_cfg = None
  if config.train.eval_every:
    eval_cfg = config_lib.pipeline_config(config, model, split_sources="eval", batch_size=per_host)
    eval_cfg = eval_cfg.replace(shuffle=False)
  return train, eval_cfg
