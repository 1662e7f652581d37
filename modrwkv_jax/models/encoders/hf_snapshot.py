"""Reading local Hugging Face snapshot folders (config.json + safetensors), with errors that name the file.

No torch and no network: a snapshot is a folder a user downloaded themselves, e.g. with
`huggingface-cli download google/siglip2-base-patch16-384 --local-dir ...`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

import numpy as np

from modrwkv_jax import tensor_files


class Snapshot:
  """One snapshot folder: its parsed config.json and its (memory-mapped) tensors by name.

  `take(name, shape)` pops tensors one by one so that `check_all_used()` can report keys the
  loader did not expect (a checkpoint of another architecture, or a loader bug).
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    if not os.path.isdir(self.path):
      raise FileNotFoundError(f"{self.path}: not a folder; expected a Hugging Face snapshot with config.json")
    self.config = read_config(self.path)
    self.tensors = dict(tensor_files.read_safetensors_dir(self.path))
    self._used: set[str] = set()

  @property
  def source(self) -> str:
    return self.path

  def find_prefix(self, candidates: Iterable[str], probe: str) -> str:
    """The first prefix p in `candidates` for which p + probe is a tensor name.

    E.g. a full SiglipModel stores 'vision_model.embeddings...', a SiglipVisionModel the same
    under no extra prefix; a WhisperModel stores 'model.encoder.conv1.weight' and a
    WhisperForConditionalGeneration 'model.encoder.conv1.weight' too, an encoder-only one 'conv1.weight'.
    """
    candidates = list(candidates)
    for p in candidates:
      if p + probe in self.tensors:
        return p
    raise KeyError(f"{self.path}: no tensor named {probe!r} under any of the prefixes {candidates}; "
                   f"this snapshot holds e.g. {sorted(self.tensors)[:5]}")

  def has(self, name: str) -> bool:
    return name in self.tensors

  def take(self, name: str, shape: tuple[int, ...] | None = None, dtype=np.float32) -> np.ndarray:
    """The tensor `name` as a `dtype` array, checked against `shape` (None: any shape)."""
    if name not in self.tensors:
      raise KeyError(f"{self.path}: missing tensor {name!r} (expected shape {shape})")
    x = self.tensors[name]
    if shape is not None and tuple(x.shape) != tuple(shape):
      raise ValueError(f"{self.path}: tensor {name!r} has shape {tuple(x.shape)}; expected {tuple(shape)} "
                       f"from config.json")
    self._used.add(name)
    return np.asarray(x, dtype=dtype)

  def unused(self, prefix: str = "") -> list[str]:
    return sorted(n for n in self.tensors if n.startswith(prefix) and n not in self._used)

  def check_all_used(self, prefix: str = "", ignore: Iterable[str] = ()) -> None:
    """Raises if tensors under `prefix` were never taken (ignoring names containing any of `ignore`)."""
    ignore = tuple(ignore)
    left = [n for n in self.unused(prefix) if not any(s in n for s in ignore)]
    if left:
      raise ValueError(f"{self.path}: {len(left)} unexpected tensors under {prefix!r}, e.g. {left[:5]}; "
                       f"is this a checkpoint of another architecture?")


def read_config(path: str | os.PathLike) -> dict:
  """The parsed config.json of a snapshot folder."""
  file = os.path.join(os.fspath(path), "config.json")
  if not os.path.exists(file):
    raise FileNotFoundError(f"{file}: missing; a Hugging Face snapshot folder needs config.json")
  try:
    with open(file) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{file}: not valid JSON: {e}") from e


def sub_config(config: Mapping, key: str) -> dict:
  """`config[key]` for two-tower checkpoints ('vision_config'), or config itself for tower-only ones."""
  if key in config:
    return dict(config[key])
  return dict(config)


def read_preprocessor_config(path: str | os.PathLike) -> dict:
  """The parsed preprocessor_config.json of a snapshot folder."""
  file = os.path.join(os.fspath(path), "preprocessor_config.json")
  if not os.path.exists(file):
    raise FileNotFoundError(f"{file}: missing; the image/audio processor settings come from this file")
  with open(file) as f:
    return json.load(f)
