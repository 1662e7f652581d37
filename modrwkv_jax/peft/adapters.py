"""Adapters on a param tree: configure, add, train only them, merge, save (docs/architecture.md#parameter-efficient-fine-tuning).

An adapter lives next to the kernel it adapts, so a param tree stays a plain nested dict that
describes itself:

    params["blocks_3"]["att"]["key"] = {"kernel": float[in, out], "bone": float32[r, out]}
                                     | {"kernel": ..., "bat": float32[out/r, r, r]}
                                     | {"kernel": ..., "lora_a": float32[in, r], "lora_b": float32[r, out],
                                        "lora_scale": float32[]}

Both RWKV-7 layouts are served. Unrolled, every layer has its own subtree blocks_0 ... blocks_{L-1}
as above. Scanned (`RWKV7Config.scan_layers`), one subtree "blocks" holds every layer and each of
its leaves has a leading layer axis: the kernel is float[L, in, out] and its adapters are stacked
the same way (bone float32[L, r, out], bat [L, out/r, r, r], lora_a [L, in, r], lora_b [L, r, out],
lora_scale [L]), so that `nn.scan` / `jax.lax.scan`, which slice every leaf under "blocks" along
axis 0, hand each layer exactly the unrolled leaves. A 3-D kernel is taken to be such a stack.

`layers.Dense` sees these leaves and calls `linear` below, so `rwkv7.forward` (and anything built
on it) runs with adapters under its unchanged API. Reading order: leaf names and the projection,
`PeftConfig` and its default RWKV-7 targets, `add_adapters`, the trainable/frozen split the
optimizer works on, logical axes, `merge_all`, and last the adapter files (`save_adapters` /
`load_adapters`), which name every layer's adapter on its own ("blocks_3/att/key/bone") whichever
layout wrote or reads them. A merged model is a plain tree: `rwkv7.save_pth(config, merge_all(params), path)`.

Training sees only the trainable leaves:

    params, mask = add_adapters(base_params, PeftConfig(method="bone", r=64), key)
    trainable, frozen = partition(params, mask)        # optimizer.init(trainable): no state for W
    loss = lambda t: loss_fn(combine(t, frozen))       # jax.grad(loss)(trainable): no grads for W
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax.peft import bone, lora

# Leaf names an adapter adds next to a "kernel". lora_scale (α / r) is a frozen constant.
BONE, BAT, LORA_A, LORA_B, LORA_SCALE = "bone", "bat", "lora_a", "lora_b", "lora_scale"
TRAINABLE_LEAVES = (BONE, BAT, LORA_A, LORA_B)
ADAPTER_LEAVES = TRAINABLE_LEAVES + (LORA_SCALE,)
# The rank of each leaf for one layer; one axis more is a stack of layers (the scanned layout).
LAYER_NDIM = {"kernel": 2, BONE: 2, BAT: 3, LORA_A: 2, LORA_B: 2, LORA_SCALE: 0}
# The subtree of a scanned model whose leaves are stacked, and how adapter files name its layers.
STACK, LAYER = "blocks", "blocks_{}"


def linear(x: jax.Array, kernel: jax.Array, adapter: Mapping[str, jax.Array], dtype=jnp.float32) -> jax.Array:
  """The adapted projection for whichever adapter `adapter` holds (the leaves next to `kernel`).

  One layer's leaves (in a scanned model, the slices the scan hands to one layer).
  x: float[..., in]; kernel: float[in, out]; dtype: compute dtype. Returns float32[..., out].
  """
  if BONE in adapter:
    return bone.bone_apply(x, kernel, adapter[BONE], dtype)
  if BAT in adapter:
    return bone.bat_apply(x, kernel, adapter[BAT], dtype)
  if LORA_A in adapter:
    return lora.lora_apply(x, kernel, adapter[LORA_A], adapter[LORA_B], adapter[LORA_SCALE], dtype)
  raise ValueError(f"linear: no adapter among leaves {sorted(adapter)}; expected one of {TRAINABLE_LEAVES}")


def _merge_layer(kernel: jax.Array, adapter: Mapping[str, jax.Array]) -> jax.Array:
  if BONE in adapter:
    return bone.bone_merge(kernel, adapter[BONE])
  if BAT in adapter:
    return bone.bat_merge(kernel, adapter[BAT])
  return lora.lora_merge(kernel, adapter[LORA_A], adapter[LORA_B], adapter[LORA_SCALE])


def merged_kernel(node: Mapping[str, Any]) -> jax.Array:
  """The kernel of one module node ({"kernel": ..., <adapter leaves>}) with its adapter folded in.

  kernel float[in, out], or float[L, in, out] with stacked adapters (merged layer by layer).
  """
  kernel = node["kernel"]
  adapter = {n: node[n] for n in ADAPTER_LEAVES if n in node}
  if not adapter:
    return kernel
  return jax.vmap(_merge_layer)(kernel, adapter) if kernel.ndim == 3 else _merge_layer(kernel, adapter)


# ---------------------------------------------------------------------------------------------
# Config.

# RWKV-7 targets (docs/architecture.md#parameter-efficient-fine-tuning): att receptance/key/value/output and ffn key/value; not emb, not head,
# not the small w/a/v/g LoRAs. Patterns are searched in the "/"-joined path of a module holding a
# "kernel", so they also find the RWKV-7 inside a larger (ModRWKV) tree; "blocks(_\d+)?" matches
# the unrolled layers blocks_<i> and the stacked subtree "blocks" of the scanned layout.
RWKV7_TARGETS = (r"(^|/)blocks(_\d+)?/att/(receptance|key|value|output)$", r"(^|/)blocks(_\d+)?/ffn/(key|value)$")
METHODS = ("bone", "bat", "lora")
LORA_INITS = ("kaiming", "pissa")


@dataclasses.dataclass(frozen=True)
class PeftConfig:
  """Which adapter to add where.

  method: "bone" (default; D float32[r, out] per target), "bat" (D float32[out/r, r, r]; needs
    in % r == out % r == 0) or "lora" (a float32[in, r], b float32[r, out]).
  r: Bone/Bat block size or LoRA rank. 64 is peft's MissConfig default.
  alpha: LoRA only; scale = alpha / r. None means alpha = r (scale 1, as peft's default 8 / 8).
  lora_init: LoRA only; "kaiming" (a ~ U(±1/√in), b = 0) or "pissa" (top-r SVD into a, b; the
    residual kernel is stored in place of the kernel and stays frozen).
  targets: regular expressions searched in the "/"-joined path of every module holding a "kernel"
    (e.g. "blocks_3/att/key", or "blocks/att/key" in a scanned model); a module is adapted when
    any pattern matches.
  """
  method: str = "bone"
  r: int = 64
  alpha: float | None = None
  lora_init: str = "kaiming"
  targets: tuple[str, ...] = RWKV7_TARGETS

  def __post_init__(self):
    if isinstance(self.targets, str) or not self.targets:
      raise ValueError(f"PeftConfig.targets must be a non-empty sequence of regular expressions; got {self.targets!r}")
    object.__setattr__(self, "targets", tuple(self.targets))  # lists from ml_collections become hashable
    for pattern in self.targets:
      try:
        re.compile(pattern)
      except re.error as e:
        raise ValueError(f"PeftConfig.targets: {pattern!r} is not a regular expression: {e}") from e
    if self.method not in METHODS:
      raise ValueError(f"PeftConfig.method must be one of {METHODS}; got {self.method!r}")
    if not isinstance(self.r, int) or self.r < 1:
      raise ValueError(f"PeftConfig.r must be a positive int; got {self.r!r}")
    if self.method != "lora" and (self.alpha is not None or self.lora_init != "kaiming"):
      raise ValueError(f"PeftConfig: alpha and lora_init apply to method='lora' only; method={self.method!r} "
                       "has no scaling and zero-initialised blocks")
    if self.lora_init not in LORA_INITS:
      raise ValueError(f"PeftConfig.lora_init must be one of {LORA_INITS}; got {self.lora_init!r}")

  @property
  def scale(self) -> float:
    """LoRA's α / r."""
    return (self.r if self.alpha is None else self.alpha) / self.r

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping) -> PeftConfig:
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f"PeftConfig: unknown keys {unknown}; known: {[f.name for f in dataclasses.fields(cls)]}")
    return cls(**d)


