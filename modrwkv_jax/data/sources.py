"""Grain random-access sources: LLaVA conversations, audio manifests, time-series windows and TFDS.

Every source is a `grain.sources.RandomAccessDataSource` (`__len__`, `__getitem__`), cheap to build
(files are indexed, not decoded) and picklable (multiprocess workers get a copy). `source[i]` returns
one *record*, validated, in the one schema every transform reads:

  {"id": str, "source": str (file, for error messages), "index": int,
   "conversations": [{"from": "human"|"gpt", "value": str}, ...],
   "preamble": str,                      # text before the first turn (audio: "<audio>"), never trained
   "image":  [path | encoded bytes | uint8 array, ...],
   "audio":  [path | {"array": float[N], "sampling_rate": int}, ...],
   "series": [float[L] | float[L, C] | path to .npy, ...],
   "target": [float[H] | float[H, C] | None, ...]}   # forecasting targets, one per series item

Media are decoded later, by the transforms (data/transforms.py), inside the pipeline's workers.
A malformed record raises `RecordError`, which names the file, the record id and the field; the
pipeline either raises it or skips the record and counts `reason` (its `on_error`).

Media paths and the data root: a record's "image" / "audio" / "series" paths are relative to the
source's `root` (default: the manifest's folder). By default (`allow_outside_root=False`) a path that
leaves the root — "../../etc/passwd", an absolute path elsewhere, or a symlink inside the root that
points outside it (symlinks are resolved with os.path.realpath) — is a bad record (reason
"path_outside_root"): a manifest from elsewhere cannot make the loader read arbitrary files.
`allow_outside_root=True` (a source keyword, e.g. `SourceConfig(..., options={"allow_outside_root":
True})`) accepts any path, for manifests that point into a shared media store.

Manifests are UTF-8, with or without a byte-order mark (read as "utf-8-sig").

File formats (one example each in README "Data formats"):
  * LLaVA: a JSON list or JSONL of {"id", "image": relative path or list, "conversations": [...]};
    text-only records omit "image"; "audio" / "series" keys (paths) are read the same way.
  * Audio manifest: JSONL of {"id", "audio": path, "text": transcript or answer, "question": optional}.
    Without a question a record is ASR: [audio] ++ "\\x16Assistant: {text}\\x17" (docs/evaluation.md).
  * Time series: a CSV (header row; one time column is ignored; one or more value columns) or an NPZ
    (an array float[N] or float[N, C]) cut into windows of `context` steps followed by `horizon`
    target steps every `stride` steps, split by time (see `SeriesSource`).
  * TFDS: any ArrayRecord builder through `tfds.data_source(..., try_gcs=False)` (no TensorFlow
    needed), each example mapped to a record by `to_record` (default `tfds_record`).
"""

from __future__ import annotations

import csv
import gc
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from modrwkv_jax.data.conversation import ConversationError, parse_turns

MEDIA_FIELDS = ("image", "audio", "series")


class RecordError(ValueError):
  """A record that cannot be used. `reason` is the counter key when the pipeline skips it."""

  def __init__(self, source: str, record_id, field: str, message: str, reason: str = "bad_record"):
    super().__init__(f"{source}: record {record_id!r}: field {field!r}: {message}")
    self.source, self.record_id, self.field, self.reason = source, record_id, field, reason
    self.message = message

  def __reduce__(self):  # survives the trip from a worker process
    return RecordError, (self.source, self.record_id, self.field, self.message, self.reason)


def make_record(source: str, record_id, index: int, conversations=(), *, preamble: str = "", image=(),
                audio=(), series=(), target=None) -> dict:
  """A record in the common schema (module docstring); `target` defaults to None per series item."""
  series = list(series)
  return {"id": str(record_id), "source": source, "index": index, "conversations": list(conversations),
          "preamble": preamble, "image": list(image), "audio": list(audio), "series": series,
          "target": list(target) if target is not None else [None] * len(series)}


