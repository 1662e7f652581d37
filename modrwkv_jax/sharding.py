"""Sharding, declared once by name: the table of logical-axis rules and the mesh (docs/sharding.md, STYLE.md).

Model code names the dimensions of every parameter and of the large activations with the logical
names below; `RULES` maps each name to mesh axes of the ("data", "fsdp", "tensor") mesh, as
MaxText's `logical_axis_rules` do. Nothing else in the library mentions a mesh axis, and training
code never mentions a parameter's name to shard it: it asks `logical_to_mesh` for the shardings of a
whole tree (`modrwkv.param_logical_axes`).

The vocabulary (every name must have a rule: `logical_to_mesh` raises on one that has none, where
flax would silently replicate it):

  activations
    batch          B, examples                                  -> data × fsdp
    length         T or L, sequence positions                   -> replicated
    act_embed      D or C of an activation                      -> replicated
    act_vocab      V of the logits                              -> tensor
    heads          H, attention / WKV heads (activations, r_k)  -> tensor
    head_dim       N, the size of one head                      -> replicated
  RWKV-7
    vocab          V, rows of emb and columns of head           -> tensor
    embed          D, the RWKV width (residual stream)          -> fsdp
    attn           D as H·N: TimeMix projections, ln_x, w0/a0   -> tensor
    mlp            the ChannelMix hidden width (4·D)            -> tensor
    lora_rank      rank of the w/a/v/g low-rank paths           -> replicated
    layers         the leading axis of scanned (stacked) layers -> replicated
  encoders (SigLIP, CLIP, Whisper, WavLM, WaveNet, Timer)
    enc_embed      C, the encoder width                         -> fsdp
    enc_qkv        C as H·N: the attention projections          -> tensor
    enc_mlp        the encoder MLP hidden width                 -> tensor
    enc_heads      H of per-head encoder parameters             -> replicated
    enc_positions  rows of a position table                     -> replicated
    enc_patch      the flattened input of a patch embedding     -> replicated
    rel_buckets    WavLM relative-position buckets              -> replicated
    mel            mel bins of the Whisper front conv           -> replicated
    series_var     variables of a multivariate series           -> replicated
    conv_window    the kernel taps of a convolution             -> replicated
    conv_in        input channels of a convolution              -> replicated
    conv_out       output channels of a feature convolution     -> fsdp
  projector and heads
    proj_hidden    the adapter's hidden width                   -> tensor
    proj_mid       the audio adapter's second hidden width      -> fsdp
    horizon        forecast steps of the time-series head       -> replicated
  PEFT adapters
    adapter_rank   Bone block size r, LoRA rank r, Bat's block columns -> replicated
    adapter_rank_in Bat's block rows                            -> replicated
    adapter_blocks Bat's out/r blocks                           -> replicated

A name may map to several candidates; for each dimension the first mesh axis not yet used by
another dimension of the same array wins (flax's rule), so `("embed", "enc_embed")`-style pairs
never shard two dimensions over one mesh axis.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_vocab", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    # RWKV-7
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("attn", "tensor"),
    ("mlp", "tensor"),
    ("lora_rank", None),
    ("layers", None),
    # encoders
    ("enc_embed", "fsdp"),
    ("enc_qkv", "tensor"),
    ("enc_mlp", "tensor"),
    ("enc_heads", None),
    ("enc_positions", None),
    ("enc_patch", None),
    ("rel_buckets", None),
    ("mel", None),
    ("series_var", None),
    ("conv_window", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    # projector and heads
    ("proj_hidden", "tensor"),
    ("proj_mid", "fsdp"),
    ("horizon", None),
    # PEFT adapters
    ("adapter_rank", None),
    ("adapter_rank_in", None),
    ("adapter_blocks", None),
)


def rule_names(rules: Sequence = RULES) -> set[str]:
  return {name for name, _ in rules}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, *, devices: Sequence | None = None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh over `devices` (default: all devices of all processes).

  One of the sizes may be −1: it takes the devices the others leave. Axes are `AxisType.Auto`
  (classic GSPMD propagation, docs/sharding.md).
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  for name, size in zip(MESH_AXES, sizes):
    if not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
      raise ValueError(f"make_mesh: {name}={size!r}; each axis size must be a positive int or -1 (fill)")
  if sizes.count(-1) > 1:
    raise ValueError(f"make_mesh: only one axis may be -1 (fill); got data={data}, fsdp={fsdp}, tensor={tensor}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"make_mesh: {len(devices)} devices cannot be split into data={data}, fsdp={fsdp}, "
                       f"tensor={tensor}: {len(devices)} is not a multiple of {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"make_mesh: data×fsdp×tensor = {'×'.join(map(str, sizes))} = {int(np.prod(sizes))} but "
                     f"there are {len(devices)} devices; set one axis to -1 to fill")
  if devices == list(jax.devices()):
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _check_names(spec, rules, where: str):
  known = rule_names(rules)
  for name in spec:
    names = name if isinstance(name, tuple) else (name,)
    for n in names:
      if n is not None and n not in known:
        close = difflib.get_close_matches(n, sorted(known), n=3)
        raise ValueError(f"logical axis {n!r} of {where} has no sharding rule; add it to "
                         f"modrwkv_jax.sharding.RULES{f' (close names: {close})' if close else ''}")
  flat = [n for n in spec if n is not None]
  if len(set(flat)) != len(flat):
    raise ValueError(f"{where} names one logical axis twice: {tuple(spec)}; give each dimension its own name")


def logical_to_mesh_axes(spec, rules: Sequence = RULES, where: str = "an array") -> PartitionSpec:
  """One PartitionSpec of logical names -> the PartitionSpec of mesh axes (raises on unknown names)."""
  _check_names(tuple(spec), rules, where)
  return nn.logical_to_mesh_axes(tuple(spec), rules)


def _is_spec(x) -> bool:
  return isinstance(x, PartitionSpec)


def logical_to_mesh(axes_tree, mesh: Mesh, rules: Sequence = RULES):
  """A tree of logical PartitionSpecs (e.g. `modrwkv.param_logical_axes(config)`) -> NamedShardings.

  Raises ValueError naming the leaf and the name when a logical name has no rule, or when one array
  names the same logical axis twice.
  """
  def one(path, spec):
    where = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) or "<root>"
    return NamedSharding(mesh, logical_to_mesh_axes(spec, rules, where))
  return jax.tree_util.tree_map_with_path(one, axes_tree, is_leaf=_is_spec)


def axis_rules(rules: Sequence = RULES):
  """The context in which model code resolves its activation constraints: `with axis_rules(): ...`."""
  return nn.logical_axis_rules(rules)