# ---------------------------------------------------------------------------------------------
# Paths, and the layers of a stack.


def _modules(tree: Mapping, prefix: tuple[str, ...] = ()):
  """Yields (path, node) for every dict in `tree` that holds a "kernel", in sorted path order."""
  for name in sorted(tree):
    node = tree[name]
    if isinstance(node, Mapping):
      if "kernel" in node:
        yield prefix + (name,), node
      yield from _modules(node, prefix + (name,))


def _get(tree: Mapping, path: tuple[str, ...]):
  for p in path:
    tree = tree[p]
  return tree


def _replace(tree: Mapping, path: tuple[str, ...], node: dict) -> dict:
  """A copy of `tree` (dicts rebuilt along `path` only) with the node at `path` replaced."""
  out = dict(tree)
  out[path[0]] = node if len(path) == 1 else _replace(tree[path[0]], path[1:], node)
  return out


def _n_layers(leaf_name: str, x, path: tuple[str, ...]) -> int | None:
  """None for one layer's leaf; L for a stack of L layers (one leading axis more)."""
  extra = len(np.shape(x)) - LAYER_NDIM[leaf_name]
  if extra not in (0, 1):
    raise ValueError(f"{'/'.join(path)}/{leaf_name}: shape {tuple(np.shape(x))}; expected {LAYER_NDIM[leaf_name]} "
                     f"dimensions for one layer, or {LAYER_NDIM[leaf_name] + 1} for a stack of layers [L, ...]")
  return np.shape(x)[0] if extra else None