def check_conversations(record: dict) -> None:
  """Validates the turns of a record (a forecasting record, with targets, may have none)."""
  has_target = any(t is not None for t in record.get("target", ()))
  if has_target and not record["conversations"]:
    return
  try:
    parse_turns(record["conversations"], require_assistant=not has_target)
  except ConversationError as e:
    raise RecordError(record["source"], record["id"], e.field, str(e), e.reason) from None


def _as_list(value, source, record_id, field) -> list:
  if value is None:
    return []
  if isinstance(value, str):
    return [value]
  if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
    return list(value)
  raise RecordError(source, record_id, field, f"expected a path or a list of paths; got {value!r:.80}",
                    "bad_field")


def _resolve(root: str, path: str, *, real_root: str | None, source: str, record_id, field: str) -> str:
  """`path` joined to `root`. With `real_root` (the root with symlinks resolved): RecordError
  "path_outside_root" if the path resolves (symlinks followed) outside it (module docstring)."""
  full = path if os.path.isabs(path) else os.path.join(root, path)
  if real_root is None:
    return full
  try:
    real = os.path.realpath(full)
    inside = os.path.commonpath([real_root, real]) == real_root
  except (ValueError, OSError) as e:  # NUL bytes, symlink loops
    raise RecordError(source, record_id, field, f"path {path!r:.200} cannot be resolved ({e})", "bad_field") from None
  if not inside:
    raise RecordError(source, record_id, field, f"path {path!r:.200} resolves to {real!r:.200}, outside the data "
                      f"root {real_root!r}; move the file under the root, or pass allow_outside_root=True to the "
                      "source if the manifest is trusted", "path_outside_root")
  return full


_BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark some editors write at the start of a file


