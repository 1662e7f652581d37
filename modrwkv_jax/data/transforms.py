"""Record -> example -> batch: decoding, the chat template, the length policy, padding and collation.

Reading order: the per-modality settings (`ImageConfig`, `AudioConfig`, `SeriesConfig`), one record
through `prepare_record` (decode + preprocess each item, count its modality tokens with the model's
`num_tokens`, build the token sequence with conversation.build_example, apply the length policy), the
cheap length estimate used for bucketing and packing (`record_length`, `record_sizes`), `pack_row`,
which concatenates several prepared examples into one packed row, and `collate`, which pads a list of
prepared examples (or packed rows) into the numpy batch the model consumes (schema in data/pipeline.py).

"Input length" of an item, the argument of `num_tokens`: the pixel count H'·W' of the preprocessed
image (SigLIP2 NaFlex: real patches · p²), the number of 16 kHz samples of a clip, the number of steps
of a series window. The model turns it into a token count (encoder length -> compressor -> adapter).

Every failure of a record raises sources.RecordError (file, record id, field, reason); the pipeline
raises or skips it according to its `on_error`. The decoders turn their library errors into named
ones where they happen (data/image.py `ImageError`, data/audio.py `AudioError`, the series readers'
`SERIES_READ_ERRORS`), each with the reason it is counted under; the header-only pass that measures
lengths for bucketing (`record_length`) goes through the same checks, so no bad file can stop a run
there either.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import zipfile
from collections.abc import Callable, Sequence

import numpy as np
import PIL.Image

from modrwkv_jax.data import audio as audio_lib
from modrwkv_jax.data import image as image_lib
from modrwkv_jax.data.conversation import IGNORE_ID, MODALITIES, ConversationError, Example, build_example
from modrwkv_jax.data.sources import RecordError, check_conversations, read_series_file


# ---------------------------------------------------------------------------------------------
# Per-modality settings.


@dataclasses.dataclass(frozen=True)
class ImageConfig:
  """The image modality.

  processor: data/image.py settings; "siglip" / "clip" must give a fixed output size (height/width
    size, or a centre crop), "siglip2" gives NaFlex patches.
  num_tokens: pixels H'·W' of one preprocessed image -> its modality tokens (from the model).
  max_items: fixed item dimension I of the batch (more images in a record is an error); None: the
    most images of any example in the batch.
  row_items: with packing, the item dimension I of a packed batch: the most images of one row (the
    packer opens another row rather than exceed it; a record with more is "too_many_items"). None:
    T // (tokens of one image) for fixed-size images, a bound that never binds (3 SigLIP2 images of
    576 tokens in 2048 positions); the most images of any row of the batch for NaFlex images.
  """
  processor: image_lib.ImageProcessorConfig
  num_tokens: Callable[[int], int]
  max_items: int | None = None
  row_items: int | None = None

  def __post_init__(self):
    _check_items("ImageConfig", self.max_items, self.row_items)
    if self.processor.kind != "siglip2" and self.fixed_size is None:
      raise ValueError(f"ImageConfig: processor {self.processor.kind!r} with size {self.processor.size_dict} and no "
                       "centre crop gives images of varying sizes; batches need a fixed size (height/width or crop)")

  @property
  def fixed_size(self) -> tuple[int, int] | None:
    p = self.processor
    if p.kind == "siglip2":
      return None
    if p.do_center_crop:
      return tuple(p.crop_size)
    size = p.size_dict
    if p.do_resize and "height" in size:
      return size["height"], size["width"]
    return None


@dataclasses.dataclass(frozen=True)
class AudioConfig:
  """The audio modality.

  num_tokens: 16 kHz samples of one clip -> its modality tokens (from the model).
  frontend: "whisper" (log-mel features float32[F, n_mels]) or "wav2vec2" (normalised samples).
  pad_to_chunk: Whisper only; True pads every clip to chunk_length (3000 frames), the paper's input;
    False pads to the longest clip of the batch.
  max_seconds: longer clips are bad records (reason "audio_too_long"); None: Whisper's chunk_length,
    unlimited for wav2vec2.
  max_items, row_items: as for ImageConfig; row_items None gives the most clips of any row of the
    batch (an item dimension that varies from batch to batch, each new value compiling anew).
  """
  num_tokens: Callable[[int], int]
  frontend: str = "whisper"
  whisper: audio_lib.WhisperFeatureConfig = audio_lib.WhisperFeatureConfig()
  wav2vec2: audio_lib.Wav2Vec2FeatureConfig = audio_lib.Wav2Vec2FeatureConfig()
  pad_to_chunk: bool = True
  max_seconds: float | None = None
  max_items: int | None = None
  row_items: int | None = None

  def __post_init__(self):
    _check_items("AudioConfig", self.max_items, self.row_items)
    if self.frontend not in ("whisper", "wav2vec2"):
      raise ValueError(f"AudioConfig.frontend must be 'whisper' or 'wav2vec2', got {self.frontend!r}")

  @property
  def max_samples(self) -> int | None:
    seconds = self.max_seconds
    if seconds is None and self.frontend == "whisper":
      seconds = self.whisper.chunk_length
    return None if seconds is None else int(round(seconds * audio_lib.SAMPLE_RATE))


@dataclasses.dataclass(frozen=True)
class SeriesConfig:
  """The time-series modality.

  num_tokens: steps of one window -> its modality tokens (from the model).
  channels: None for univariate windows float[L] (batch [B, S, L]); C for float[L, C] ([B, S, L, C]).
  length, horizon: fixed L and horizon of the batch arrays (static shapes, also for batches without
    series); longer windows / targets are bad records. None: the longest in the batch (1 if none).
  max_items, row_items: as for AudioConfig.
  """
  num_tokens: Callable[[int], int]
  channels: int | None = None
  max_items: int | None = None
  length: int | None = None
  horizon: int | None = None
  row_items: int | None = None

  def __post_init__(self):
    _check_items("SeriesConfig", self.max_items, self.row_items)


def _check_items(name: str, max_items: int | None, row_items: int | None) -> None:
  for field, value in (("max_items", max_items), ("row_items", row_items)):
    if value is not None and value < 1:
      raise ValueError(f"{name}.{field} must be None or >= 1; got {value}")


# ---------------------------------------------------------------------------------------------
# One record.


@dataclasses.dataclass
class Prepared:
  """One record ready for collation, or a packed row of several (`pack_row`: segment_ids int32[T]
  numbers its examples 1, 2, ...). Item arrays are None when only sizes were read."""
  id: str
  source: str
  example: Example
  images: list  # float32[H, W, 3] or image_lib.NaFlexPatches
  audio: list  # float32[N] at 16 kHz
  series: list  # float32[L] or float32[L, C]
  targets: list  # float32[H(, C)] or None, one per series item
  truncated: bool = False
  segment_ids: np.ndarray | None = None


def _image_size(item, processor: image_lib.ImageProcessorConfig, name: str) -> tuple[int, int]:
  """(height, width) of an image item from its header only; ImageError if it cannot be used."""
  if isinstance(item, (str, os.PathLike, bytes, bytearray)):
    with image_lib.open_image(item, source=name, max_pixels=processor.max_pixels) as img:
      return img.size[1], img.size[0]
  if isinstance(item, PIL.Image.Image):
    return item.size[1], item.size[0]
  shape = np.shape(item)
  if len(shape) not in (2, 3):
    raise image_lib.ImageError(f"{name}: image array has shape {shape}; expected [H, W(, C)]", "bad_image")
  return shape[0], shape[1]


def _decode_image(item, processor: image_lib.ImageProcessorConfig, name: str):
  """A decoded PIL image (from a path or encoded bytes) or the item itself (PIL image, array)."""
  if isinstance(item, (str, os.PathLike, bytes, bytearray)):
    return image_lib.load_image(item, source=name, max_pixels=processor.max_pixels)
  return item


def _image_pixels(height: int, width: int, config: ImageConfig) -> int:
  p = config.processor
  if config.fixed_size is not None:
    return config.fixed_size[0] * config.fixed_size[1]
  if p.kind == "siglip2":
    h, w = image_lib.naflex_size(height, width, p.patch_size, p.max_num_patches) if p.do_resize else (height, width)
    return h * w
  return height * width


def _prepare_image(item, config: ImageConfig, fail, k: int, sizes_only: bool):
  field = f"image[{k}]"
  name = os.fspath(item) if isinstance(item, (str, os.PathLike)) else field
  if isinstance(item, (str, os.PathLike)) and not os.path.isfile(item):
    fail(field, f"no such image file {os.fspath(item)}", "missing_image")
  if sizes_only and config.fixed_size is not None:
    return None, _image_pixels(0, 0, config)
  try:
    if sizes_only:
      return None, _image_pixels(*_image_size(item, config.processor, name), config)
    x = image_lib.preprocess(_decode_image(item, config.processor, name), config.processor, source=name)
  except image_lib.ImageError as e:  # every decoding / preprocessing failure (data/image.py)
    fail(field, str(e), e.reason)
  except FileNotFoundError as e:  # deleted since the check above
    fail(field, f"no such image file ({e})", "missing_image")
  if isinstance(x, image_lib.NaFlexPatches):
    rows, cols = x.spatial_shape
    return x, rows * cols * config.processor.patch_size ** 2
  return x, x.shape[0] * x.shape[1]


def _prepare_audio(item, config: AudioConfig, fail, k: int, sizes_only: bool):
  field = f"audio[{k}]"
  rate = audio_lib.SAMPLE_RATE
  try:
    if isinstance(item, (str, os.PathLike)):
      if not os.path.isfile(item):
        fail(field, f"no such audio file {os.fspath(item)}", "missing_audio")
      if sizes_only:
        frames, file_rate = audio_lib.audio_info(item)
        return None, -(-frames * rate // file_rate)
      limit = config.max_samples  # refused from the header, before decoding
      wave = audio_lib.read_audio(item, rate, max_seconds=None if limit is None else limit / rate)
    elif isinstance(item, dict) and "array" in item:
      item_rate = audio_lib.check_sampling_rate(item.get("sampling_rate", rate), field, "the item's")
      x = audio_lib.check_waveform(audio_lib.to_mono(item["array"], field), field)
      if sizes_only:
        return None, -(-x.shape[0] * rate // item_rate)
      wave = audio_lib.resample(x, item_rate, rate, name=field)
    else:
      fail(field, f"expected a path or {{'array', 'sampling_rate'}}; got {type(item).__name__}", "bad_field")
  except audio_lib.AudioError as e:  # every decoding / checking failure (data/audio.py)
    fail(field, str(e), e.reason)
  limit = config.max_samples
  if limit is not None and wave.shape[0] > limit:
    fail(field, f"{wave.shape[0] / rate:.2f} s long; at most {limit / rate:g} s allowed", "audio_too_long")
  return wave, wave.shape[0]


# What reading a CSV / NPZ / NPY series file raises on a bad file (np.load: BadZipFile, EOFError and
# ValueError for corrupt archives and headers; csv.Error for a field over csv.field_size_limit();
# UnicodeDecodeError, a ValueError, for a CSV that is not UTF-8).
SERIES_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, csv.Error)


def _prepare_series(item, target, config: SeriesConfig, fail, k: int):
  field = f"series[{k}]"
  try:
    if isinstance(item, (str, os.PathLike)):
      x, _ = read_series_file(item)
      item = x[:, 0] if x.shape[1] == 1 else x
  except SERIES_READ_ERRORS as e:
    fail(field, f"cannot read the series ({type(e).__name__}: {e})", "corrupt_series")
  out = []
  for name, v in ((field, item), (f"target[{k}]", target)):
    if v is None:
      out.append(None)
      continue
    try:
      v = np.asarray(v, np.float32)
    except (TypeError, ValueError) as e:  # strings, ragged lists
      fail(name, f"is not an array of numbers ({e})", "bad_series_shape")
    want = 1 if config.channels is None else 2
    if v.ndim == 2 and config.channels is not None and v.shape[1] != config.channels:
      fail(name, f"has {v.shape[1]} channels; the pipeline expects {config.channels}", "bad_series_shape")
    if v.ndim == 1 and want == 2 and config.channels == 1:
      v = v[:, None]
    if v.ndim != want or v.shape[0] == 0:
      shape = "[L]" if want == 1 else f"[L, {config.channels}]"
      fail(name, f"has shape {v.shape}; expected a non-empty {shape}", "bad_series_shape")
    what, limit = ("length", config.length) if name == field else ("horizon", config.horizon)
    if limit is not None and v.shape[0] > limit:
      fail(name, f"has {v.shape[0]} steps; the pipeline's fixed {what} is {limit}", "bad_series_shape")
    bad = ~np.isfinite(v)
    if bad.any():
      fail(name, f"{int(bad.sum())} NaN/inf value(s), first at step {int(np.argwhere(bad)[0][0])}",
           "nan_in_series")
    out.append(v)
  return out[0], out[1], out[0].shape[0]


def _num_tokens(fn, length: int, modality: str, fail, k: int) -> int:
  n = fn(length)
  if not isinstance(n, (int, np.integer)) or n <= 0:
    fail(f"{modality}[{k}]", f"num_tokens({length}) = {n!r}; an item must become at least one token", "empty_item")
  return int(n)


def prepare_record(record: dict, config, *, sizes_only: bool = False) -> Prepared:
  """Decodes, preprocesses and tokenizes one record (config: a pipeline.PipelineConfig).

  sizes_only: read only headers and sizes (no pixels, no samples) — enough for the exact length, used
  by the bucketing pass.
  Raises RecordError for every bad-record case (missing/corrupt media, bad conversations, placeholder
  mismatch, NaN in series, over-long sequences without `truncate`).
  """
  source, rid = record["source"], record["id"]

  def fail(field, message, reason):
    raise RecordError(source, rid, field, message, reason)

  for m in MODALITIES:
    items, mc = record.get(m) or [], getattr(config, m)
    if items and mc is None:
      fail(m, f"the record has {len(items)} {m} item(s) but the pipeline has no {m} modality configured",
           "modality_disabled")
    if mc is not None and mc.max_items is not None and len(items) > mc.max_items:
      fail(m, f"{len(items)} items; the pipeline allows at most {mc.max_items}", "too_many_items")
    if mc is not None and config.packing and mc.row_items is not None and len(items) > mc.row_items:
      fail(m, f"{len(items)} items; a packed row holds at most {mc.row_items} (row_items)", "too_many_items")
  check_conversations(record)

  images, audio, series, targets = [], [], [], []
  lengths = {m: [] for m in MODALITIES}
  for k, item in enumerate(record.get("image") or []):
    x, n = _prepare_image(item, config.image, fail, k, sizes_only)
    images.append(x)
    lengths["image"].append(n)
  for k, item in enumerate(record.get("audio") or []):
    x, n = _prepare_audio(item, config.audio, fail, k, sizes_only)
    audio.append(x)
    lengths["audio"].append(n)
  record_targets = record.get("target") or [None] * len(record.get("series") or [])
  for k, item in enumerate(record.get("series") or []):
    x, t, n = _prepare_series(item, record_targets[k], config.series, fail, k)
    series.append(x)
    targets.append(t)
    lengths["series"].append(n)
  num_tokens = {m: [_num_tokens(getattr(config, m).num_tokens, n, m, fail, k) for k, n in enumerate(ns)]
                for m, ns in lengths.items() if ns}

  has_target = any(t is not None for t in targets)
  try:
    example = build_example(record["conversations"], num_tokens, layout=config.layout,
                            preamble=record.get("preamble", ""),
                            require_assistant=not has_target)
  except ConversationError as e:
    fail(e.field, str(e), e.reason)

  truncated = False
  if config.max_length is not None and len(example) > config.max_length:
    limit = config.max_length
    last_item = max((int(np.nonzero(p >= 0)[0][-1]) for p in example.positions.values()), default=-1)
    if config.truncate and last_item < limit - 1 and (example.labels[:limit - 1] != IGNORE_ID).any():
      example, truncated = example.truncated(limit), True
    else:
      why = ("" if config.truncate else "; set truncate=True to cut the text") if last_item < limit - 1 else \
            "; its modality tokens alone do not fit"
      fail("conversations", f"{len(example)} positions, more than max_length={limit}{why}", "too_long")
  return Prepared(str(rid), source, example, images, audio, series, targets, truncated)


def record_length(record: dict, config) -> int:
  """The sequence length of a record from headers only (0 when the record is bad: the real pass
  reports it)."""
  return record_sizes(record, config)[0]


def record_sizes(record: dict, config) -> tuple[int, dict[str, int]]:
  """(sequence length, {modality: items}) of a record from headers only; (0, {}) when the record is bad
  (the decoding pass raises or counts it)."""
  try:
    p = prepare_record(record, config, sizes_only=True)
  except RecordError:  # reported (raised or counted) by the decoding pass
    return 0, {}
  return len(p.example), {"image": len(p.images), "audio": len(p.audio), "series": len(p.series)}


# ---------------------------------------------------------------------------------------------
# Packing.


def pack_row(parts: Sequence[Prepared]) -> Prepared:
  """Prepared examples -> one packed row: their sequences concatenated left to right, segment_ids
  1, 2, ... per example, the items of each modality concatenated on the item axis (item i of example k
  becomes item i + (items of m in examples 0..k−1)), every label as the example had it alone (its last
  position's label stays −100: no target crosses a boundary)."""
  if not parts:
    raise ValueError("pack_row: no examples")
  exs = [p.example for p in parts]
  mods = [m for m in MODALITIES if any(m in e.positions for e in exs)]
  capacity = {m: max(e.capacity[m] for e in exs if m in e.positions) for m in mods}
  offset = {m: 0 for m in mods}
  positions = {m: [] for m in mods}
  for e in exs:
    for m in mods:
      if m not in e.positions:
        positions[m].append(np.full(len(e), -1, np.int32))
        continue
      p, old = e.positions[m], max(e.capacity[m], 1)
      positions[m].append(np.where(p >= 0, (p // old + offset[m]) * capacity[m] + p % old, -1).astype(np.int32))
      offset[m] += len(e.num_tokens[m])
  example = Example(np.concatenate([e.tokens for e in exs]), np.concatenate([e.labels for e in exs]),
                    {m: np.concatenate(positions[m]) for m in mods},
                    {m: [n for e in exs for n in e.num_tokens.get(m, [])] for m in mods}, capacity)
  segment_ids = np.concatenate([np.full(len(e), k + 1, np.int32) for k, e in enumerate(exs)])
  return Prepared("+".join(p.id for p in parts), ", ".join(dict.fromkeys(p.source for p in parts)), example,
                  [x for p in parts for x in p.images], [x for p in parts for x in p.audio],
                  [x for p in parts for x in p.series], [x for p in parts for x in p.targets],
                  any(p.truncated for p in parts), segment_ids)


def packed_item_dim(config, modality: str) -> int | None:
  """The item dimension I of modality m in a packed batch: row_items, else T // (tokens of one
  image) for fixed-size images, else None (the most items of any row of the batch)."""
  mc = getattr(config, modality)
  if mc.row_items is not None:
    return mc.row_items
  if modality == "image" and mc.fixed_size is not None:
    h, w = mc.fixed_size
    return max(1, config.row_length // int(mc.num_tokens(h * w)))
  return None


# ---------------------------------------------------------------------------------------------
# Collation.


def padded_length(length: int, pad_multiple: int, buckets: Sequence[int] = ()) -> int:
  """T for a batch whose longest example has `length` positions: the smallest bucket that fits, else
  the next multiple of pad_multiple (the WKV chunk size), at least one chunk."""
  for b in sorted(buckets):
    if b >= length:
      return int(b)
  return max(1, -(-length // pad_multiple)) * pad_multiple


def collate(examples: Sequence[Prepared | None], config, *, packed: bool = False) -> dict[str, np.ndarray]:
  """Pads prepared examples (None: an empty row) into one batch; schema in data/pipeline.py.

  packed: the rows are `pack_row` outputs: T is config.row_length, the item dimensions are
  `packed_item_dim`, and the batch gains segment_ids int32[B, T] (0 at padding).
  """
  B = len(examples)
  real = [e for e in examples if e is not None]
  if packed:
    T = config.row_length
    longest = max((len(e.example) for e in real), default=0)
    if longest > T:
      raise ValueError(f"collate: a packed row of {longest} positions exceeds the row length {T}")
  else:
    T = padded_length(max((len(e.example) for e in real), default=0), config.pad_multiple, config.length_buckets)
  tokens = np.zeros((B, T), np.int32)
  labels = np.full((B, T), IGNORE_ID, np.int32)
  mask = np.zeros((B, T), bool)
  enabled = [m for m in MODALITIES if getattr(config, m) is not None]
  capacity = {m: max([max(e.example.num_tokens.get(m, [0])) for e in real] + [1]) for m in enabled}
  positions = {m: np.full((B, T), -1, np.int32) for m in enabled}
  segment_ids = np.zeros((B, T), np.int32)
  for b, e in enumerate(examples):
    if e is None:
      continue
    ex = e.example.with_capacity({m: capacity[m] for m in e.example.positions})
    n = len(ex)
    tokens[b, :n], labels[b, :n], mask[b, :n] = ex.tokens, ex.labels, True
    segment_ids[b, :n] = e.segment_ids if e.segment_ids is not None else 1
    for m, p in ex.positions.items():
      positions[m][b, :n] = p
  batch = {"tokens": tokens, "labels": labels, "mask": mask}
  if packed:
    batch["segment_ids"] = segment_ids
  for m in enabled:
    batch[f"{m}_pos"] = positions[m]
  items = {m: packed_item_dim(config, m) if packed else getattr(config, m).max_items for m in enabled}
  if config.image is not None:
    batch.update(_collate_images(examples, config.image, items["image"]))
  if config.audio is not None:
    batch.update(_collate_audio(examples, config.audio, items["audio"]))
  if config.series is not None:
    batch.update(_collate_series(examples, config.series, items["series"]))
  return batch


def _item_dim(examples, attr: str, fixed: int | None) -> int:
  most = max([len(getattr(e, attr)) for e in examples if e is not None] + [1])
  if fixed is not None and most > fixed:
    raise ValueError(f"collate: a row holds {most} {attr} items; the batch's item dimension is {fixed}")
  return fixed if fixed is not None else most


def _collate_images(examples, config: ImageConfig, fixed_items: int | None) -> dict[str, np.ndarray]:
  B, I = len(examples), _item_dim(examples, "images", fixed_items)
  count = np.array([len(e.images) if e is not None else 0 for e in examples], np.int32)
  if config.processor.kind == "siglip2":
    p, N = config.processor.patch_size, config.processor.max_num_patches
    pixels = np.zeros((B, I, N, p * p * 3), np.float32)
    patch_mask = np.zeros((B, I, N), bool)
    shapes = np.zeros((B, I, 2), np.int32)
    for b, e in enumerate(examples):
      for i, x in enumerate(e.images if e is not None else ()):
        pixels[b, i], patch_mask[b, i], shapes[b, i] = x.pixel_values, x.pixel_attention_mask, x.spatial_shape
    return {"image": pixels, "image_mask": patch_mask, "image_spatial_shapes": shapes, "image_count": count}
  H, W = config.fixed_size
  pixels = np.zeros((B, I, H, W, 3), np.float32)
  for b, e in enumerate(examples):
    for i, x in enumerate(e.images if e is not None else ()):
      if x.shape != (H, W, 3):
        raise ValueError(f"{e.source}: record {e.id!r}: image {i} preprocessed to {x.shape}; expected {(H, W, 3)}")
      pixels[b, i] = x
  return {"image": pixels, "image_count": count}


def _collate_audio(examples, config: AudioConfig, fixed_items: int | None) -> dict[str, np.ndarray]:
  B, A = len(examples), _item_dim(examples, "audio", fixed_items)
  count = np.array([len(e.audio) if e is not None else 0 for e in examples], np.int32)
  waves = [w for e in examples if e is not None for w in e.audio]
  names = [f"{e.source}: record {e.id!r} audio[{i}]" for e in examples if e is not None for i in range(len(e.audio))]
  if config.frontend == "whisper":
    wc = config.whisper
    if waves:
      feats, fmask = audio_lib.whisper_features(waves, wc, pad_to_chunk=config.pad_to_chunk, names=names)
    else:
      F = wc.n_frames if config.pad_to_chunk else 1
      feats, fmask = np.zeros((0, F, wc.feature_size), np.float32), np.zeros((0, F), bool)
    out = np.zeros((B, A) + feats.shape[1:], np.float32)
  else:
    if waves:
      feats, fmask = audio_lib.wav2vec2_inputs(waves, config.wav2vec2, names=names)
    else:
      feats, fmask = np.zeros((0, 1), np.float32), np.zeros((0, 1), bool)
    out = np.full((B, A) + feats.shape[1:], config.wav2vec2.padding_value, np.float32)
  out_mask = np.zeros((B, A) + fmask.shape[1:], bool)
  k = 0
  for b, e in enumerate(examples):
    for i in range(len(e.audio) if e is not None else 0):
      out[b, i], out_mask[b, i] = feats[k], fmask[k]
      k += 1
  return {"audio": out, "audio_mask": out_mask, "audio_count": count}


def _collate_series(examples, config: SeriesConfig, fixed_items: int | None) -> dict[str, np.ndarray]:
  """Series are padded on the left (the latest step stays last, next to the forecast); targets on
  the right."""
  B, S = len(examples), _item_dim(examples, "series", fixed_items)
  items = [(b, i, x, t) for b, e in enumerate(examples) if e is not None
           for i, (x, t) in enumerate(zip(e.series, e.targets))]
  L = config.length or max([x.shape[0] for _, _, x, _ in items] + [1])
  H = config.horizon or max([t.shape[0] for *_, t in items if t is not None] + [1])
  tail = () if config.channels is None else (config.channels,)
  series = np.zeros((B, S, L) + tail, np.float32)
  series_mask = np.zeros((B, S, L), bool)
  target = np.zeros((B, S, H) + tail, np.float32)
  target_mask = np.zeros((B, S, H), bool)
  for b, i, x, t in items:
    n = x.shape[0]
    series[b, i, L - n:], series_mask[b, i, L - n:] = x, True
    if t is not None:
      target[b, i, :t.shape[0]], target_mask[b, i, :t.shape[0]] = t, True
  count = np.array([len(e.series) if e is not None else 0 for e in examples], np.int32)
  return {"series": series, "series_mask": series_mask, "series_count": count,
          "target": target, "target_mask": target_mask}
