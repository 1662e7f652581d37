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

Sequence packing (`packing=True`) replaces steps 2 and 3: every row has the same length T
(`row_length`: max_length rounded up to its length bucket, or the largest bucket) and holds whole
examples one after the other, numbered by `segment_ids` (the model restarts its state at every change).
  * Window w holds the global records [w·R, (w+1)·R), R = bucket_window · batch_size · process_count
    (the records of bucket_window batches of every host). Its plan reads their lengths and item counts
    from headers (`transforms.record_sizes`) and packs them by first-fit decreasing
    (`first_fit_decreasing`: longest first, each into the first row with room; ties in the shuffled
    order) into rows of T positions and at most `row_items` items per modality; bad and too-long
    records take no room and are reported (raised or counted) by the host whose row holds them, so the
    header pass never drops a record. The rows are cut into global batches of
    batch_size · process_count rows, host p taking rows p·batch_size .. (p+1)·batch_size − 1 of each,
    and the batch order is shuffled by (seed, epoch, w).
  * The plan is a pure function of (seed, epoch, w) and the same on every host (each host reads the
    headers of all R records of a window, its own decoding stays 1/P of them): hosts stay aligned
    without any communication, every host yields the same number of batches, and batch index i is
    batch i mod bucket_window of window i // bucket_window, so the iterator state is still the next
    batch index. A window yields n_w = ⌈rows / (batch_size · process_count)⌉ <= bucket_window batches;
    its indices n_w .. bucket_window − 1 are empty (None, which grain skips), so an epoch has
    Σ_w n_w batches, known in full only after every window is planned (`len(pipeline)` plans them all).
    With worker processes (worker_count > 0) grain interleaves the workers' non-empty batches, so the
    batch order depends on worker_count (deterministic for a fixed count).
  * The last batch of each window is partly empty rows: windows of several rows' worth of examples
    (bucket_window >> examples per row) keep that waste small.