class _JsonRecords:
  """A JSON list (parsed once) or JSONL file (indexed by line offsets, each line parsed on access)."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f"{self.path}: no such file")
    with open(self.path, "rb") as f:
      head = f.read(4096).removeprefix(_BOM).lstrip()
    self._items, self._offsets = None, None
    if head.startswith(b"["):
      with open(self.path, encoding="utf-8-sig") as f:
        try:
          items = json.load(f)
        except json.JSONDecodeError as e:
          raise ValueError(f"{self.path}: not valid JSON ({e}); expected a JSON list of records or JSONL") from e
        except UnicodeDecodeError as e:
          raise ValueError(f"{self.path}: not UTF-8 text ({e}); save the manifest as UTF-8") from e
      if not isinstance(items, list):
        raise ValueError(f"{self.path}: the JSON top level is a {type(items).__name__}; expected a list of records")
      self._items = items
    else:
      offsets, pos = [], 0
      with open(self.path, "rb") as f:
        for line in f:
          if line.removeprefix(_BOM).strip():
            offsets.append(pos)
          pos += len(line)
      self._offsets = np.asarray(offsets, np.int64)

  def __len__(self) -> int:
    return len(self._items) if self._items is not None else len(self._offsets)

  def get(self, index: int):
    """(record dict, line number or None); a malformed line raises RecordError."""
    if self._items is not None:
      item, where = self._items[index], None
    else:
      with open(self.path, "rb") as f:
        f.seek(int(self._offsets[index]))
        line = f.readline()
      where = f"line at byte {int(self._offsets[index])}"
      try:
        item = json.loads(line.decode("utf-8-sig"))  # -sig: the first line may start with a byte-order mark
      except UnicodeDecodeError as e:
        raise RecordError(self.path, f"#{index}", "<json>", f"{where}: not UTF-8 text ({e})", "bad_json") from None
      except json.JSONDecodeError as e:
        raise RecordError(self.path, f"#{index}", "<json>", f"{where}: not valid JSON ({e})", "bad_json") from None
    if not isinstance(item, dict):
      raise RecordError(self.path, f"#{index}", "<record>", f"expected a JSON object; got {type(item).__name__}",
                        "bad_json")
    return item


class _JsonSource:
  """A JSON / JSONL file of records with media paths relative to `root` (default: the file's folder);
  paths outside the root are bad records unless `allow_outside_root` (module docstring)."""

  def __init__(self, path: str | os.PathLike, *, root: str | os.PathLike | None = None,
               allow_outside_root: bool = False):
    self._records = _JsonRecords(path)
    self.path = self._records.path
    self.root = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(self.path))
    self.allow_outside_root = bool(allow_outside_root)
    self._real_root = None if self.allow_outside_root else os.path.realpath(self.root)

  def _media_path(self, path: str, record_id, field: str) -> str:
    return _resolve(self.root, path, real_root=self._real_root, source=self.path, record_id=record_id,
                    field=field)

  def __len__(self) -> int:
    return len(self._records)

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.path!r}, {len(self)} records)"


class LlavaSource(_JsonSource):
  """LLaVA-format conversations (JSON list or JSONL), media paths relative to `root`.

  Args:
    path: the .json / .jsonl file.
    root: folder the "image" / "audio" / "series" paths are relative to (default: the file's folder).
    allow_outside_root: accept paths that resolve outside `root` (default False: reason "path_outside_root").
  """

  def __getitem__(self, index: int) -> dict:
    raw = self._records.get(index)
    rid = raw.get("id", f"#{index}")
    media = {f: [self._media_path(p, rid, f"{f}[{k}]") for k, p in enumerate(_as_list(raw.get(f), self.path, rid, f))]
             for f in MEDIA_FIELDS}
    if "conversations" not in raw:
      raise RecordError(self.path, rid, "conversations", "missing", "empty_conversation")
    if not isinstance(raw["conversations"], list):
      raise RecordError(self.path, rid, "conversations", f"expected a list of turns; got {raw['conversations']!r:.80}",
                        "bad_conversation")
    record = make_record(self.path, rid, index, raw["conversations"], **media)
    check_conversations(record)
    return record


class AudioManifestSource(_JsonSource):
  """A JSONL audio manifest: {"id", "audio": path, "text": str, "question": optional str} per line.

  ASR records (no question) become `[audio] ++ "\\x16Assistant: {text}\\x17"`; audio-QA records
  `[audio] ++ "\\x16User: {question}\\x17" ++ "\\x16Assistant: {text}\\x17"`. The audio goes in the
  preamble ("<audio>") unless the question itself holds an "<audio>" placeholder.
  """

  def __getitem__(self, index: int) -> dict:
    raw = self._records.get(index)
    rid = raw.get("id", f"#{index}")
    audio = _as_list(raw.get("audio"), self.path, rid, "audio")
    if len(audio) != 1:
      raise RecordError(self.path, rid, "audio", f"expected one audio path; got {raw.get('audio')!r:.80}",
                        "missing_field")
    text, question = raw.get("text"), raw.get("question")
    if not isinstance(text, str) or not text.strip():
      raise RecordError(self.path, rid, "text", f"expected a non-empty transcript/answer; got {text!r:.80}",
                        "empty_conversation")
    if question is not None and not isinstance(question, str):
      raise RecordError(self.path, rid, "question", f"expected a string; got {question!r:.80}", "bad_field")
    turns = ([{"from": "human", "value": question}] if question else []) + [{"from": "gpt", "value": text}]
    preamble = "" if question and "<audio>" in question else "<audio>"
    return make_record(self.path, rid, index, turns, preamble=preamble,
                       audio=[self._media_path(audio[0], rid, "audio[0]")])


# ---------------------------------------------------------------------------------------------
# Time series.


def _check_npz_member(path: str, npz, key: str) -> None:
  """Refuses an .npz member whose header claims more data than the member holds (before numpy allocates)."""
  info = npz.zip.getinfo(f"{key}.npy")
  with npz.zip.open(info) as f:
    version = np.lib.format.read_magic(f)
    shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                       else np.lib.format.read_array_header_2_0(f))
  need = int(np.prod(shape, dtype=object)) * dtype.itemsize
  if need > info.file_size:
    raise ValueError(f"{path}: array {key!r} claims shape {shape} ({need:,} bytes) but the file holds "
                     f"{info.file_size:,} bytes: truncated or corrupt")


def read_series_file(path: str | os.PathLike, *, columns: Sequence[str] | None = None,
                     time_column: str | None = None, key: str | None = None) -> tuple[np.ndarray, list[str]]:
  """A series file as (float64[N, C], column names).

  CSV: a header row, then one row per time step; `columns` picks value columns (default: every column
  but `time_column` whose non-empty cells all parse as numbers). Empty cells read as NaN.
  NPZ / NPY: the array `key` (default: the only array) of shape [N] or [N, C].
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such series file")
  if path.endswith((".npz", ".npy")):
    # .npy is memory-mapped (numpy refuses a header that promises more bytes than the file holds);
    # an .npz member's header is checked against the member's size before numpy allocates it.
    try:
      data = np.load(path, allow_pickle=False, mmap_mode="r" if path.endswith(".npy") else None)
    except (ValueError, OSError, EOFError) as e:
      raise ValueError(f"{path}: not a readable .npy / .npz array file ({e})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
      names = list(data.keys())
      if key is None and len(names) != 1:
        raise ValueError(f"{path}: holds arrays {names}; pass key= to pick one")
      key = key or names[0]
      if key not in names:
        raise ValueError(f"{path}: no array {key!r}; arrays: {names}")
      _check_npz_member(path, data, key)
      data = data[key]
    x = np.asarray(data, np.float64)
    if x.ndim == 1:
      x = x[:, None]
    if x.ndim != 2:
      raise ValueError(f"{path}: series array has shape {x.shape}; expected [N] or [N, C]")
    return x, [f"{key or 'series'}[{c}]" for c in range(x.shape[1])]
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  if len(rows) < 2:
    raise ValueError(f"{path}: expected a header row and at least one data row")
  header, body = rows[0], rows[1:]

  def parse(cell: str) -> float:
    return float(cell) if cell.strip() else math.nan

  if columns is None:
    columns = []
    for c, name in enumerate(header):
      if name == time_column:
        continue
      try:
        [parse(r[c]) for r in body]
        columns.append(name)
      except (ValueError, IndexError):
        pass
    if not columns:
      raise ValueError(f"{path}: no numeric column among {header}")
  missing = [c for c in columns if c not in header]
  if missing:
    raise ValueError(f"{path}: no column(s) {missing}; the header is {header}")
  idx = [header.index(c) for c in columns]
  try:
    x = np.array([[parse(r[i]) for i in idx] for r in body], np.float64)
  except (ValueError, IndexError) as e:
    raise ValueError(f"{path}: a value of columns {list(columns)} is not a number ({e})") from e
  return x, list(columns)


def split_bounds(n: int, fractions: Sequence[float]) -> dict[str, tuple[int, int]]:
  """Chronological split of steps [0, n): {"train": (0, a), "validation": (a, b), "test": (b, n)}."""
  if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
    raise ValueError(f"split fractions must be three non-negative numbers summing to 1; got {fractions}")
  a = int(math.floor(n * fractions[0]))
  b = int(math.floor(n * (fractions[0] + fractions[1])))
  return {"train": (0, a), "validation": (a, b), "test": (b, n)}


def window_starts(bounds: tuple[int, int], context: int, horizon: int, stride: int) -> np.ndarray:
  """Start steps t of the windows x[t : t+context] -> x[t+context : t+context+horizon] of a split.

  A window belongs to the split holding all of its target steps; its context may reach back into the
  earlier split (the usual forecasting protocol: validation/test look back into the past).
  """
  lo, hi = bounds
  first = max(0, lo - context)
  last = hi - context - horizon  # inclusive
  return np.arange(first, last + 1, stride, dtype=np.int64) if last >= first else np.zeros(0, np.int64)


class SeriesSource:
  """Sliding forecasting windows over a CSV/NPZ series, split by time.

  Args:
    path: the CSV / NPZ / NPY file (see `read_series_file`).
    split: "train" | "validation" | "test" (chronological thirds given by `split_fractions`).
    context: look-back steps per window (the encoder input); horizon: target steps; stride: step
      between window starts.
    columns, time_column, key: which values to read (see `read_series_file`). One column gives
      univariate windows float[context]; several give float[context, C].
    prompt: optional user text; None makes forecasting records with no turns, only [series tokens].
  Records: {"series": [x[t : t+context]], "target": [x[t+context : t+context+horizon]], id "{file}@{t}"};
  a window with NaN raises RecordError (reason "nan_in_series").
  """

  def __init__(self, path: str | os.PathLike, *, split: str = "train", context: int, horizon: int,
               stride: int = 1, split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
               columns: Sequence[str] | None = None, time_column: str | None = None, key: str | None = None,
               prompt: str | None = None):
    self.path = os.fspath(path)
    for name, v in (("context", context), ("horizon", horizon), ("stride", stride)):
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f"SeriesSource({self.path}): {name} must be a positive int, got {v!r}")
    values, self.columns = read_series_file(self.path, columns=columns, time_column=time_column, key=key)
    self.values = values.astype(np.float32)
    bounds = split_bounds(len(values), split_fractions)
    if split not in bounds:
      raise ValueError(f"SeriesSource({self.path}): split must be one of {sorted(bounds)}, got {split!r}")
    self.split, self.bounds = split, bounds[split]
    self.context, self.horizon, self.stride, self.prompt = context, horizon, stride, prompt
    self.starts = window_starts(self.bounds, context, horizon, stride)

  def __len__(self) -> int:
    return len(self.starts)

  def __repr__(self) -> str:
    return f"SeriesSource({self.path!r}, split={self.split!r}, {len(self)} windows)"

  def __getitem__(self, index: int) -> dict:
    t = int(self.starts[index])
    x = self.values if self.values.shape[1] > 1 else self.values[:, 0]
    ctx, tgt = x[t:t + self.context], x[t + self.context:t + self.context + self.horizon]
    rid = f"{os.path.basename(self.path)}@{t}"
    for field, v in (("series", ctx), ("target", tgt)):
      bad = ~np.isfinite(v)
      if bad.any():
        step = int(np.argwhere(bad)[0][0]) + t + (self.context if field == "target" else 0)
        raise RecordError(self.path, rid, field, f"{int(bad.sum())} NaN/inf value(s), first at step {step}",
                          "nan_in_series")
    turns = [{"from": "human", "value": self.prompt}] if self.prompt else []
    return make_record(self.path, rid, index, turns, preamble="<series>", series=[ctx], target=[tgt])


# ---------------------------------------------------------------------------------------------
# TFDS.


def import_tfds():
  """tensorflow_datasets, imported with garbage collected first: its import runs under etils' lazy-import
  hook, which breaks the imports of finalizers that a collection happens to run meanwhile (e.g. the
  semaphore cleanup of finished grain worker processes: "Relative import statements not supported")."""
  if "tensorflow_datasets" not in sys.modules:
    gc.collect()
  import tensorflow_datasets as tfds
  return tfds


def _text(v) -> str:
  if isinstance(v, bytes):
    return v.decode("utf-8")
  if isinstance(v, np.ndarray) and v.dtype == object and v.ndim == 0:
    return _text(v.item())
  return str(v)


def _scalar(v):
  """A one-element numpy value as a Python number (other values as they are, checked downstream)."""
  return v.item() if isinstance(v, (np.ndarray, np.generic)) and v.size == 1 else v


def tfds_record(example: Mapping, *, source: str, index: int) -> dict:
  """Default TFDS example -> record mapping.

  Understood features: "id"; "conversations" (a JSON string of LLaVA turns) or "question" + "answer"
  (one turn each; the question gets "<image>\\n" / "<audio>" added if it has an item and no placeholder);
  "image" (uint8 array [H, W(, C)] or encoded bytes); "audio" (float array) with "sampling_rate";
  "series" (+ "target").
  """
  rid = _text(example["id"]) if "id" in example else f"#{index}"
  if "conversations" in example:
    turns = example["conversations"]
    turns = json.loads(_text(turns)) if not isinstance(turns, list) else turns
  elif "question" in example and "answer" in example:
    turns = [{"from": "human", "value": _text(example["question"])},
             {"from": "gpt", "value": _text(example["answer"])}]
  else:
    raise RecordError(source, rid, "conversations", "the example has neither 'conversations' nor "
                      "'question' + 'answer'; pass to_record= to map its features", "missing_field")
  image = [example["image"]] if "image" in example else []
  # The rate is checked when the clip is decoded (transforms): a bad one is then a counted bad record.
  audio = ([{"array": example["audio"], "sampling_rate": _scalar(example["sampling_rate"])}]
           if "audio" in example else [])
  series = [np.asarray(example["series"], np.float32)] if "series" in example else []
  target = [np.asarray(example["target"], np.float32)] if "target" in example else None
  return make_record(source, rid, index, turns, image=image, audio=audio, series=series, target=target)


class TfdsSource:
  """Records from a prepared TFDS ArrayRecord dataset, without TensorFlow.

  Args:
    name: a registered dataset name (with `data_dir`) for `tfds.data_source(name, split=..., try_gcs=False)`,
      or a prepared builder directory (".../name/1.0.0") read with `tfds.builder_from_directory`.
    split: the TFDS split ("train", "test[:10%]", ...).
    to_record: maps (example dict, source=..., index=...) to a record (default `tfds_record`).
  The ArrayRecord reader is opened lazily in each process and dropped when pickled.
  """

  def __init__(self, name: str, *, split: str, data_dir: str | None = None,
               to_record: Callable[..., dict] | None = None):
    self.name, self.split, self.data_dir = os.fspath(name), split, data_dir
    self.to_record = to_record or tfds_record
    self._source = None
    self._len = len(self._open())

  @classmethod
  def from_builder(cls, builder, split: str, **kwargs) -> TfdsSource:
    """From a prepared `tfds.core.DatasetBuilder` (its data_dir)."""
    return cls(str(builder.data_dir), split=split, **kwargs)

  def _open(self):
    if self._source is None:
      tfds = import_tfds()
      if os.path.isdir(self.name) and os.path.isfile(os.path.join(self.name, "dataset_info.json")):
        self._source = tfds.builder_from_directory(self.name).as_data_source(split=self.split)
      else:
        self._source = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir, try_gcs=False)
    return self._source

  def __getstate__(self):
    return {**self.__dict__, "_source": None}

  def __len__(self) -> int:
    return self._len

  def __repr__(self) -> str:
    return f"TfdsSource({self.name!r}, split={self.split!r}, {len(self)} records)"

  def __getitem__(self, index: int) -> dict:
    where = f"tfds:{self.name}[{self.split}]"
    record = self.to_record(self._open()[index], source=where, index=index)
    check_conversations(record)
    return record


SOURCE_KINDS = {"llava": LlavaSource, "audio": AudioManifestSource, "series": SeriesSource, "tfds": TfdsSource}


def open_source(kind: str, path: str, split: str, **options):
  """A source by kind name: "llava" | "audio" | "series" | "tfds".

  `path` may contain "{split}" (replaced by the split name), e.g. "demo/shapes_vqa/{split}.json".
  Series sources split a single file by time (`split=` goes to SeriesSource); TFDS sources read the
  TFDS split. Options are the source's keyword arguments.
  """
  if kind not in SOURCE_KINDS:
    raise ValueError(f"unknown source kind {kind!r}; expected one of {sorted(SOURCE_KINDS)}")
  path = os.fspath(path).replace("{split}", split)
  if kind in ("series", "tfds"):
    return SOURCE_KINDS[kind](path, split=split, **options)
  return SOURCE_KINDS[kind](path, **options)
