"""Experiment configs: the schema every `configs/*.py` file fills in, command-line overrides, and the
library objects (ModRWKVConfig, PeftConfig, PipelineConfig) a config describes.

A config file is a Python module with `get_config() -> ml_collections.ConfigDict`, built on
`base_config()` (configs/tiny.py is the smallest complete example):

    from modrwkv_jax.training.config import base_config
    def get_config():
      c = base_config()
      c.model.rwkv.preset = "0.4B"
      ...
      return c

`python train.py --config configs/NAME.py --config.train.steps=2 --config.mesh.fsdp=2` loads the file
and applies the overrides (`apply_overrides`): a key that does not exist fails with the closest names;
values are parsed as Python literals and must match the type of the value they replace.

The schema (`base_config`), section by section:
  seed                 int: parameter init, dropout-free training RNG, data shuffling.
  model.rwkv           RWKV7Config fields, or `preset` ("0.1B", "0.4B", "1.5B", "2.9B") plus overrides.
  model.modalities     {"image" | "audio" | "series": {encoder, encoder_preset, encoder_config,
                        encoder_options, train_encoder, projector: {kind, compressor, hidden_mult}}}.
  model.max_length, model.forecast_horizon
  model.peft           method None (no adapters) or "bone" | "bat" | "lora", r, alpha, lora_init, targets.
  data                 sources (list of {kind, path, weight, options}), curriculum (phases {steps, sources}
                       read before `sources`), the per-modality transforms, the pipeline settings, and
                       `builder` ("tiny" | "demo" | None: offline data built on first use into `cache_dir`).
  train                steps, batch_size (global), grad_accum, trainable groups/regexes, logging,
                       evaluation, checkpointing, guard rails, profiling. Parameters and optimizer
                       state are float32; the compute dtype is model.rwkv.dtype and each encoder's dtype
                       ("bfloat16": fp32 master weights with bf16 matmuls).
  optim                lr, warmup, schedule ("cosine" | "wsd" | "constant"), b1, b2, eps, weight_decay,
                       clip, lr_multipliers.
  mesh                 data, fsdp, tensor (−1 fills the devices).
  init                 rwkv_pth, encoder_hf.<modality>, projectors (an .npz), from_checkpoint.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

# Subtrees whose keys are free (dicts of library-config fields, modality names, source lists).
OPEN_PATHS = ("model.rwkv", "model.modalities", "init.encoder_hf", "data.sources", "optim.lr_multipliers")
PART_GROUPS = ("adapter", "rwkv", "encoder", "peft", "head")


def base_config() -> ml_collections.ConfigDict:
  """Every key a config may set, with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.name = ""

  c.model = ml_collections.ConfigDict()
  c.model.rwkv = ml_collections.ConfigDict({"preset": None})
  c.model.modalities = ml_collections.ConfigDict()
  c.model.max_length = 2048
  c.model.forecast_horizon = 0
  c.model.peft = ml_collections.ConfigDict({"method": None, "r": 64, "alpha": None, "lora_init": "kaiming",
                                            "targets": None})

  c.data = ml_collections.ConfigDict()
  c.data.builder = None  # "tiny" | "demo": build offline data into cache_dir on first use
  c.data.cache_dir = os.path.join("build", "data")
  c.data.root = ""  # "{root}" in source paths and options: where the user keeps downloaded datasets
  c.data.sources = []
  c.data.eval_sources = None  # None: `sources` read with eval_split
  # A curriculum: phases of training steps that read their own sources (same format as data.sources)
  # before data.sources takes over, e.g. [dict(steps=60, sources=[dict(kind="llava", path=...)])].
  c.data.curriculum = []
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.layout = "prefix"
  c.data.max_length = 2048
  c.data.truncate = False
  c.data.pad_multiple = 16
  c.data.length_buckets = ()
  c.data.bucket_window = 16
  # Sequence packing: rows of data.max_length positions (rounded up to its bucket) filled with whole
  # examples, `segment_ids` in the batch; train.batch_size then counts rows, not examples.
  c.data.packing = False
  c.data.mixture_length = None
  c.data.on_error = "skip"
  c.data.read_threads = 2
  c.data.prefetch = 2
  c.data.worker_count = 0
  # max_items: most items of one record; row_items: with packing, most items of one packed row (the
  # batch's item dimension; None: derived for fixed-size images, the most in the batch otherwise).
  c.data.image = ml_collections.ConfigDict({"processor": "siglip", "size": None, "max_items": None,
                                            "row_items": None})
  c.data.audio = ml_collections.ConfigDict({"frontend": "whisper", "feature_size": 80, "chunk_length": 30,
                                            "pad_to_chunk": True, "max_seconds": None, "max_items": None,
                                            "row_items": None})
  c.data.series = ml_collections.ConfigDict({"length": None, "horizon": None, "channels": None, "max_items": None,
                                             "row_items": None})

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 32  # global, over all hosts and micro-batches
  c.train.grad_accum = 1
  c.train.trainable = ("adapter", "rwkv")  # named groups and/or regexes over param paths
  c.train.forecast_weight = 1.0  # weight of the forecasting MSE next to the token loss
  # K > 0: the vocabulary head and softmax run at each row's first K label positions only (the same loss;
  # a batch with a row of more labels stops the run with an error naming this key). 0: every position.
  c.train.label_capacity = 0
  c.train.log_every = 10
  c.train.eval_every = 0  # 0: no periodic validation
  c.train.eval_batches = 8
  c.train.checkpoint_every = 500  # 0: at the end and on a signal (SIGTERM / SIGINT) only
  c.train.keep_checkpoints = 3
  c.train.max_skipped_in_a_row = 10
  c.train.profile_steps = ()  # (first, last): a jax.profiler trace of these steps into workdir/profile
  c.train.progress = True
  c.train.peak_flops = None  # per device; None: the device table, or a measured matmul peak on CPU

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3
  c.optim.warmup = 100
  c.optim.schedule = "cosine"  # cosine | wsd | constant
  c.optim.end_lr_ratio = 0.0
  c.optim.decay_fraction = 0.1  # wsd: the final fraction of steps that decays
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0  # decoupled (AdamW), matrices only
  c.optim.clip = 1.0
  c.optim.lr_multipliers = ml_collections.ConfigDict({"att/w0$": 2.0})  # regex over param paths -> lr factor

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

  c.init = ml_collections.ConfigDict()
  c.init.rwkv_pth = None
  c.init.encoder_hf = ml_collections.ConfigDict()
  c.init.projectors = None
  c.init.from_checkpoint = None
  return c