Batch schema (numpy; B = batch_size, T = padded length, a multiple of pad_multiple or a length bucket;
with packing T = row_length):
  tokens int32[B, T]   World-tokenizer ids; 0 at modality positions and padding
  labels int32[B, T]   target of position t = tokens[t+1] if t+1 is in an assistant turn of the same
                       example, else −100 (an example's last position never has a target)
  mask   bool[B, T]    True at real positions (text or modality)
  segment_ids int32[B, T]  packing only: the examples of a row numbered 1, 2, 3, ... left to right; 0 at
                       padding (mask False)
  per enabled modality m ("image", "audio", "series"), present even when the batch has no such item:
  {m}_pos int32[B, T]  at a position holding token j of item i of modality m: i * L_m + j (L_m = most
                       tokens of one item of m in this batch, >= 1); −1 elsewhere. Packed rows number
                       the items of all their examples in a row: the items of example k follow those of
                       examples 1 .. k−1
  {m}_count int32[B]   items per example (packing: per row)
  image  float32[B, I, H, W, 3] (SigLIP/CLIP), or for SigLIP2 NaFlex float32[B, I, N, p·p·3] with
         image_mask bool[B, I, N] and image_spatial_shapes int32[B, I, 2]; I = max_items or the most
         images of an example in the batch (>= 1); packing: `transforms.packed_item_dim` (row_items,
         or T // tokens of one image for fixed-size images)
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
    modality_disabled, too_many_items, too_long (longer than max_length, or than T with packing);
  images: missing_image, corrupt_image (unreadable, truncated), image_too_large (header over max_pixels,
    PIL decompression bombs, resize targets over max_pixels), bad_aspect_ratio (shortest-edge resize of
    an extreme aspect ratio), unsupported_image_mode (float images outside [0, 1], ...), bad_image;
  audio: missing_audio, corrupt_audio, truncated_audio (a WAV cut short), bad_sampling_rate,
    audio_too_long;
  series: corrupt_series, bad_series_shape, nan_in_series; any modality: empty_item;
  packing: length_mismatch (a record decodes longer than its header pass said and no longer fits its row).
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
from modrwkv_jax.data.transforms import (AudioConfig, ImageConfig, SeriesConfig, collate, pack_row, padded_length,
                                         prepare_record, record_length, record_sizes)

log = logging.getLogger(__name__)

__all__ = ["SourceConfig", "PipelineConfig", "Pipeline", "make_pipeline", "first_fit_decreasing", "ImageConfig",
           "AudioConfig", "SeriesConfig"]


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
  bucket_window: batches per length-sorting window (1: no bucketing); with packing, batches' worth of
    records per packing window.
  packing: sequence packing (module docstring): rows of `row_length` positions filled with whole
    examples, and segment_ids in the batch.
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
  packing: bool = False
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

  @property
  def row_length(self) -> int:
    """T of a packed batch: max_length rounded up to its length bucket (or to a multiple of
    pad_multiple); the largest bucket when max_length is None."""
    if self.max_length is not None:
      return padded_length(self.max_length, self.pad_multiple, self.length_buckets)
    if self.length_buckets:
      return self.length_buckets[-1]
    raise ValueError("PipelineConfig: packing needs a row length; set max_length or length_buckets")


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


def first_fit_decreasing(sizes, capacity) -> list[list[int]]:
  """Bin packing by first-fit decreasing: items in order of decreasing sizes[:, 0] (ties keep their
  order), each into the first bin where it fits in every dimension, a new bin when none has room.

  Args:
    sizes: int[n, D] the size of each item in D dimensions (positions, then item budgets).
    capacity: int[D] of one bin.
  Returns:
    bins: lists of item indices in the order they were placed; bins in the order they were opened.
  """
  sizes = np.asarray(sizes, np.int64).reshape(len(sizes), -1)
  capacity = np.asarray(capacity, np.int64).reshape(-1)
  too_big = np.nonzero((sizes > capacity).any(1))[0]
  if too_big.size:
    raise ValueError(f"first_fit_decreasing: item {int(too_big[0])} of size {sizes[too_big[0]].tolist()} exceeds the "
                     f"bin capacity {capacity.tolist()}")
  room = np.empty_like(sizes, shape=(len(sizes), capacity.size))
  room[:] = capacity
  bins: list[list[int]] = []
  for i in np.argsort(-sizes[:, 0], kind="stable"):
    fits = (room[:len(bins)] >= sizes[i]).all(1)
    k = int(fits.argmax()) if fits.any() else len(bins)
    if k == len(bins):
      bins.append([])
    bins[k].append(int(i))
    room[k] -= sizes[i]
  return bins


class _PackingBatcher:
  """Batch index -> numpy batch of packed rows (module docstring, "Sequence packing"), or None for
  the unused indices at the end of a window. Picklable (sent to worker processes); deterministic."""

  def __init__(self, records: grain.MapDataset, config: PipelineConfig, seed: int, epoch: int, process_index: int,
               process_count: int):
    self.T = config.row_length
    # Records are limited to the row: with max_length None, by the row length itself.
    self.config = config if config.max_length is not None else config.replace(max_length=self.T)
    self.records, self.seed, self.epoch = records, seed, epoch
    self.process_index, self.process_count = process_index, process_count
    self.rows = config.batch_size * process_count  # rows of a global batch
    self.window_records = config.bucket_window * self.rows
    self.num_windows = -(-len(records) // self.window_records)
    self.num_indices = self.num_windows * config.bucket_window
    # Item budgets of a row (the packer's extra dimensions): the modalities with a fixed row_items.
    self.budgets = {m: getattr(config, m).row_items for m in ("image", "audio", "series")
                    if getattr(config, m) is not None and getattr(config, m).row_items is not None}
    self._plans: dict[int, list[list[list[int]]]] = {}
    self._counts: dict[int, int] = {}  # batches of every window planned so far (for count_batches)
    self._planning: dict[int, threading.Event] = {}
    self._lock = threading.Lock()

  def __getstate__(self):
    return {**self.__dict__, "_plans": {}, "_planning": {}, "_lock": None}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _window(self, w: int) -> list[list[list[int]]]:
    """Window w's global batches: each a list of rows, each row a list of global record indices. One
    thread plans a window (a header pass over its R records); the others wait for its plan."""
    with self._lock:
      if w in self._plans:
        return self._plans[w]
      planning = self._planning.get(w)
      owner = planning is None
      if owner:
        planning = self._planning[w] = threading.Event()
    if not owner:
      planning.wait()
      with self._lock:
        if w in self._plans:
          return self._plans[w]
    batches = None  # the owner failed (its error is raised in its thread) or the plan was evicted: plan here
    try:
      batches = self._plan(w)
      return batches
    finally:
      with self._lock:
        if batches is not None:
          if len(self._plans) > 4:
            self._plans.pop(next(iter(self._plans)))
          self._plans[w] = batches
          self._counts[w] = len(batches)
        if owner:
          del self._planning[w]
      if owner:
        planning.set()

  def _plan(self, w: int) -> list[list[list[int]]]:
    """Header pass over window w's records, first-fit decreasing into rows, rows into shuffled batches."""
    lo = w * self.window_records
    hi = min(lo + self.window_records, len(self.records))
    sizes = np.zeros((hi - lo, 1 + len(self.budgets)), np.int64)
    for k in range(hi - lo):
      length, items = record_sizes(self.records[lo + k], self.config)
      sizes[k] = [length] + [items.get(m, 0) for m in self.budgets]
    bad = (sizes[:, 0] > self.T) | (sizes[:, 1:] > np.array(list(self.budgets.values()), np.int64)).any(1)
    sizes[bad] = 0  # cannot happen (prepare_record refuses them); reported by the decoding pass if it does
    rows = first_fit_decreasing(sizes, [self.T] + list(self.budgets.values()))
    rows = [[lo + i for i in row] for row in rows]
    batches = [rows[i:i + self.rows] for i in range(0, len(rows), self.rows)]
    if self.config.shuffle:
      order = np.random.default_rng(_seed(self.seed, self.epoch, 7, w)).permutation(len(batches))
      batches = [batches[i] for i in order]
    return batches

  def count_batches(self) -> int:
    """Batches of the epoch on every host: plans every window not planned yet (a header pass)."""
    for w in range(self.num_windows):
      if w not in self._counts:
        self._window(w)
    return sum(self._counts.values())

  def _plan_ahead(self, w: int) -> None:
    """Plans window w in a background thread (its header pass overlaps the batches of window w − 1)."""
    with self._lock:
      if w >= self.num_windows or w in self._plans or w in self._planning:
        return

    def plan():
      try:
        self._window(w)
      except Exception:  # pylint: disable=broad-except
        pass  # the batch that needs window w plans it again and raises there
    threading.Thread(target=plan, name=f"packing-plan-{w}", daemon=True).start()

  def __call__(self, index: int) -> dict | None:
    W, B = self.config.bucket_window, self.config.batch_size
    w, j = divmod(int(index), W)
    batches = self._window(w)
    self._plan_ahead(w + 1)
    if j >= len(batches):
      return None
    members = batches[j][self.process_index * B:(self.process_index + 1) * B]
    members += [[]] * (B - len(members))  # the window's last batch: empty rows
    rows, skipped, truncated, examples = [], collections.Counter(), 0, 0
    for row in members:
      parts, used, items = [], 0, collections.Counter()
      for g in row:
        try:
          p = prepare_record(self.records[g], self.config)
          self._check_fits(p, used, items)
        except RecordError as e:
          if self.config.on_error == "raise":
            raise
          log.warning("skipping a bad record: %s", e)
          skipped[e.reason] += 1
          continue
        used += len(p.example)
        items.update({"image": len(p.images), "audio": len(p.audio), "series": len(p.series)})
        truncated += p.truncated
        parts.append(p)
      examples += len(parts)
      rows.append(pack_row(parts) if parts else None)
    batch = collate(rows, self.config, packed=True)
    batch["_stats"] = {"examples": examples, "skipped": dict(skipped), "truncated": truncated,
                       "padding_rows": sum(not row for row in members),
                       "real_positions": int(batch["mask"].sum()), "positions": int(batch["mask"].size)}
    return batch

  def _check_fits(self, p, used: int, items: collections.Counter) -> None:
    """RecordError "length_mismatch" when a decoded record no longer fits the room its row kept for it."""
    n = {"image": len(p.images), "audio": len(p.audio), "series": len(p.series)}
    over = [f"{m} items {items[m]} + {n[m]} > row_items {limit}" for m, limit in self.budgets.items()
            if items[m] + n[m] > limit]
    if used + len(p.example) > self.T:
      over.insert(0, f"{used} + {len(p.example)} positions > row length {self.T}")
    if over:
      raise RecordError(p.source, p.id, "conversations",
                        f"decoded to sizes its header pass did not predict ({'; '.join(over)}); the packed row has "
                        "no room for it", "length_mismatch")


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
  grain.checkpoint.CheckpointSave / CheckpointRestore); `len(pipeline)` batches per epoch on this host
  (the same on every host; with packing, counting them plans every window: a header pass)."""
  dataset: grain.IterDataset
  num_records: int  # records of the epoch, all hosts
  config: PipelineConfig
  _collector: _StatsCollector
  _batcher: _Batcher | _PackingBatcher

  def __iter__(self):
    return iter(self.dataset)

  def __len__(self) -> int:
    return self.num_batches

  @property
  def num_batches(self) -> int:
    if isinstance(self._batcher, _PackingBatcher):
      return self._batcher.count_batches()
    return self._batcher.num_batches

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
  Raises ValueError for packing without a row length (max_length and length_buckets both unset).
  """
  if process_index is None or process_count is None:
    import jax
    process_index, process_count = jax.process_index(), jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
  records = records_dataset(config, split, seed=seed, epoch=epoch)
  if config.packing:  # every host plans the windows of all hosts' records (module docstring)
    if config.bucket_window == 1:
      log.warning("packing with bucket_window=1: each window packs one batch's worth of records into one batch, "
                  "so packing saves no step; set bucket_window to 16 or more")
    batcher = _PackingBatcher(records, config, seed, epoch, process_index, process_count)
    ds = grain.MapDataset.range(batcher.num_indices).map(batcher)
  else:
    host = records[process_index::process_count]
    num_slots = math.ceil(len(records) / process_count)
    batcher = _Batcher(host, num_slots, config, seed, epoch)
    ds = grain.MapDataset.range(batcher.num_batches).map(batcher)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                            prefetch_buffer_size=config.prefetch))
  if config.packing:  # the unused indices of a window are None by design, not a filter gone wrong
    ds = grain.experimental.WithOptionsIterDataset(
        ds, grain.experimental.DatasetOptions(filter_warn_threshold_ratio=None))
  if config.worker_count > 0:
    _ensure_absl_flags()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count,
                                                     per_worker_buffer_size=config.worker_buffer_size))
  collector = _StatsCollector()
  ds = ds.map(collector)
  return Pipeline(ds, len(records), config, collector, batcher)


def _ensure_absl_flags():
  """grain's mp_prefetch reads absl flags; outside an absl app they are not parsed yet."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def padded_batch_length(lengths: Sequence[int], config: PipelineConfig) -> int:
  """T of a batch of examples with these lengths (exposed for tests and capacity planning)."""
  return padded_length(max(lengths, default=0), config.pad_multiple, config.length_buckets)