def layer_path(path: tuple[str, ...], layer: int) -> tuple[str, ...]:
  """The unrolled path of one layer of a stacked module: ("blocks", "att", "key"), 3 -> ("blocks_3", "att", "key")."""
  if STACK not in path:
    raise ValueError(f"{'/'.join(path)}: a stacked (3-D) kernel outside a {STACK!r} subtree; adapter files name "
                     f"the layers of a stack {LAYER.format('<i>')}, so stacked modules must live under {STACK!r}")
  i = len(path) - 1 - path[::-1].index(STACK)
  return path[:i] + (LAYER.format(layer),) + path[i + 1:]


def target_paths(params: Mapping, config: PeftConfig) -> list[tuple[str, ...]]:
  """The paths of the modules `config.targets` select, sorted."""
  return [path for path, _ in _modules(params) if any(re.search(p, "/".join(path)) for p in config.targets)]


# ---------------------------------------------------------------------------------------------
# Adding adapters.


def _layer_key(key: jax.Array, path: tuple[str, ...]) -> jax.Array:
  """The PRNG key of one layer's module, from its unrolled path: both layouts draw the same adapters."""
  return jax.random.fold_in(key, zlib.crc32("/".join(path).encode()) & 0x7FFFFFFF)


def _new_adapter(config: PeftConfig, kernel: jax.Array, key: jax.Array, path: tuple[str, ...]) -> dict:
  """The adapter leaves for one kernel [in, out] or stack [L, in, out], plus the (PiSSA-residual) kernel."""
  name = "/".join(path)
  n_layers = _n_layers("kernel", kernel, path)
  shape = kernel.shape[-2:]
  check = {"bone": bone.check_bone_shape, "bat": bone.check_bat_shape, "lora": lora.check_lora_shape}[config.method]
  check(shape, config.r, name)

  def one_layer(kernel, key):
    if config.method == "bone":
      return {"kernel": kernel, BONE: bone.bone_init(kernel, config.r)}
    if config.method == "bat":
      return {"kernel": kernel, BAT: bone.bat_init(kernel, config.r)}
    if config.lora_init == "pissa":
      kernel, a, b = lora.pissa_init(kernel, config.r, config.scale)
    else:
      a, b = lora.lora_init(key, kernel, config.r)
    return {"kernel": kernel, LORA_A: a, LORA_B: b, LORA_SCALE: jnp.asarray(config.scale, jnp.float32)}

  if n_layers is None:
    return one_layer(kernel, _layer_key(key, path))
  keys = jnp.stack([_layer_key(key, layer_path(path, i)) for i in range(n_layers)])
  return jax.vmap(one_layer)(kernel, keys)


def add_adapters(params: Mapping, config: PeftConfig, key: jax.Array) -> tuple[dict, dict]:
  """Adds one adapter to every module `config.targets` selects.

  Args:
    params: a plain nested param dict (rwkv7.init_params / load_pth, or a tree containing one), in
      the unrolled or the scanned layout (a stacked kernel float[L, in, out], which must sit under
      a "blocks" subtree, gets stacked adapters).
    config: what to add.
    key: PRNG key (LoRA's a; Bone, Bat and PiSSA are deterministic). Each layer's LoRA draws from
      a key of its own, derived from its unrolled path: both layouts get the same adapters.
  Returns:
    (params_with_adapters, trainable_mask): a new tree (the input is not modified) and a bool tree
    of the same structure, True exactly at the adapter's trainable leaves.
  """
  paths = target_paths(params, config)
  if not paths:
    kernels = ["/".join(p) for p, _ in _modules(params)]
    raise ValueError(f"PeftConfig.targets {config.targets} match no module in params; modules with a kernel: "
                     f"{kernels[:8]}{' ...' if len(kernels) > 8 else ''}")
  out = params
  for path in paths:
    node = dict(_get(params, path))
    present = sorted(set(node) & set(ADAPTER_LEAVES))
    if present:
      raise ValueError(f"{'/'.join(path)}: already holds adapter leaves {present}; merge_all(params) first to "
                       "stack adapters")
    node.update(_new_adapter(config, node["kernel"], key, path))
    out = _replace(out, path, node)
  return out, trainable_mask(out)