# ---------------------------------------------------------------------------------------------
# Files, overrides, checks.

def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Runs `get_config()` of a config file (a Python file the user wrote: configs are code by design)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {path}: no such file")
  module = _load_module(path)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config {path}: the file defines no get_config()")
  config = module.get_config()
  check_schema(config, source=path)
  return config


def _load_module(path: str):
  spec = importlib.util.spec_from_file_location(f"_modrwkv_config_{abs(hash(os.path.abspath(path)))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling(file: str, name: str):
  """The config module `name`.py next to `file` (a config's `__file__`): configs are loaded by path, not
  as a package, so `sibling(__file__, "common")` shares code between them from any working directory."""
  path = os.path.join(os.path.dirname(os.path.abspath(file)), f"{name}.py")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{file}: no config module {name!r} next to it ({path})")
  return _load_module(path)


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    path = f"{prefix}{k}"
    if isinstance(v, Mapping) and not any(path == p for p in OPEN_PATHS):
      out.update(_flat(v, path + "."))
    else:
      out[path] = v
  return out


def _closest(name: str, known: Sequence[str]) -> str:
  near = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
  if not near:  # same last component under another section
    last = name.rsplit(".", 1)[-1]
    near = [k for k in known if k.rsplit(".", 1)[-1] == last][:4]
  return f"; closest: {', '.join(near)}" if near else ""


def _under_open(path: str) -> bool:
  return any(path == p or path.startswith(p + ".") for p in OPEN_PATHS)


def check_schema(config: ml_collections.ConfigDict, source: str = "config") -> None:
  """Every key of `config` exists in `base_config()` (free subtrees aside), with a compatible type."""
  known = _flat(base_config().to_dict())
  for path, value in _flat(config.to_dict()).items():
    if _under_open(path):
      continue
    if path not in known:
      raise KeyError(f"{source}: unknown config key {path!r}{_closest(path, list(known))}")


def _parse(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string: --config.init.rwkv_pth=/data/rwkv.pth


def _coerce(path: str, new, old):
  if old is None or new is None:
    return new
  if isinstance(old, bool):
    if isinstance(new, bool):
      return new
    if isinstance(new, str) and new.lower() in ("true", "false"):
      return new.lower() == "true"
  elif isinstance(old, int) and isinstance(new, int) and not isinstance(new, bool):
    return new
  elif isinstance(old, float) and isinstance(new, (int, float)) and not isinstance(new, bool):
    return float(new)
  elif isinstance(old, str) and isinstance(new, str):
    return new
  elif isinstance(old, (tuple, list)) and isinstance(new, (tuple, list)):
    return type(old)(new)
  elif isinstance(old, Mapping) and isinstance(new, Mapping):
    return new
  raise ValueError(f"--config.{path}={new!r}: expected a {type(old).__name__} like the current value {old!r}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies "a.b.c=value" overrides (the text after `--config.`) to a copy of `config`.

  Values are Python literals (`2`, `1e-4`, `'cosine'`, `(3, 2)`, `None`); anything else is a string.
  Keys must exist in the config (or lie under a free subtree such as `model.modalities.image...` or
  `init.encoder_hf`), else KeyError listing the closest names.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  flat = _flat(config.to_dict())
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"--config.{item}: an override needs a value (--config.{item}=VALUE)")
    path, text = item.split("=", 1)
    value = _parse(text)
    keys = path.split(".")
    node = config
    for i, k in enumerate(keys[:-1]):
      sub = ".".join(keys[:i + 1])
      if k not in node:
        if _under_open(sub) or _under_open(".".join(keys[:i])):
          node[k] = ml_collections.ConfigDict()
        else:
          raise KeyError(f"--config.{path}: unknown config key {sub!r}{_closest(path, list(flat))}")
      node = node[k]
    last = keys[-1]
    if last not in node:
      if not _under_open(path):
        raise KeyError(f"--config.{path}: unknown config key {path!r}{_closest(path, list(flat))}")
      node[last] = value
    else:
      old = node[last]
      if isinstance(old, ml_collections.ConfigDict):
        raise ValueError(f"--config.{path}: {path!r} is a section; set one of its keys: "
                         f"{sorted(old.keys())}")
      node[last] = _coerce(path, value, old)
  return config


def diff(base: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{key: (before, after)} of the keys whose values differ (for the start-up summary)."""
  a, b = _flat(base.to_dict()), _flat(config.to_dict())
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=1, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------
# The library objects a config describes.

ENCODER_WIDTH = {"siglip": "hidden_size", "clip": "hidden_size", "whisper": "d_model", "wavlm": "hidden_size",
                 "wavenet": "out_channels", "timer": "width"}


def rwkv_config(config):
  from modrwkv_jax.models import rwkv7
  fields = dict(config.model.rwkv.to_dict())
  preset = fields.pop("preset", None)
  known = {f.name for f in dataclasses.fields(rwkv7.RWKV7Config)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise KeyError(f"model.rwkv: unknown RWKV7Config fields {unknown}; known: {sorted(known)}")
  return rwkv7.preset(preset, **fields) if preset else rwkv7.RWKV7Config(**fields)


def encoder_config(name: str, m) -> Any:
  """The encoder config of modality `name` from `model.modalities.<name>`: `encoder_preset` (siglip,
  clip) plus `encoder_config` field overrides, or the fields alone."""
  from modrwkv_jax.models import modrwkv
  if m.get("encoder") not in modrwkv.ENCODERS:
    raise ValueError(f"model.modalities.{name}.encoder must be one of {sorted(modrwkv.ENCODERS)}; "
                     f"got {m.get('encoder')!r}")
  module = modrwkv.ENCODERS[m["encoder"]][0]
  fields = dict(m.get("encoder_config") or {})
  for k, v in fields.items():
    if isinstance(v, list):
      fields[k] = tuple(v)
  preset = m.get("encoder_preset")
  if preset:
    return module.preset(preset, **fields)
  cls = {"siglip": "SiglipConfig", "clip": "CLIPConfig", "whisper": "WhisperConfig", "wavlm": "WavLMConfig",
         "wavenet": "WaveNetConfig", "timer": "TimerConfig"}[m["encoder"]]
  cls = getattr(module, cls)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise KeyError(f"model.modalities.{name}.encoder_config: unknown {cls.__name__} fields {unknown}; "
                   f"known: {sorted(known)}")
  return cls(**fields)


def model_config(config):
  """The ModRWKVConfig of `config.model`."""
  from modrwkv_jax.models import modrwkv
  from modrwkv_jax.models import projector as proj
  rwkv = rwkv_config(config)
  modalities = []
  for name in ("image", "audio", "series"):
    if name not in config.model.modalities:
      continue
    m = config.model.modalities[name].to_dict()
    unknown = sorted(set(m) - {"encoder", "encoder_preset", "encoder_config", "encoder_options", "train_encoder",
                               "projector"})
    if unknown:
      raise KeyError(f"model.modalities.{name}: unknown keys {unknown}")
    enc = encoder_config(name, m)
    p = dict(m.get("projector") or {})
    compressor = p.get("compressor")
    projector = proj.ProjectorConfig(p.get("kind", {"image": "vision", "audio": "audio", "series": "series"}[name]),
                                     getattr(enc, ENCODER_WIDTH[m["encoder"]]), rwkv.n_embd,
                                     tuple(compressor) if compressor else None, p.get("hidden_mult", 4))
    options = tuple(sorted(dict(m.get("encoder_options") or {}).items()))
    modalities.append((name, modrwkv.ModalityConfig(m["encoder"], enc, projector, options,
                                                   bool(m.get("train_encoder", False)))))
  extra = sorted(set(config.model.modalities) - {"image", "audio", "series"})
  if extra:
    raise KeyError(f"model.modalities: unknown modalities {extra}; known: image, audio, series")
  return modrwkv.ModRWKVConfig(rwkv, tuple(modalities), config.model.max_length, config.model.forecast_horizon)


def peft_config(config):
  """The PeftConfig of `config.model.peft`, or None when `method` is None."""
  p = config.model.peft
  if not p.method:
    return None
  from modrwkv_jax import peft
  kwargs = dict(method=p.method, r=p.r, alpha=p.alpha, lora_init=p.lora_init)
  if p.targets:
    kwargs["targets"] = tuple(p.targets)
  return peft.PeftConfig(**kwargs)


def check_packing(config) -> None:
  """data.packing with a forecasting head is refused: the head reads the first series item and the
  last position of each row, which a packed row shares between examples."""
  if config.data.get("packing", False) and config.model.forecast_horizon:
    raise ValueError(f"data.packing=True with model.forecast_horizon={config.model.forecast_horizon}: forecasting "
                     "batches cannot be packed (the head forecasts from each row's first series item and last "
                     "position); set --config.data.packing=False")


def curriculum(config) -> list[tuple[int, list]]:
  """data.curriculum checked: [(steps, sources)] for the phases that run before data.sources.

  Each phase is dict(steps=N > 0, sources=[...]) in data.sources' format; together they must leave
  data.sources at least one step of train.steps."""
  phases = []
  for i, phase in enumerate(config.data.get("curriculum") or ()):
    phase = dict(phase)
    steps, sources = phase.get("steps"), phase.get("sources")
    if sorted(phase) != ["sources", "steps"] or not isinstance(steps, int) or isinstance(steps, bool) or steps < 1 \
        or not sources:
      raise ValueError(f"data.curriculum[{i}]: needs steps (a positive int) and sources (a non-empty list in "
                       f"data.sources' format); got {phase!r}")
    phases.append((steps, list(sources)))
  total = sum(n for n, _ in phases)
  if phases and total >= config.train.steps:
    raise ValueError(f"data.curriculum: its phases take {total} steps, but train.steps is {config.train.steps}: "
                     "data.sources would never be read")
  return phases


def pipeline_config(config, model, *, split_sources: str = "train", batch_size: int, sources=None,
                    where: str = "data.sources"):
  """The data.PipelineConfig of `config.data` for the modalities of `model`; `batch_size` rows per host.
  `sources` (named `where` in errors) replaces data.sources, e.g. a data.curriculum phase's."""
  from modrwkv_jax.data import image as image_lib
  from modrwkv_jax.data import pipeline as pipe
  from modrwkv_jax.data.audio import WhisperFeatureConfig
  from modrwkv_jax.models import modrwkv
  check_packing(config)
  d = config.data
  if sources is None:
    sources = d.sources if split_sources == "train" or d.eval_sources is None else d.eval_sources
  if not sources:
    raise ValueError(f"{where} is empty: the config names no training data")
  srcs = []
  for i, s in enumerate(sources):
    s = dict(s)
    unknown = sorted(set(s) - {"kind", "path", "weight", "options"})
    if unknown or "kind" not in s or "path" not in s:
      raise ValueError(f"{where}[{i}]: needs kind and path (optional weight, options); got keys {sorted(s)}")
    srcs.append(pipe.SourceConfig(s["kind"], _data_path(config, s["path"]), float(s.get("weight", 1.0)),
                                  _data_options(config, dict(s.get("options") or {}))))
  names = [n for n, _ in model.modalities]
  kwargs = {}
  if "image" in names:
    kwargs["image"] = pipe.ImageConfig(image_processor(config), modrwkv.pipeline_num_tokens(model, "image"),
                                       d.image.max_items, d.image.get("row_items"))
  if "audio" in names:
    au = d.audio
    whisper = WhisperFeatureConfig(feature_size=au.feature_size, chunk_length=au.chunk_length)
    kwargs["audio"] = pipe.AudioConfig(modrwkv.pipeline_num_tokens(model, "audio", whisper.hop_length),
                                       au.frontend, whisper=whisper, pad_to_chunk=au.pad_to_chunk,
                                       max_seconds=au.max_seconds, max_items=au.max_items,
                                       row_items=au.get("row_items"))
  if "series" in names:
    se = d.series
    kwargs["series"] = pipe.SeriesConfig(modrwkv.pipeline_num_tokens(model, "series"), se.channels, se.max_items,
                                         se.length, se.horizon, se.get("row_items"))
  return pipe.PipelineConfig(
      sources=tuple(srcs), batch_size=batch_size, layout=d.layout, max_length=d.max_length, truncate=d.truncate,
      pad_multiple=d.pad_multiple, length_buckets=tuple(d.length_buckets), bucket_window=d.bucket_window,
      packing=bool(d.get("packing", False)), mixture_length=d.mixture_length, on_error=d.on_error,
      read_threads=d.read_threads, prefetch=d.prefetch, worker_count=d.worker_count, **kwargs)


def image_processor(config):
  """The image preprocessing: the encoder snapshot's preprocessor_config.json when `init.encoder_hf.image`
  names a folder holding one (the resize filter, mean and std the encoder was trained with), else the
  defaults of `data.image.processor`; `data.image.size` sets the square output size (for "clip": the
  shortest edge and the centre crop)."""
  from modrwkv_jax.data import image as image_lib
  im = config.data.image
  over = {}
  if im.size:
    if im.processor == "clip":
      over = {"size": {"shortest_edge": im.size}, "crop_size": (im.size, im.size)}
    else:
      over = {"size": {"height": im.size, "width": im.size}}
  folder = config.init.encoder_hf.get("image") if "image" in config.init.encoder_hf else None
  if folder and os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
    return image_lib.load_processor_config(folder, **over)
  return image_lib.default_config(im.processor, **over)


def _data_path(config, path: str) -> str:
  """`{cache}` in a source path is data.cache_dir (where `data.builder` writes), `{root}` is data.root."""
  if "{root}" in path and not config.data.root:
    raise ValueError(f"data source path {path!r} uses {{root}} but data.root is not set "
                     "(--config.data.root=/path/to/datasets)")
  return path.replace("{cache}", config.data.cache_dir).replace("{root}", config.data.root)


def _data_options(config, options: dict) -> dict:
  return {k: _data_path(config, v) if isinstance(v, str) else v for k, v in options.items()}


# train.* counts: (key, least allowed value, what 0 means where 0 is allowed).
_TRAIN_COUNTS = (("steps", 1, ""), ("batch_size", 1, ""), ("grad_accum", 1, ""), ("log_every", 1, ""),
                 ("eval_every", 0, "no periodic validation"), ("eval_batches", 1, ""),
                 ("checkpoint_every", 0, "a checkpoint at the end and on a signal only"), ("keep_checkpoints", 1, ""),
                 ("max_skipped_in_a_row", 1, ""), ("label_capacity", 0, "the head at every position"))


def check_values(config) -> None:
  """The train.* counts are integers in range (before anything is compiled): a 0 where the trainer divides
  by it would otherwise stop the run at its first step, after minutes of compilation."""
  for key, least, zero in _TRAIN_COUNTS:
    value = config.train.get(key)
    if value is None and key == "label_capacity":  # a run config written before the key existed
      continue
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      meaning = f" (0: {zero})" if zero else ""
      raise ValueError(f"train.{key}={value!r}: must be an integer >= {least}{meaning}")


def check_files(config) -> None:
  """Every weight file the config names exists (before anything is compiled)."""
  named = [("init.rwkv_pth", config.init.rwkv_pth), ("init.projectors", config.init.projectors)]
  named += [(f"init.encoder_hf.{k}", v) for k, v in config.init.encoder_hf.items()]
  for key, path in named:
    if path and not os.path.exists(path):
      raise FileNotFoundError(f"{key}={path!r}: no such file or folder (weights are read from local paths only; "
                              "see README 'Training on real weights')")
  for name in config.init.encoder_hf:
    if name not in config.model.modalities:
      raise KeyError(f"init.encoder_hf.{name}: the model has no {name!r} modality "
                     f"(model.modalities: {sorted(config.model.modalities)})")
