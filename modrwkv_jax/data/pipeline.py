"""Grain input pipelines: sources -> shuffled, per-host records -> length-bucketed numpy batches.

    pipeline = make_pipeline(config, "train", seed=0, epoch=0, process_index=0, process_count=1)
    it = iter(pipeline)                      # a grain DatasetIterator
    batch = next(it)                         # dict of numpy arrays, schema below
    manager.save(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it)))
    # `it` now yields exactly the batch that followed the checkpoint (also in a new process).

How a batch is made (all deterministic in (seed, epoch), random access, so the iterator state is just
the next batch index):
  1. every source is a grain MapDataset; with `shuffle`, each is shuffled by a seed derived from
     (seed, epoch, source index); several sources are mixed by weight (`grain.MapDataset.mix`: the epoch
     ends when the first component runs out, or after `mixture_length` records with components repeated
     and reshuffled per pass);
  2. host p of P takes records p, p + P, ... (`ds[p::P]`); every host pads to ceil(N / P) slots so all
     hosts yield the same number of batches, the missing slot being an empty row;
  3. length bucketing: slots are grouped in windows of `bucket_window` batches; within a window the
     records are sorted by their exact length (read from headers, `transforms.record_length`), cut into
     batches, and the batch order within the window is shuffled;
  4. each batch decodes and tokenizes its records (`transforms.prepare_record`) and pads them
     (`transforms.collate`); the batch index dataset becomes an IterDataset with `read_threads`
     threads (prefetching `prefetch` batches) and optionally `worker_count` processes.
Batches always have `batch_size` rows: skipped records and the tail of the epoch are empty rows
(mask all False, labels all −100, counts 0), so shapes stay static and nothing trains on them.

Batch schema (numpy; B = batch_size, T = padded length, a multiple of pad_multiple or a length bucket):
  tokens int32[B, T]   World-tokenizer ids; 0 at modality positions and padding
  labels int32[B, T]   target of position t = tokens[t+1] if t+1 is in an assistant turn, else −100
  mask   bool[B, T]    True at real positions (text or modality)
  per enabled modality m ("image", "audio", "series"), present even when the batch has no such item:
  {m}_pos int32[B, T]  at a position holding token j of item i of modality m: i * L_m + j (L_m = most
                       tokens of one item of m in this batch, >= 1); −1 elsewhere
  {m}_count int32[B]   items per example
  image  float32[B, I, H, W, 3] (SigLIP/CLIP), or for SigLIP2 NaFlex float32[B, I, N, p·p·3] with
         image_mask bool[B, I, N] and image_spatial_shapes int32[B, I, 2]; I = max_items or the most
         images of an example in the batch (>= 1)
  audio  float32[B, A, F, n_mels] + audio_mask bool[B, A, F] (whisper), or float32[B, A, S] + audio_mask
         bool[B, A, S] (wav2vec2); A like I
  series float32[B, S, L] (or [B, S, L, C]) + series_mask bool[B, S, L], left-padded;
  target float32[B, S, horizon] (or [..., C]) + target_mask bool[B, S, horizon], right-padded (zeros and
         False for items without a target)

Bad records: on_error="raise" raises sources.RecordError (file, record id, field); "skip" turns the
record into an empty row and counts it by reason in `pipeline.stats` — never a silent drop. Every
per-record failure is a RecordError, raised where it happens, with one of these reasons:
  manifest / record: bad_json, bad_field, missing_field, path_outside_root (a media path that leaves the
    data root, see data/sources.py), empty_conversation and the other conversation reasons,
    modality_disabled, too_many_items, too_long;
  images: missing_image, corrupt_image (unreadable, truncated), image_too_large (header over max_pixels,
    PIL decompression bombs, resize targets over max_pixels), bad_aspect_ratio (shortest-edge resize of
    an extreme aspect ratio), unsupported_image_mode (float images outside [0, 1], ...), bad_image;
  audio: missing_audio, corrupt_audio, truncated_audio (a WAV cut short), bad_sampling_rate,
    audio_too_long;
  series: corrupt_series, bad_series_shape, nan_in_series; any modality: empty_item.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
from collections.abc import Mapping, Sequence

import grain
import numpy as np

from modrwkv_jax.data import sources as sources_lib
from modrwkv_jax.data.sources import RecordError
from modrwkv_jax.data.transforms import (AudioConfig, ImageConfig, SeriesConfig, collate, padded_length,
                                         prepare_record, record_length)

log = logging.getLogger(__name__)

__all__ = ["SourceConfig", "PipelineConfig", "Pipeline", "make_pipeline", "ImageConfig", "AudioConfig",
           "SeriesConfig"]


@dataclasses.dataclass(frozen=True)
class SourceConfig:
  """One data source.

  kind: "llava" | "audio" | "series" | "tfds" (data/sources.py).
  path: the file; "{split}" is replaced by the split name ("shapes_vqa/{split}.json"). Series: one
    file split by time; tfds: a dataset name or a prepared builder directory.
  weight: mixing weight among the pipeline's sources.
  options: keyword arguments of the source class (root=..., context=/horizon=/stride=, data_dir=, ...).
  """
  kind: str
  path: str
  weight: float = 1.0
  options: Mapping = dataclasses.field(default_factory=dict)

  def open(self, split: str):
    return sources_lib.open_source(self.kind, self.path, split, **dict(self.options))


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Everything a pipeline needs. Fields:

  sources: SourceConfig(s), mixed by weight.
  batch_size: rows per batch on this host.
  image / audio / series: the modality settings (transforms.ImageConfig, ...); None disables the
    modality (its keys are absent and records holding it are bad records).
  layout: "prefix" (all modality tokens first) or "placeholder" (at "<image>"/"<audio>"/"<series>").
  max_length: most positions per sequence (None: no limit); longer records are bad ("too_long") unless
    `truncate`, which cuts the text end (never modality tokens) and counts it in stats["truncated"].
  pad_multiple: T is a multiple of this (the WKV chunk size, 16); length_buckets: optional fixed T
    values (multiples of pad_multiple) to bound the number of shapes (each new T recompiles).
  bucket_window: batches per length-sorting window (1: no bucketing).
  shuffle: shuffle records (seeded by seed and epoch); False keeps source order.
  mixture_length: records per epoch of a mixture (components repeat); None: grain's rule.
  on_error: "raise" or "skip" (module docstring).
  read_threads, prefetch: batch-making threads and batches buffered ahead.
  worker_count: > 0 makes batches in that many processes (grain mp_prefetch); worker_buffer_size per
    worker.
  """
  sources: Sequence[SourceConfig]
  batch_size: int = 8
  image: ImageConfig | None = None
  audio: AudioConfig | None = None
  series: SeriesConfig | None = None
  layout: str = "prefix"
  max_length: int | None = 2048
  truncate: bool = False
  pad_multiple: int = 16
  length_buckets: Sequence[int] = ()
  bucket_window: int = 16
  shuffle: bool = True
  mixture_length: int | None = None
  on_error: str = "raise"
  read_threads: int = 2
  prefetch: int = 2
  worker_count: int = 0
  worker_buffer_size: int = 2

  def __post_init__(self):
    if isinstance(self.sources, SourceConfig):
      object.__setattr__(self, "sources", (self.sources,))
    object.__setattr__(self, "sources", tuple(self.sources))
    object.__setattr__(self, "length_buckets", tuple(sorted(self.length_buckets)))
    if not self.sources:
      raise ValueError("PipelineConfig.sources is empty")
    if self.layout not in ("prefix", "placeholder"):
      raise ValueError(f"PipelineConfig.layout must be 'prefix' or 'placeholder', got {self.layout!r}")
    if self.on_error not in ("raise", "skip"):
      raise ValueError(f"PipelineConfig.on_error must be 'raise' or 'skip', got {self.on_error!r}")
    for name in ("batch_size", "pad_multiple", "bucket_window", "read_threads"):
      if getattr(self, name) < 1:
        raise ValueError(f"PipelineConfig.{name} must be positive, got {getattr(self, name)}")
    if self.prefetch < 0 or self.worker_count < 0:
      raise ValueError(f"PipelineConfig: prefetch={self.prefetch} and worker_count={self.worker_count} must be >= 0")
    bad = [b for b in self.length_buckets if b % self.pad_multiple]
    if bad:
      raise ValueError(f"PipelineConfig.length_buckets {bad} are not multiples of pad_multiple={self.pad_multiple}")
    if self.length_buckets and self.max_length is not None and self.max_length > self.length_buckets[-1]:
      raise ValueError(f"PipelineConfig: max_length={self.max_length} exceeds the largest length bucket "
                       f"{self.length_buckets[-1]}")

  def replace(self, **kwargs) -> PipelineConfig:
    return dataclasses.replace(self, **kwargs)


