"""Reading local Hugging Face snapshot folders (config.json + safetensors), with errors that name the file,
and placing the params a loader builds from them on devices (`to_device`, optionally sharded).

No torch and no network: a snapshot is a folder a user downloaded themselves, e.g. with
`huggingface-cli download google/siglip2-base-patch16-384 --local-dir ...`.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax import sharding, tensor_files


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
  """The parsed config.json of a snapshot folder (ValueError naming the file unless a JSON object)."""
  file = os.path.join(os.fspath(path), "config.json")
  if not os.path.exists(file):
    raise FileNotFoundError(f"{file}: missing; a Hugging Face snapshot folder needs config.json")
  return tensor_files.read_json_object(file)


def sub_config(config: Mapping, key: str, source: str = "config.json") -> dict:
  """`config[key]` for two-tower checkpoints ('vision_config'), or config itself for tower-only ones."""
  if key in config:
    if not isinstance(config[key], Mapping):
      raise ValueError(f"{source}: {key!r} is a {type(config[key]).__name__}; expected an object")
    return dict(config[key])
  return dict(config)


def read_preprocessor_config(path: str | os.PathLike) -> dict:
  """The parsed preprocessor_config.json of a snapshot folder (ValueError naming it unless a JSON object)."""
  file = os.path.join(os.fspath(path), "preprocessor_config.json")
  if not os.path.exists(file):
    raise FileNotFoundError(f"{file}: missing; the image/audio processor settings come from this file")
  return tensor_files.read_json_object(file)


def to_device(params: dict, param_dtype=np.float32, mesh=None, logical_axes=None) -> dict:
  """A param tree of host (numpy) arrays -> jax arrays of `param_dtype`, converted leaf by leaf.

  Consumes `params`: each leaf is replaced in place as soon as it is converted, so its host copy can
  be freed before the next one is made. With a `mesh`, each leaf goes straight to its
  `NamedSharding` from `sharding.logical_to_mesh(logical_axes, mesh)` (`jax.device_put` places only
  the shards each device holds); without one, onto the default device.
  Args:
    params: nested dict of numpy arrays (a loader's output, e.g. `params_from_hf`).
    param_dtype: dtype of the returned leaves (np.float32, jnp.bfloat16, ...).
    mesh: a `jax.sharding.Mesh` ("data", "fsdp", "tensor"; `sharding.make_mesh`) or None.
    logical_axes: the model's `param_logical_axes(config)` (a PartitionSpec tree shaped like params);
      needed with a mesh.
  """
  shardings = None
  if mesh is not None:
    if logical_axes is None:
      raise ValueError("to_device: a mesh needs the model's logical axes (param_logical_axes(config))")
    shardings = sharding.logical_to_mesh(logical_axes, mesh)
  dtype = np.dtype(param_dtype)

  def walk(node, shard, path):
    for key in list(node):
      where = f"{path}/{key}" if path else str(key)
      if shard is not None and key not in shard:
        raise ValueError(f"to_device: parameter {where!r} has no logical axes; the loader and "
                         f"param_logical_axes disagree (keys there: {sorted(shard)})")
      sub = None if shard is None else shard[key]
      if isinstance(node[key], Mapping):
        walk(node[key], sub, where)
        continue
      host = np.asarray(node[key]).astype(dtype, copy=False)
      node[key] = jax.device_put(host, sub) if sub is not None else jnp.asarray(host)

  walk(params, shardings, "")
  return params