# ---------------------------------------------------------------------------------------------
# Training only the adapters: the optimizer is given the trainable subtree and nothing else.


def trainable_mask(params: Mapping) -> dict:
  """bool tree shaped like params: True at adapter leaves (bone, bat, lora_a, lora_b)."""
  return {k: trainable_mask(v) if isinstance(v, Mapping) else k in TRAINABLE_LEAVES for k, v in params.items()}


def partition(params: Mapping, mask: Mapping) -> tuple[dict, dict]:
  """Splits params into (trainable, frozen) nested dicts by a bool mask; empty branches are dropped.

  Give `trainable` alone to the optimizer and to `jax.grad`: frozen weights get neither gradient
  buffers nor optimizer state (docs/architecture.md#parameter-efficient-fine-tuning).
  """
  trainable, frozen = {}, {}
  for k, v in params.items():
    if k not in mask:
      raise ValueError(f"partition: mask has no entry for {k!r}; build it with add_adapters or trainable_mask")
    if isinstance(v, Mapping):
      t, f = partition(v, mask[k])
      if t:
        trainable[k] = t
      if f:
        frozen[k] = f
    elif mask[k]:
      trainable[k] = v
    else:
      frozen[k] = v
  return trainable, frozen


def combine(trainable: Mapping, frozen: Mapping) -> dict:
  """The inverse of `partition`: one nested dict holding the leaves of both."""
  out = dict(frozen)
  for k, v in trainable.items():
    if k not in out:
      out[k] = v
    elif isinstance(v, Mapping) and isinstance(out[k], Mapping):
      out[k] = combine(v, out[k])
    else:
      raise ValueError(f"combine: {k!r} is a leaf in both trees; trainable and frozen must be disjoint")
  return out