def _seed(*parts: int) -> int:
  """A 32-bit seed from integers (independent streams for (seed, epoch, what))."""
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class _Batcher:
  """Batch index -> numpy batch. Picklable (sent to worker processes); deterministic."""

  def __init__(self, records: grain.MapDataset, num_slots: int, config: PipelineConfig, seed: int, epoch: int):
    self.records, self.num_slots, self.config = records, num_slots, config
    self.seed, self.epoch = seed, epoch
    self.num_batches = -(-num_slots // config.batch_size)
    self._plans: dict[int, list[list[int]]] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    return {**self.__dict__, "_plans": {}, "_lock": None}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _window(self, w: int) -> list[list[int]]:
    """The batches (lists of slots) of window w, sorted by length and shuffled."""
    with self._lock:
      if w in self._plans:
        return self._plans[w]
    B, W = self.config.batch_size, self.config.bucket_window
    slots = list(range(w * W * B, min((w + 1) * W * B, self.num_batches * B)))
    if W > 1:
      def length(slot):
        if slot >= len(self.records):
          return -1
        try:
          return record_length(self.records[slot], self.config)
        except RecordError:
          return 0
      slots.sort(key=lambda s: (length(s), s))
    batches = [slots[i:i + B] for i in range(0, len(slots), B)]
    if W > 1 and self.config.shuffle:
      order = np.random.default_rng(_seed(self.seed, self.epoch, 7, w)).permutation(len(batches))
      batches = [batches[i] for i in order]
    with self._lock:
      if len(self._plans) > 4:
        self._plans.pop(next(iter(self._plans)))
      self._plans[w] = batches
    return batches

  def __call__(self, index: int) -> dict:
    index = int(index)
    W = self.config.bucket_window
    members = self._window(index // W)[index % W]
    prepared, skipped, truncated = [], collections.Counter(), 0
    for slot in members:
      if slot >= len(self.records):
        prepared.append(None)
        continue
      try:
        p = prepare_record(self.records[slot], self.config)
      except RecordError as e:
        if self.config.on_error == "raise":
          raise
        log.warning("skipping a bad record: %s", e)
        skipped[e.reason] += 1
        p = None
      truncated += bool(p is not None and p.truncated)
      prepared.append(p)
    batch = collate(prepared, self.config)
    batch["_stats"] = {"examples": sum(p is not None for p in prepared), "skipped": dict(skipped),
                       "truncated": truncated, "padding_rows": sum(s >= len(self.records) for s in members),
                       "real_positions": int(batch["mask"].sum()), "positions": int(batch["mask"].size)}
    return batch


class _StatsCollector:
  """Runs in the consuming process: moves each batch's "_stats" into the pipeline's counters."""

  def __init__(self):
    self.counts = {"batches": 0, "examples": 0, "truncated": 0, "padding_rows": 0, "real_positions": 0,
                   "positions": 0}
    self.skipped = collections.Counter()

  def __call__(self, batch: dict) -> dict:
    stats = batch.pop("_stats")
    self.counts["batches"] += 1
    for k in ("examples", "truncated", "padding_rows", "real_positions", "positions"):
      self.counts[k] += stats[k]
    self.skipped.update(stats["skipped"])
    return batch


@dataclasses.dataclass
class Pipeline:
  """A made pipeline. `iter(pipeline)` gives a grain DatasetIterator (checkpointable with
  grain.checkpoint.CheckpointSave / CheckpointRestore); `len(pipeline)` batches per epoch on this host."""
  dataset: grain.IterDataset
  num_batches: int
  num_records: int  # records of the epoch, all hosts
  config: PipelineConfig
  _collector: _StatsCollector

  def __iter__(self):
    return iter(self.dataset)

  def __len__(self) -> int:
    return self.num_batches

  @property
  def stats(self) -> dict:
    """Counts over the batches this process has consumed from the pipeline (any of its iterators):
    batches, examples (real rows), skipped {reason: n} and skipped_total, truncated, padding_rows (empty
    tail slots), padding_fraction (of all B·T positions)."""
    c = dict(self._collector.counts)
    c["skipped"] = dict(self._collector.skipped)
    c["skipped_total"] = sum(c["skipped"].values())
    c["padding_fraction"] = 1 - c["real_positions"] / c["positions"] if c["positions"] else 0.0
    return c


def records_dataset(config: PipelineConfig, split: str, *, seed: int = 0, epoch: int = 0) -> grain.MapDataset:
  """The epoch's records of all hosts, shuffled and mixed (before the per-host slice)."""
  comps = []
  for k, sc in enumerate(config.sources):
    ds = grain.MapDataset.source(sc.open(split))
    if len(ds) == 0:
      raise ValueError(f"source {sc.kind}:{sc.path} has no records for split {split!r}")
    if config.shuffle:
      ds = ds.shuffle(seed=_seed(seed, epoch, k))
    comps.append(ds)
  if len(comps) == 1 and config.mixture_length is None:
    return comps[0]
  if config.mixture_length is not None:
    comps = [c.repeat() for c in comps]
  ds = grain.MapDataset.mix(comps, [sc.weight for sc in config.sources])
  if config.mixture_length is not None:
    ds = ds[:config.mixture_length]
  return ds


def make_pipeline(config: PipelineConfig, split: str, *, seed: int = 0, epoch: int = 0,
                  process_index: int | None = None, process_count: int | None = None) -> Pipeline:
  """The pipeline of one epoch of `split` on host `process_index` of `process_count` (default: jax's).

  Hosts see disjoint records whose union is the epoch; all hosts yield len(pipeline) batches.
  """
  if process_index is None or process_count is None:
    import jax
    process_index, process_count = jax.process_index(), jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
  records = records_dataset(config, split, seed=seed, epoch=epoch)
  host = records[process_index::process_count]
  num_slots = math.ceil(len(records) / process_count)
  batcher = _Batcher(host, num_slots, config, seed, epoch)
  ds = grain.MapDataset.range(batcher.num_batches).map(batcher)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                            prefetch_buffer_size=config.prefetch))
  if config.worker_count > 0:
    _ensure_absl_flags()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count,
                                                     per_worker_buffer_size=config.worker_buffer_size))
  collector = _StatsCollector()
  ds = ds.map(collector)
  return Pipeline(ds, batcher.num_batches, len(records), config, collector)


def _ensure_absl_flags():
  """grain's mp_prefetch reads absl flags; outside an absl app they are not parsed yet."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def padded_batch_length(lengths: Sequence[int], config: PipelineConfig) -> int:
  """T of a batch of examples with these lengths (exposed for tests and capacity planning)."""
  return padded_length(max(lengths, default=0), config.pad_multiple, config.length_buckets)