def count_params(tree) -> int:
  """Number of scalars in a tree (e.g. the trainable subtree)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------
# Logical axes (modrwkv_jax.sharding): adapters extend their kernel's names.


def logical_axes(params: Mapping, base_axes: Mapping) -> dict:
  """Logical axis names for an adapted tree, extending those of the plain tree (e.g. rwkv7.param_logical_axes).

  With the kernel named (in_name, out_name), or (stack_name, in_name, out_name) when stacked:
    bone       (adapter_rank, out_name)
    bat        (adapter_blocks, adapter_rank_in, adapter_rank)
    lora_a     (in_name, adapter_rank)
    lora_b     (adapter_rank, out_name)
    lora_scale ()
  each preceded by the kernel's stack name ("layers") when stacked. The adapter names have rules in
  modrwkv_jax.sharding (replicated), and no array names one axis twice.
  """
  out = {}
  for k, v in params.items():
    if k not in base_axes:
      raise ValueError(f"logical_axes: {k!r} is in params but not in base_axes: they describe different models")
    if not isinstance(v, Mapping):
      out[k] = base_axes[k]
      continue
    node = logical_axes({n: x for n, x in v.items() if n not in ADAPTER_LEAVES}, base_axes[k])
    if "kernel" in v and any(n in v for n in ADAPTER_LEAVES):
      spec = tuple(base_axes[k]["kernel"])
      spec += (None,) * (len(np.shape(v["kernel"])) - len(spec))
      *stack, in_name, out_name = spec
      names = {BONE: ("adapter_rank", out_name), BAT: ("adapter_blocks", "adapter_rank_in", "adapter_rank"),
               LORA_A: (in_name, "adapter_rank"), LORA_B: ("adapter_rank", out_name), LORA_SCALE: ()}
      node |= {n: jax.sharding.PartitionSpec(*stack, *names[n]) for n in v if n in ADAPTER_LEAVES}
    out[k] = node
  return out


# ---------------------------------------------------------------------------------------------
# Merging.


def merge_all(params: Mapping) -> dict:
  """Folds every adapter into its kernel and drops the adapter leaves: a plain tree for rwkv7.

  The result has exactly the structure of the un-adapted params (stacked kernels stay stacked), so
  `rwkv7.forward` runs it with the plain matmul and `rwkv7.save_pth` exports it.
  """
  out = {}
  for k, v in params.items():
    if not isinstance(v, Mapping):
      out[k] = v
    elif "kernel" in v and any(n in v for n in ADAPTER_LEAVES):
      out[k] = {n: x for n, x in v.items() if n not in ADAPTER_LEAVES} | {"kernel": merged_kernel(v)}
    else:
      out[k] = merge_all(v)
  return out


# ---------------------------------------------------------------------------------------------
# Files: one safetensors tensor per layer and leaf, named by its unrolled path in either layout.

_FORMAT = "modrwkv_jax.peft/1"


def adapter_leaves(tree: Mapping) -> dict[str, jax.Array]:
  """{"blocks_0/att/key/bone": float32[r, out], ...}: every layer's trainable adapter leaves.

  `tree` is a full or a trainable tree in either layout; a stacked leaf [L, ...] under "blocks"
  gives L entries blocks_0 ... blocks_{L-1}, so both layouts of one model give the same dict (sorted
  by name).
  """
  out = {}

  def walk(node, path):
    for name in sorted(node):
      if isinstance(node[name], Mapping):
        walk(node[name], path + (name,))
      elif name in TRAINABLE_LEAVES:
        x = node[name]
        n_layers = _n_layers(name, x, path)
        if n_layers is None:
          out["/".join(path + (name,))] = x
        else:
          out.update({"/".join(layer_path(path, i) + (name,)): x[i] for i in range(n_layers)})

  walk(tree, ())
  return dict(sorted(out.items()))


def save_adapters(config: PeftConfig, params: Mapping, path: str | os.PathLike) -> None:
  """Writes only the adapters (safetensors, float32, one tensor per layer) and the PeftConfig (metadata).

  The file holds r·out floats per Bone layer, against in·out for the full kernel, and reads back
  into either layout (`load_adapters`).
  """
  from safetensors.numpy import save_file

  tensors = {name: np.ascontiguousarray(np.asarray(jax.device_get(x), np.float32))
             for name, x in adapter_leaves(params).items()}
  if not tensors:
    raise ValueError("save_adapters: params hold no adapters (add_adapters first)")
  save_file(tensors, os.fspath(path), metadata={"format": _FORMAT, "peft_config": json.dumps(config.to_dict())})


def load_adapters(path: str | os.PathLike, params: Mapping) -> tuple[PeftConfig, dict]:
  """Reads `save_adapters` output onto base params (the same base weights it was trained on).

  The adapter structure is rebuilt with `add_adapters` (for PiSSA this recomputes the frozen
  residual from the base kernels), then every trainable leaf is replaced by the file's; the
  per-layer tensors are stacked where `params` are in the scanned layout.
  Returns (config, params_with_adapters); `trainable_mask(params)` gives the mask.
  """
  from safetensors import safe_open

  path = os.fspath(path)
  with safe_open(path, framework="numpy") as f:
    meta = f.metadata() or {}
    if meta.get("format") != _FORMAT:
      raise ValueError(f"{path}: not a modrwkv_jax adapter file (metadata format {meta.get('format')!r}, "
                       f"expected {_FORMAT!r}); write it with save_adapters")
    tensors = {name: f.get_tensor(name) for name in f.keys()}
  config = PeftConfig.from_dict(json.loads(meta["peft_config"]))
  out, _ = add_adapters(params, config, jax.random.key(0))
  expected = adapter_leaves(out)
  missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
  if missing or unexpected:
    raise ValueError(f"{path}: adapters do not fit these params: missing {missing[:4]}, unexpected {unexpected[:4]} "
                     "(were they trained on a model with other layers?)")
  for name, value in tensors.items():
    if value.shape != expected[name].shape:
      raise ValueError(f"{path}: {name!r} has shape {value.shape}; these params need {expected[name].shape}")
  for module, node in _modules(out):
    leaves = {}
    for leaf in TRAINABLE_LEAVES:
      if leaf in node:
        n_layers = _n_layers(leaf, node[leaf], module)
        if n_layers is None:
          value = tensors["/".join(module + (leaf,))]
        else:
          value = np.stack([tensors["/".join(layer_path(module, i) + (leaf,))] for i in range(n_layers)])
        leaves[leaf] = jnp.asarray(value, jnp.float32)
    if leaves:
      out = _replace(out, module, dict(node) | leaves)
  return config, out
