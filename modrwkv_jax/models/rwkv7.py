"""RWKV-7 "Goose" (x070) language model in Flax linen, with official-checkpoint import and export.

Formulas and shapes are those of docs/rwkv7.md. Reading order: config and presets, the from-scratch
initialisation of RWKV-LM, token shift, the layers (TimeMix, ChannelMix, Block), the model, the
recurrent state, the pure-function surface (`init_params`, `forward`, `embed`), and last the
checkpoint formats (`load_pth`, `save_pth`, `load_safetensors`).

Params are a plain nested dict (the linen "params" collection). Flax kernels are Wᵀ of the
checkpoint's torch `[out, in]` weights; `[1, 1, D]` vectors are stored as `[D]`; LoRA-style
matrices (w1, w2, ...) keep their checkpoint layout because the checkpoint already applies them
as `x @ A`. Every parameter carries logical axis names (see `param_logical_axes`).

Numerics: matmuls run in `config.dtype` with float32 accumulation; LayerNorm / GroupNorm
statistics, the decay, the in-context rate, the WKV state and the logits are float32.

Packed rows (`segment_ids`): several examples in one row compute exactly what each computes alone.
Only two things mix tokens, and both restart at a segment's first token: the token shifts of TimeMix
and ChannelMix (the previous token is zeros there, except in the row's first segment, which reads the
carried shift state) and the WKV state (zero at a segment start, `ops.wkv7(segment_ids=...)`).
Everything else (projections, the value residual v_first of layer 0, ln_x, the bonus) is per token.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax import layers
from modrwkv_jax import peft
from modrwkv_jax import sharding
from modrwkv_jax.ops.wkv7 import resolve_impl, wkv7
from modrwkv_jax.tensor_files import read_pth, read_safetensors_dir, write_pth

# log_w = -exp(-0.5) * sigmoid(z) keeps the per-step decay exp(log_w) in (0.545, 1).
DECAY_SCALE = math.exp(-0.5)  # 0.6065306597
LN_EPS = 1e-5
GN_EPS = 64e-5  # ln_x GroupNorm eps = 1e-5 · head_size_divisor² (8²) in RWKV-LM, whatever the head size
L2_EPS = 1e-12  # torch.nn.functional.normalize


# ---------------------------------------------------------------------------------------------
# Config.

@dataclasses.dataclass(frozen=True)
class RWKV7Config:
  """Sizes of an RWKV-7 model. Frozen and hashable, so it can be a static jit argument.

  dtype is the compute dtype ("float32" or "bfloat16"); the state is always float32.
  wkv_impl / wkv_chunk_size choose the WKV-7 implementation (see modrwkv_jax.ops.wkv7).
  scan_layers: the blocks' params are stacked under "blocks" with a leading `layers` axis and run
    by one `nn.scan` (compile time independent of depth); False keeps "blocks_0" ... "blocks_{L-1}".
  remat: "none", "block" or a `jax.checkpoint_policies` name, applied to every block.
  """
  vocab_size: int = 65536
  n_layer: int = 12
  n_embd: int = 768
  head_size: int = 64
  dim_w: int = 64  # decay LoRA rank
  dim_a: int = 64  # in-context-rate LoRA rank
  dim_v: int = 32  # value-residual LoRA rank
  dim_g: int = 128  # gate LoRA rank
  dim_ffn: int = 3072
  dtype: str = "float32"
  wkv_impl: str = "auto"
  wkv_chunk_size: int = 16
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    for field in ("vocab_size", "n_layer", "n_embd", "head_size", "dim_w", "dim_a", "dim_v", "dim_g",
                  "dim_ffn", "wkv_chunk_size"):
      value = getattr(self, field)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"RWKV7Config.{field} must be a positive int, got {value!r}")
    if self.n_embd % self.head_size:
      raise ValueError(f"RWKV7Config: n_embd={self.n_embd} is not a multiple of head_size={self.head_size}")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"RWKV7Config.dtype must be 'float32', 'bfloat16' or 'float16', got {self.dtype!r}")
    if self.wkv_impl != "auto":
      resolve_impl(self.wkv_impl)  # raises on an unknown name
    layers.check_stack_options("RWKV7Config", self.scan_layers, self.remat)

  @property
  def n_head(self) -> int:
    return self.n_embd // self.head_size

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kwargs) -> RWKV7Config:
    return dataclasses.replace(self, **kwargs)


# Released RWKV-7 World / G1 sizes (docs/formats.md#rwkv-lm-pth): (n_layer, n_embd, dim_w, dim_a, dim_v, dim_g).
PRESETS: dict[str, RWKV7Config] = {
    name: RWKV7Config(n_layer=l, n_embd=d, dim_w=w, dim_a=a, dim_v=v, dim_g=g, dim_ffn=4 * d)
    for name, (l, d, w, a, v, g) in {
        "0.1B": (12, 768, 64, 64, 32, 128),
        "0.4B": (24, 1024, 64, 64, 32, 128),
        "1.5B": (24, 2048, 96, 96, 64, 256),
        "2.9B": (32, 2560, 96, 96, 64, 320),
    }.items()
}


def preset(name: str, **overrides) -> RWKV7Config:
  if name not in PRESETS:
    raise ValueError(f"unknown RWKV-7 preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


# ---------------------------------------------------------------------------------------------
# From-scratch initialisation (RWKV-LM train_temp, docs/formats.md#rwkv-lm-pth).


def _layer_init_values(config: RWKV7Config, layer, xp=np) -> dict:
  """The deterministic per-channel initial values of one layer.

  `layer` is a Python int (xp=np: float64 numpy) or a traced int32 scalar inside the layer scan
  (xp=jnp: float32, equal to the float64 values to ~1e-7 relative).
  """
  L, D, N = config.n_layer, config.n_embd, config.head_size
  f = np.float64 if xp is np else jnp.float32
  n = xp.arange(D, dtype=f)
  layer = xp.asarray(layer, f)
  r01 = layer / (L - 1) if L > 1 else layer * 0
  r1 = 1.0 - layer / L  # in (0, 1]: ddd ** (c · r1) stays finite
  ddd = n / D
  linear = n / (D - 1) - 0.5
  z = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
  zig = z * xp.abs(z)
  www = -6 + 6 * (n / (D - 1)) ** (1 + r01**0.3)
  ones = xp.ones(D, f)
  return {
      "x_r": 1 - ddd ** (0.2 * r1), "x_w": 1 - ddd ** (0.9 * r1), "x_k": 1 - ddd ** (0.7 * r1),
      "x_v": 1 - ddd ** (0.7 * r1), "x_a": 1 - ddd ** (0.9 * r1), "x_g": 1 - ddd ** (0.2 * r1),
      "w0": www + 0.5 + 2.5 * zig, "a0": -0.19 + 0.3 * zig + 0.4 * linear, "v0": 0.73 - 0.4 * linear,
      "k_k": 0.71 - 0.1 * linear, "k_a": 1.02 * ones, "r_k": xp.full((D // N, N), -0.04, f),
      "ln_x": ones * ((layer + 1) / L) ** 0.7, "ffn_x_k": 1 - ddd ** (r1**4),
  }


def _layer_const(config: RWKV7Config, name: str) -> Callable:
  """Initializer init(key, shape, layer) of the per-layer constant `name` (layer may be traced)."""
  def init(key, shape, layer, dtype=jnp.float32):
    del key
    xp = np if isinstance(layer, (int, np.integer)) else jnp
    value = _layer_init_values(config, layer, xp)[name]
    if tuple(shape) != tuple(value.shape):
      raise ValueError(f"initial value of {name} has shape {value.shape}, parameter has {tuple(shape)}")
    return jnp.asarray(value, dtype)
  return init


def _orthogonal(scale: float, torch_shape: tuple[int, int] | None = None) -> Callable:
  """RWKV-LM's orthogonal init: gain sqrt(out/in) when out > in (torch [out, in] shape), times scale.

  torch_shape defaults to the reverse of the flax kernel shape [in, out].
  """
  def init(key, shape, dtype=jnp.float32):
    rows, cols = torch_shape or (shape[1], shape[0])
    gain = math.sqrt(rows / cols) if rows > cols else 1.0
    if scale == 0:
      return jnp.zeros(shape, dtype)
    return jax.nn.initializers.orthogonal(scale * gain)(key, shape, dtype)
  return init


def _param(module: nn.Module, name: str, init: Callable, shape: tuple[int, ...], axes: tuple, *init_args):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, *init_args)


# ---------------------------------------------------------------------------------------------
# Layers.


def shift_indices(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Where each position's token shift reads from, skipping padding.

  Args:
    mask: bool[B, T], True at real tokens.
  Returns:
    (prev int32[B, T], last int32[B]): the latest real position before t, and the latest real
    position overall; -1 means "the carried shift state".
  """
  t = jnp.arange(mask.shape[1], dtype=jnp.int32)
  last_upto = jax.lax.cummax(jnp.where(mask, t, -1), axis=1)  # latest real position <= t
  prev = jnp.concatenate([jnp.full_like(last_upto[:, :1], -1), last_upto[:, :-1]], axis=1)
  return prev, last_upto[:, -1]


def segment_starts(segment_ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Where a packed row starts a new example, skipping padding.

  Args:
    segment_ids: int[B, T], examples numbered 1, 2, ... left to right (padding: 0, ignored).
    mask: bool[B, T], True at real tokens, or None (every position is real).
  Returns:
    bool[B, T]: True at a real token whose id differs from the previous real token's id. The row's
    first real token is never a start: its segment continues from the incoming state, and padding
    (before, between or after segments, whatever its id) never starts or ends anything.
  """
  if mask is None:
    return jnp.concatenate([jnp.zeros_like(segment_ids[:, :1], bool),
                            segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  prev, _ = shift_indices(mask)
  prev_id = jnp.take_along_axis(segment_ids, jnp.maximum(prev, 0), axis=1)
  return mask & (prev >= 0) & (segment_ids != prev_id)


def token_shift(x, shift_state, indices=None, starts=None):
  """prev(x)_t = x of the previous real position (shift_state before the first; zeros at a segment start).

  Args:
    x: float[B, T, D]; shift_state: float[B, D]; indices: `shift_indices(mask)` or None (no padding).
    starts: `segment_starts(...)` bool[B, T] or None (one segment per row).
  Returns:
    (prev float[B, T, D], new_shift_state float[B, D]).
  """
  shift_state = shift_state.astype(x.dtype)
  if indices is None:
    prev, last = jnp.concatenate([shift_state[:, None], x[:, :-1]], axis=1), x[:, -1]
  else:
    prev_idx, last_idx = indices
    ext = jnp.concatenate([shift_state[:, None], x], axis=1)  # [B, 1 + T, D]; index 0 = carried state
    prev = jnp.take_along_axis(ext, (prev_idx + 1)[:, :, None], axis=1)
    last = jnp.take_along_axis(ext, (last_idx + 1)[:, None, None], axis=1)[:, 0]
  if starts is not None:
    prev = jnp.where(starts[:, :, None], jnp.zeros((), x.dtype), prev)  # a new example has no previous token
  return prev, last


class HeadGroupNorm(nn.Module):
  """GroupNorm with one group per head (att.ln_x), per token, float32 statistics.

  x: float[B, T, H, N] -> float32[B, T, H·N].
  """
  eps: float
  scale_init: Callable
  layer: Any = None

  @nn.compact
  def __call__(self, x):
    b, t, h, n = x.shape
    scale = _param(self, "scale", self.scale_init, (h * n,), ("attn",), self.layer)
    bias = _param(self, "bias", nn.initializers.zeros, (h * n,), ("attn",))
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = ((x - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, t, h * n)
    return y * scale.astype(jnp.float32) + bias.astype(jnp.float32)


ACT = ("batch", "length", "act_embed")


class TimeMix(nn.Module):
  """RWKV-7 time mixing (attention replacement) of one layer, docs/rwkv7.md table.

  layer: the layer index, a Python int (unrolled layers) or a traced int32 scalar (scanned layers,
  where every layer holds the value-residual params and layer 0 ignores them).
  """
  config: RWKV7Config

  @nn.compact
  def __call__(self, x, shift_state, wkv_state, v_first, layer, indices=None, mask=None, segments=None):
    """
    Args:
      x: float[B, T, D] layer input after ln1.
      shift_state: float32[B, D] the last ln1 output of the previous call (zeros at sequence start).
      wkv_state: float32[B, H, N, N] WKV state, layout [key, value].
      v_first: float[B, T, D] value of layer 0 (anything, e.g. None or zeros, at layer 0). Per token, so
        packed rows need nothing more for it.
      layer: int or int32[] layer index.
      indices, mask: `shift_indices(mask)` and bool[B, T] (True = real token), or None.
      segments: (starts bool[B, T] from `segment_starts`, wkv_ids int32[B, T] = cumsum of starts), or None.
    Returns:
      (out float[B, T, D], new_shift_state float32[B, D], new_wkv_state float32[B, H, N, N], v_first)
    """
    cfg = self.config
    B, T, D = x.shape
    H, N, cd = cfg.n_head, cfg.head_size, cfg.compute_dtype
    static_layer = isinstance(layer, (int, np.integer))
    const = lambda name: _layer_const(cfg, name)
    vec = lambda name, axes=("embed",): _param(self, name, const(name), (D,), axes, layer)

    def low_rank(prefix, rank, x, inner=lambda y: y):
      """inner(x @ {prefix}1) @ {prefix}2 in float32; {prefix}1 [D, rank] starts at zero, {prefix}2 [rank, D]
      orthogonal·0.1 (RWKV-LM). Stored as in the checkpoint: they already act as x @ A."""
      a1 = _param(self, f"{prefix}1", nn.initializers.zeros, (D, rank), ("embed", "lora_rank"))
      a2 = _param(self, f"{prefix}2", _orthogonal(0.1, (rank, D)), (rank, D), ("lora_rank", "attn"))
      return layers.matmul(inner(layers.matmul(x, a1, cd)).astype(cd), a2, cd)

    proj = lambda name, scale, axes=("embed", "attn"): layers.Dense(D, axes, False, cd, kernel_init=_orthogonal(scale),
                                                                    name=name)

    starts, wkv_ids = (None, None) if segments is None else segments
    prev, new_shift = token_shift(x, shift_state, indices, starts)
    dx = prev - x
    mixed = {c: x + dx * vec(f"x_{c}").astype(cd) for c in "rwkvag"}

    r = proj("receptance", 1.0)(mixed["r"])
    k = proj("key", 0.1)(mixed["k"])
    v = proj("value", 1.0)(mixed["v"])
    z = vec("w0", ("attn",)).astype(jnp.float32) + low_rank("w", cfg.dim_w, mixed["w"], jnp.tanh)
    log_w = -DECAY_SCALE * jax.nn.sigmoid(z)  # float32 in (-0.607, 0)
    alpha = jax.nn.sigmoid(vec("a0", ("attn",)).astype(jnp.float32) + low_rank("a", cfg.dim_a, mixed["a"]))
    g = low_rank("g", cfg.dim_g, mixed["g"], jax.nn.sigmoid).astype(cd)

    heads = lambda t: t.reshape(B, T, H, N)
    kk = heads(k.astype(jnp.float32) * vec("k_k", ("attn",)).astype(jnp.float32))
    kk = kk / jnp.maximum(jnp.linalg.norm(kk, axis=-1, keepdims=True), L2_EPS)
    k = (k.astype(jnp.float32) * (1 + (alpha - 1) * vec("k_a", ("attn",)).astype(jnp.float32))).astype(cd)
    if static_layer and layer == 0:
      v_first = v
    else:
      gate = jax.nn.sigmoid(vec("v0", ("attn",)).astype(jnp.float32) + low_rank("v", cfg.dim_v, mixed["v"]))
      mixed_v = (v + (v_first - v).astype(jnp.float32) * gate).astype(cd)
      if static_layer:
        v = mixed_v
      else:  # scanned: layer 0 computes the (unused) residual and keeps its own value as v_first
        first = layer == 0
        v_first = jnp.where(first, v, v_first)
        v = jnp.where(first, v, mixed_v)

    r_in, v_in, a_in, b_in, k_in, lw_in = heads(r), heads(v), -kk, kk * heads(alpha), heads(k), heads(log_w)
    if mask is not None:
      # Padding: decay 1, no write, no removal -> the state passes unchanged. Every input is zeroed (not
      # only b, k, log_w): the chunked form multiplies padded rows into real ones (0 · NaN = NaN), so
      # whatever a padding position holds (NaN, inf) must never reach a real position or the state.
      m = mask[:, :, None, None]
      r_in, v_in, a_in, b_in, k_in, lw_in = (jnp.where(m, t, 0) for t in (r_in, v_in, a_in, b_in, k_in, lw_in))
    spec = ("batch", "length", "heads", "head_dim")
    r_in, v_in, a_in, b_in, k_in, lw_in = (nn.with_logical_constraint(t, spec) for t in (
        r_in, v_in, a_in.astype(cd), b_in.astype(cd), k_in, lw_in))
    # wkv_ids changes exactly at the segment starts (padding never does: its inputs are zeroed above
    # and its id is that of the previous real token), so the WKV state restarts where the shifts do.
    out, new_wkv = wkv7(r_in, lw_in, k_in, v_in, a_in, b_in, wkv_state, impl=cfg.wkv_impl,
                        chunk_size=cfg.wkv_chunk_size, partition=nn.logical_to_mesh_axes(spec),
                        segment_ids=wkv_ids)
    out = HeadGroupNorm(GN_EPS, const("ln_x"), layer, name="ln_x")(out)
    r_k = _param(self, "r_k", const("r_k"), (H, N), ("heads", "head_dim"), layer)
    bonus = (heads(r).astype(jnp.float32) * heads(k).astype(jnp.float32) * r_k.astype(jnp.float32)).sum(-1, keepdims=True)
    out = out + (bonus * heads(v).astype(jnp.float32)).reshape(B, T, D)
    out = proj("output", 0.0, ("attn", "embed"))((out * g).astype(cd))
    return out, new_shift.astype(jnp.float32), new_wkv, v_first


class ChannelMix(nn.Module):
  """RWKV-7 channel mixing: out = W_v relu(W_k (x + δ ⊙ x_k))²."""
  config: RWKV7Config

  @nn.compact
  def __call__(self, x, shift_state, layer, indices=None, starts=None):
    """x: float[B, T, D] after ln2; shift_state: float32[B, D]; indices, starts as in `token_shift`.
    Returns (out float[B, T, D], new shift)."""
    cfg, cd = self.config, self.config.compute_dtype
    prev, new_shift = token_shift(x, shift_state, indices, starts)
    x_k = _param(self, "x_k", _layer_const(cfg, "ffn_x_k"), (cfg.n_embd,), ("embed",), layer)
    h = x + (prev - x) * x_k.astype(cd)
    h = layers.Dense(cfg.dim_ffn, ("embed", "mlp"), False, cd, kernel_init=_orthogonal(1.0), name="key")(h)
    h = jnp.square(jax.nn.relu(h))
    out = layers.Dense(cfg.n_embd, ("mlp", "embed"), False, cd, kernel_init=_orthogonal(0.0), name="value")(h)
    return out, new_shift.astype(jnp.float32)


class Block(nn.Module):
  """x += TimeMix(ln1(x)); x += ChannelMix(ln2(x)).

  The call has the shape of an `nn.scan` body: (carry, per-layer inputs) -> (carry, per-layer outputs).
  `layer` (a module field) is set for unrolled layers; scanned layers get it as the traced `layer_index`.
  """
  config: RWKV7Config
  layer: int | None = None

  @nn.compact
  def __call__(self, carry, state, layer_index=None, indices=None, mask=None, segments=None):
    """
    Args:
      carry: (x float[B, T, D], v_first float[B, T, D] or None before layer 0).
      state: (att_shift float32[B, D], wkv float32[B, H, N, N], ffn_shift float32[B, D]) of this layer.
      layer_index: int32[] (scanned layers) or None (the `layer` field is used).
      indices, mask: `shift_indices(mask)` and bool[B, T], or None.
      segments: (starts bool[B, T], wkv_ids int32[B, T]) for packed rows (see TimeMix), or None.
    Returns:
      ((x, v_first), new state of this layer).
    """
    cfg, cd = self.config, self.config.compute_dtype
    layer = self.layer if self.layer is not None else layer_index
    x, v_first = carry
    att_shift, wkv_state, ffn_shift = state
    h = layers.layer_norm("ln1", LN_EPS, cd)(x)
    h, att_shift, wkv_state, v_first = TimeMix(cfg, name="att")(h, att_shift, wkv_state, v_first, layer, indices, mask,
                                                                segments)
    x = x + h
    starts = None if segments is None else segments[0]
    h, ffn_shift = ChannelMix(cfg, name="ffn")(layers.layer_norm("ln2", LN_EPS, cd)(x), ffn_shift, layer, indices,
                                               starts)
    x = nn.with_logical_constraint(x + h, ACT)
    return (x, v_first), (att_shift, wkv_state, ffn_shift)


@flax.struct.dataclass
class RWKV7State:
  """Recurrent state of all layers (float32). Constant size: it does not grow with the sequence.

  att_shift: float32[L, B, D]   last ln1 output per layer (token shift of TimeMix)
  wkv:       float32[L, B, H, N, N]   WKV state, layout [key, value] (official S transposed)
  ffn_shift: float32[L, B, D]   last ln2 output per layer (token shift of ChannelMix)
  """
  att_shift: jax.Array
  wkv: jax.Array
  ffn_shift: jax.Array


def _block_class(config: RWKV7Config):
  """Block, rematerialised per config.remat."""
  return layers.rematerialise(Block, config.remat, config.scan_layers)


class RWKV7(nn.Module):
  """The RWKV-7 language model: emb -> ln0 -> blocks -> ln_out -> head."""
  config: RWKV7Config

  def setup(self):
    cfg = self.config
    V, D = cfg.vocab_size, cfg.n_embd
    emb_init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -1e-4, 1e-4)
    self.emb = nn.Embed(V, D, dtype=cfg.compute_dtype,
                        embedding_init=nn.with_logical_partitioning(emb_init, ("vocab", "embed")))
    self.ln0 = layers.layer_norm("ln0", LN_EPS, cfg.compute_dtype)
    block = _block_class(cfg)
    if cfg.scan_layers:
      scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(0, 0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.n_layer,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      self.blocks = scanned(cfg, name="blocks")
    else:
      self.blocks = [block(cfg, i, name=f"blocks_{i}") for i in range(cfg.n_layer)]
    self.ln_out = layers.layer_norm("ln_out", LN_EPS, cfg.compute_dtype)
    self.head = layers.Dense(V, ("embed", "vocab"), False, cfg.compute_dtype, jnp.float32,
                             kernel_init=_orthogonal(0.5), name="head")

  def embed(self, tokens):
    """tokens: int[B, T] -> float[B, T, D] (before ln0).

    An id outside [0, V) embeds as NaN (jitted code cannot raise): its logits and any loss over them
    are NaN, a loud failure instead of a silently wrapped-around row. Callers holding concrete ids
    check them first (`check_tokens`: generate, score, the data pipeline)."""
    valid = (tokens >= 0) & (tokens < self.config.vocab_size)
    x = self.emb(jnp.where(valid, tokens, 0))
    return jnp.where(valid[..., None], x, jnp.nan)

  def init_all(self, tokens, state):
    """Touches every submodule (for init): embeds tokens, then runs the model."""
    return self(self.embed(tokens), state)

  def __call__(self, x, state: RWKV7State, mask=None, hidden: bool = False, segment_ids=None):
    """
    Args:
      x: float[B, T, D] input embeddings (token or modality), before ln0.
      state: RWKV7State with batch B.
      mask: bool[B, T] True at real positions, or None.
      hidden: return the final hidden states (after ln_out, float32[B, T, D]) instead of logits.
      segment_ids: int[B, T] examples packed in a row (see `forward`), or None.
    Returns:
      (logits float32[B, T, V] or hidden float32[B, T, D], new RWKV7State).
    """
    cfg = self.config
    if mask is not None:  # what a padding position holds (a NaN, an out-of-vocabulary id) never matters
      x = jnp.where(mask[..., None], x, 0)
    x = nn.with_logical_constraint(self.ln0(x.astype(cfg.compute_dtype)), ACT)
    indices = None if mask is None else shift_indices(mask)
    segments = None
    if segment_ids is not None:
      starts = segment_starts(segment_ids, mask)
      segments = (starts, jnp.cumsum(starts, axis=1, dtype=jnp.int32))  # ids for the WKV op: +1 at each start
    if cfg.scan_layers:
      carry = (x, jnp.zeros_like(x))
      (x, _), (att, wkv, ffn) = self.blocks(carry, (state.att_shift, state.wkv, state.ffn_shift),
                                            jnp.arange(cfg.n_layer, dtype=jnp.int32), indices, mask, segments)
      new_state = RWKV7State(att, wkv, ffn)
    else:
      carry, att, wkv, ffn = (x, None), [], [], []
      for i, block in enumerate(self.blocks):
        carry, (a, w, f) = block(carry, (state.att_shift[i], state.wkv[i], state.ffn_shift[i]), None, indices, mask,
                                 segments)
        att.append(a), wkv.append(w), ffn.append(f)
      x = carry[0]
      new_state = RWKV7State(jnp.stack(att), jnp.stack(wkv), jnp.stack(ffn))
    x = self.ln_out(x)
    if hidden:
      return x.astype(jnp.float32), new_state
    return self.logits(x), new_state

  def logits(self, x):
    """x: float[..., D] final hidden states (after ln_out) -> float32[..., V]."""
    axes = ("batch", "length", "act_vocab") if x.ndim == 3 else (None,) * (x.ndim - 1) + ("act_vocab",)
    return nn.with_logical_constraint(self.head(x.astype(self.config.compute_dtype)), axes)


# ---------------------------------------------------------------------------------------------
# Pure-function surface.


def init_state(config: RWKV7Config, batch_size: int) -> RWKV7State:
  L, D, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
  return RWKV7State(jnp.zeros((L, batch_size, D), jnp.float32), jnp.zeros((L, batch_size, H, N, N), jnp.float32),
                    jnp.zeros((L, batch_size, D), jnp.float32))


def _init_boxed(config: RWKV7Config, key):
  # wkv_impl "reference" for the one-token init pass: no kernel is traced or compiled for init.
  model = RWKV7(config.replace(wkv_impl="reference", remat="none"))
  variables = model.init(key, jnp.zeros((1, 1), jnp.int32), init_state(config, 1), method=RWKV7.init_all)
  return variables["params"]


@functools.lru_cache(maxsize=16)
def _abstract_boxed(config: RWKV7Config):
  """The boxed (logical axes + ShapeDtypeStruct) parameters: one trace of the init per config, shared by
  `param_logical_axes` and `abstract_params` (a model's setup asks for both, several times)."""
  return jax.eval_shape(lambda: _init_boxed(config, jax.random.key(0)))


def param_logical_axes(config: RWKV7Config) -> dict:
  """The logical axis names of every parameter, a tree shaped like the params (PartitionSpecs)."""
  return nn.get_partition_spec(_abstract_boxed(config))  # a new tree: the cached one is never handed out


def abstract_params(config: RWKV7Config, mesh=None) -> dict:
  """jax.ShapeDtypeStruct per parameter (with its sharding on `mesh` when given); computes nothing."""
  shapes = nn.meta.unbox(_abstract_boxed(config))
  if mesh is None:
    return shapes
  shardings = sharding.logical_to_mesh(param_logical_axes(config), mesh)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def init_params(config: RWKV7Config, key: jax.Array, *, mesh=None) -> dict:
  """From-scratch parameters (RWKV-LM initialisation, docs/formats.md#rwkv-lm-pth) as a plain float32 nested dict.

  With `mesh`, every leaf is created directly in its sharding (`sharding.logical_to_mesh` of
  `param_logical_axes`): the full weights never sit on one device.
  """
  fn = lambda k: nn.meta.unbox(_init_boxed(config, k))
  if mesh is None:
    return jax.jit(fn)(key)
  shardings = sharding.logical_to_mesh(param_logical_axes(config), mesh)
  return jax.jit(fn, out_shardings=shardings)(key)


def is_scanned(params: Mapping) -> bool:
  """True for the stacked layout ("blocks" with a leading layers axis), False for blocks_0 ..."""
  return "blocks" in params


def _check_params(config: RWKV7Config, params: Mapping):
  if is_scanned(params) != config.scan_layers:
    have = "stacked ('blocks')" if is_scanned(params) else "unrolled ('blocks_0' ...)"
    raise ValueError(f"params are in the {have} layout but config.scan_layers={config.scan_layers}; convert with "
                     f"rwkv7.{'unstack_layers' if is_scanned(params) else 'stack_layers'} or set scan_layers")
  if config.scan_layers:
    got = params["blocks"]["ln1"]["scale"].shape[0]
    if got != config.n_layer:
      raise ValueError(f"params hold {got} stacked layers; the config has n_layer={config.n_layer}")
  else:
    for i in range(config.n_layer):
      if f"blocks_{i}" not in params:
        raise ValueError(f"params have no 'blocks_{i}': they do not belong to a {config.n_layer}-layer config")
  emb = params["emb"]["embedding"]
  if emb.shape != (config.vocab_size, config.n_embd):
    raise ValueError(f"params['emb']['embedding'] has shape {emb.shape}; config expects "
                     f"{(config.vocab_size, config.n_embd)}")


def _check_state(config: RWKV7Config, state: RWKV7State, batch: int):
  L, D, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
  expected = {"att_shift": (L, batch, D), "wkv": (L, batch, H, N, N), "ffn_shift": (L, batch, D)}
  for name, shape in expected.items():
    got = tuple(getattr(state, name).shape)
    if got != shape:
      raise ValueError(f"state.{name} has shape {got}; this config (L={L}, D={D}, H={H}, N={N}) "
                       f"with batch {batch} expects {shape}: the state belongs to another model or batch")


def check_tokens(config: RWKV7Config, tokens, where: str = "tokens") -> None:
  """Boundary check of concrete token ids (numpy or a concrete jax array): raises ValueError naming
  the first id outside [0, vocab_size). `forward` itself does no value checks (it runs under jit)."""
  values = np.asarray(tokens)
  if values.size and (values.min() < 0 or values.max() >= config.vocab_size):
    bad = values[(values < 0) | (values >= config.vocab_size)]
    raise ValueError(f"{where}: token id {int(bad.flat[0])} is outside the vocabulary [0, {config.vocab_size})")


def embed(config: RWKV7Config, params: Mapping, tokens) -> jax.Array:
  """tokens: int[B, T] -> float[B, T, D] embeddings (the rows of emb.weight, before ln0)."""
  return RWKV7(config).apply({"params": params}, tokens, method=RWKV7.embed)


def head(config: RWKV7Config, params: Mapping, hidden) -> jax.Array:
  """hidden: float[..., D] final hidden states (`forward(..., hidden=True)`) -> logits float32[..., V].

  `forward` = `head` ∘ `forward(hidden=True)`; apart, a loss can take the 65,536-word head at its label
  positions only (`modrwkv.loss_terms(label_capacity=...)`)."""
  if hidden.shape[-1] != config.n_embd:
    raise ValueError(f"head: hidden states must be float[..., D={config.n_embd}]; got shape {tuple(hidden.shape)}")
  return RWKV7(config).apply({"params": params}, hidden, method=RWKV7.logits)


def forward(config: RWKV7Config, params: Mapping, tokens=None, state: RWKV7State | None = None, *,
            embeddings=None, mask=None, hidden: bool = False, segment_ids=None):
  """Runs the model over a sequence, continuing from `state`.

  Args:
    config: model sizes (static under jit: `jax.jit(forward, static_argnums=0)`).
    params: the nested param dict (`init_params`, `load_pth`, ...), in the layout of config.scan_layers.
    tokens: int[B, T] token ids in [0, V) (checked by the callers that hold concrete ids: `check_tokens`;
      under jit an id outside the vocabulary gives NaN logits: from its position on, and with the
      chunked WKV also earlier in its chunk), or None when
      `embeddings` is given.
    state: RWKV7State with batch B, or None for the zero state (sequence start).
    embeddings: float[B, T, D] vectors fed in place of token embeddings (the multimodal path:
      modality tokens concatenated with `embed(config, params, text_tokens)`); they go through ln0.
    mask: bool[B, T], True at real tokens. Padding positions leave every part of the state
      untouched and do not affect real positions; their logits are meaningless.
    hidden: return the final hidden states (after ln_out) float32[B, T, D] instead of logits
      (for task heads such as time-series forecasting).
    segment_ids: int[B, T] or None. Several examples packed in one row, numbered 1, 2, 3, ... left to
      right (padding 0 and mask False). Each example computes what it computes alone: at the first
      real token of every example but the row's first, the token shifts read zeros and the WKV
      state restarts from zero; the row's first example continues from `state`. Padding, wherever
      it sits, changes nothing (its id is ignored). The returned state is the one after each row's
      last real token. None: one example per row.
  Returns:
    (logits float32[B, T, V] or hidden float32[B, T, D], new RWKV7State).
  """
  if (tokens is None) == (embeddings is None):
    raise ValueError("forward: pass exactly one of tokens (int[B, T]) or embeddings (float[B, T, D])")
  _check_params(config, params)
  model = RWKV7(config)
  if tokens is not None:
    if tokens.ndim != 2:
      raise ValueError(f"forward: tokens must be int[B, T]; got shape {tuple(tokens.shape)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"forward: tokens must be integers; got dtype {tokens.dtype}")
    embeddings = model.apply({"params": params}, tokens, method=RWKV7.embed)
  if embeddings.ndim != 3 or embeddings.shape[-1] != config.n_embd:
    raise ValueError(f"forward: embeddings must be float[B, T, D={config.n_embd}]; got shape {tuple(embeddings.shape)}")
  batch, length = embeddings.shape[:2]
  if length == 0:
    raise ValueError("forward: the sequence is empty (T = 0)")
  if mask is not None and tuple(mask.shape) != (batch, length):
    raise ValueError(f"forward: mask has shape {tuple(mask.shape)}; expected [B, T] = {(batch, length)}")
  if segment_ids is not None:
    segment_ids = jnp.asarray(segment_ids)
    if tuple(segment_ids.shape) != (batch, length) or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise ValueError(f"forward: segment_ids must be int[B, T] = {(batch, length)}; got "
                       f"{segment_ids.dtype}{list(segment_ids.shape)}")
  state = init_state(config, batch) if state is None else state
  _check_state(config, state, batch)
  return model.apply({"params": params}, embeddings, state, None if mask is None else mask.astype(bool), hidden,
                     segment_ids)

# ---------------------------------------------------------------------------------------------
# Checkpoints. One table maps official RWKV-LM names to param paths; .pth import/export and the
# fla/HF safetensors import all go through it.

# kind: "same" = identical layout, "T" = torch weight [out, in] <-> flax kernel [in, out],
# "vec" = [1, 1, D] in the checkpoint <-> [D] here.
_VEC_NAMES = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a")


def checkpoint_layout(config: RWKV7Config) -> list[tuple[str, tuple[str, ...], tuple[int, ...], str]]:
  """[(checkpoint name, param path, checkpoint shape, kind)] for every parameter of `config`."""
  V, D, H, N, F = config.vocab_size, config.n_embd, config.n_head, config.head_size, config.dim_ffn
  rows = [("emb.weight", ("emb", "embedding"), (V, D), "same")]
  rows += [(f"blocks.0.ln0.{w}", ("ln0", p), (D,), "same") for w, p in (("weight", "scale"), ("bias", "bias"))]
  for i in range(config.n_layer):
    blk, att = f"blocks.{i}.", f"blocks.{i}.att."
    pb = (f"blocks_{i}",)
    for ln in ("ln1", "ln2"):
      rows += [(f"{blk}{ln}.{w}", pb + (ln, p), (D,), "same") for w, p in (("weight", "scale"), ("bias", "bias"))]
    for name in _VEC_NAMES:
      if name != "v0" or i > 0:
        rows.append((att + name, pb + ("att", name), (1, 1, D), "vec"))
    for x, rank in (("w", config.dim_w), ("a", config.dim_a), ("v", config.dim_v), ("g", config.dim_g)):
      if x != "v" or i > 0:
        rows += [(f"{att}{x}1", pb + ("att", f"{x}1"), (D, rank), "same"),
                 (f"{att}{x}2", pb + ("att", f"{x}2"), (rank, D), "same")]
    rows.append((att + "r_k", pb + ("att", "r_k"), (H, N), "same"))
    for proj in ("receptance", "key", "value", "output"):
      rows.append((f"{att}{proj}.weight", pb + ("att", proj, "kernel"), (D, D), "T"))
    rows += [(f"{att}ln_x.{w}", pb + ("att", "ln_x", p), (D,), "same") for w, p in (("weight", "scale"), ("bias", "bias"))]
    rows += [(f"{blk}ffn.x_k", pb + ("ffn", "x_k"), (1, 1, D), "vec"),
             (f"{blk}ffn.key.weight", pb + ("ffn", "key", "kernel"), (F, D), "T"),
             (f"{blk}ffn.value.weight", pb + ("ffn", "value", "kernel"), (D, F), "T")]
  rows += [(f"ln_out.{w}", ("ln_out", p), (D,), "same") for w, p in (("weight", "scale"), ("bias", "bias"))]
  rows.append(("head.weight", ("head", "kernel"), (V, D), "T"))
  return rows


_BLOCK0_UNUSED = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def _block0_value_residual(D: int, dim_v: int) -> dict[str, np.ndarray]:
  """Block 0's value-residual params, which block 0 never uses: RWKV-LM's initial values (float32)."""
  linear = np.arange(D) / (D - 1) - 0.5
  return {"v0": (0.73 - 0.4 * linear).astype(np.float32), "v1": np.zeros((D, dim_v), np.float32),
          "v2": np.zeros((dim_v, D), np.float32)}


def _layer_count(keys, pattern: str, source: str) -> int:
  """n_layer from keys matching `pattern` (group 1 = layer index), validated before anything is sized
  from it: the indices must be exactly 0 .. n−1, so one key with a huge index cannot allocate anything."""
  layers = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
  if not layers:
    raise ValueError(f"{source}: no layer keys ({pattern!r}); is this an RWKV-7 checkpoint?")
  if max(layers) + 1 != len(layers):
    missing = next(i for i in range(len(layers) + 1) if i not in layers)
    raise ValueError(f"{source}: layer indices are not 0..{len(layers) - 1}: found {len(layers)} layers with "
                     f"largest index {max(layers)} (layer {missing} is missing)")
  return len(layers)


def config_from_state_dict(sd: Mapping[str, np.ndarray], source: str = "checkpoint", **overrides) -> RWKV7Config:
  """Infers every size from tensor shapes (never from a formula)."""
  def shape(name):
    if name not in sd:
      raise ValueError(f"{source}: missing key '{name}'; is this an RWKV-7 (x070) checkpoint?")
    return tuple(sd[name].shape)

  V, D = shape("emb.weight")
  L = _layer_count(sd, r"blocks\.(\d+)\.", source)
  H, N = shape("blocks.0.att.r_k")
  if H * N != D:
    raise ValueError(f"{source}: blocks.0.att.r_k has shape {(H, N)} but n_embd = {D} != H·N")
  dim_v = shape("blocks.1.att.v1")[1] if L > 1 else (
      shape("blocks.0.att.v1")[1] if "blocks.0.att.v1" in sd else RWKV7Config.dim_v)
  return RWKV7Config(vocab_size=V, n_layer=L, n_embd=D, head_size=N, dim_w=shape("blocks.0.att.w1")[1],
                     dim_a=shape("blocks.0.att.a1")[1], dim_v=dim_v, dim_g=shape("blocks.0.att.g1")[1],
                     dim_ffn=shape("blocks.0.ffn.key.weight")[0], **overrides)


_SIZE_FIELDS = ("vocab_size", "n_layer", "n_embd", "head_size", "dim_w", "dim_a", "dim_v", "dim_g", "dim_ffn")


def _resolve_config(found: RWKV7Config, expected: RWKV7Config | None, source: str, overrides: Mapping) -> RWKV7Config:
  """The checkpoint's sizes, with the non-size fields (dtype, wkv_impl, scan_layers, remat, ...) of
  `expected` and then of `overrides`. Raises when `expected` has other sizes."""
  if expected is None:
    return found
  diff = [f"{f}={getattr(found, f)} (expected {getattr(expected, f)})" for f in _SIZE_FIELDS
          if getattr(found, f) != getattr(expected, f)]
  if diff:
    raise ValueError(f"{source}: checkpoint is from another model size: {', '.join(diff)}")
  return expected.replace(**overrides)


def _place(tree: Mapping, config: RWKV7Config, param_dtype, mesh) -> dict:
  """numpy tree -> jax arrays of `param_dtype`; with `mesh`, each leaf goes straight to its sharding."""
  if mesh is None:
    return jax.tree.map(lambda x: jnp.asarray(x, param_dtype), tree)
  shardings = sharding.logical_to_mesh(param_logical_axes(config), mesh)
  return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x, param_dtype), s), tree, shardings)


def _to_float32(array) -> np.ndarray:
  """float32 copy of a checkpoint array (exact for bf16 and fp16: widening)."""
  array = np.asarray(array)
  if array.dtype == jnp.bfloat16:  # a 16-bit shift is bf16 -> f32, and faster than the ml_dtypes cast
    return (array.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
  return array.astype(np.float32)


def _stacked_path(path: tuple[str, ...]) -> tuple[tuple[str, ...], int | None]:
  if path[0].startswith("blocks_"):
    return ("blocks",) + path[1:], int(path[0][len("blocks_"):])
  return path, None


def params_from_state_dict(sd: Mapping[str, np.ndarray], config: RWKV7Config | None = None, *,
                           source: str = "checkpoint", param_dtype=jnp.float32, mesh=None, **config_overrides):
  """Official RWKV-LM state dict (names of docs/formats.md#rwkv-lm-pth) -> (config, params), never running the
  initialiser. The layout follows config.scan_layers (stacked "blocks" or "blocks_0" ...); with
  `mesh` each leaf is placed on its sharding as it is converted."""
  found = config_from_state_dict(sd, source, **({} if config is not None else config_overrides))
  config = _resolve_config(found, config, source, config_overrides)
  layout = checkpoint_layout(config)
  known = {row[0] for row in layout} | set(_BLOCK0_UNUSED)
  unexpected = sorted(set(sd) - known)
  if unexpected:
    raise ValueError(f"{source}: unexpected keys {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''} "
                     "(not part of the RWKV-7 x070 layout; DeepEmbed and other variants are not supported)")

  def checked(name, shape, kind):
    if name not in sd:
      raise ValueError(f"{source}: missing key '{name}' (expected shape {shape})")
    array = sd[name]
    ok = tuple(array.shape) == shape or (kind == "vec" and array.size == shape[-1] and array.ndim <= 3)
    if not ok:
      raise ValueError(f"{source}: key '{name}' has shape {tuple(array.shape)}; expected {shape} "
                       f"for a model with vocab={config.vocab_size}, D={config.n_embd}, H={config.n_head}")
    value = _to_float32(array)
    return value.T if kind == "T" else value.reshape(-1) if kind == "vec" else value

  tree: dict = {}

  def put(path, value, index=None):
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    if index is None:
      node[path[-1]] = value
    else:
      if path[-1] not in node:
        node[path[-1]] = np.empty((config.n_layer,) + value.shape, np.float32)
      node[path[-1]][index] = value

  for name, path, shape, kind in layout:
    value = checked(name, shape, kind)
    if config.scan_layers:
      stacked_path, index = _stacked_path(path)
      put(stacked_path, value, index)
    else:
      put(path, value)
  if config.scan_layers:  # stacked block 0 holds the value-residual params it never uses
    D, dv = config.n_embd, config.dim_v
    fallback = _block0_value_residual(D, dv)
    for name, shape, kind in ((_BLOCK0_UNUSED[0], (1, 1, D), "vec"), (_BLOCK0_UNUSED[1], (D, dv), "same"),
                              (_BLOCK0_UNUSED[2], (dv, D), "same")):
      leaf = name.rsplit(".", 1)[1]
      value = checked(name, shape, kind) if name in sd else fallback[leaf]
      put(("blocks", "att", leaf), value, 0)
  return config, _place(tree, config, param_dtype, mesh)


def stack_layers(params: Mapping, config: RWKV7Config | None = None) -> dict:
  """Unrolled params ("blocks_0" ... "blocks_{L-1}") -> the stacked layout ("blocks", leading layers
  axis). Block 0 gains the value-residual params it never uses (RWKV-LM's initial values).
  Adapter leaves (Bone / Bat / LoRA) are stacked with their kernels. `config` gives dim_v when L = 1."""
  n = sum(1 for k in params if re.fullmatch(r"blocks_\d+", k))
  if n == 0 or is_scanned(params):
    raise ValueError("stack_layers: params have no 'blocks_<i>' (already stacked, or not RWKV-7 params)")
  blocks = [params[f"blocks_{i}"] for i in range(n)]
  first = {**blocks[0], "att": dict(blocks[0]["att"])}
  if "v0" not in first["att"]:
    D = first["ln1"]["scale"].shape[0]
    dim_v = blocks[1]["att"]["v1"].shape[1] if n > 1 else (config or RWKV7Config).dim_v
    first["att"].update({k: jnp.asarray(v, blocks[0]["ln1"]["scale"].dtype)
                         for k, v in _block0_value_residual(D, dim_v).items()})
  blocks[0] = first
  try:
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  except ValueError as e:
    raise ValueError(f"stack_layers: the blocks do not all hold the same parameters (adapters on some layers "
                     f"only?): {e}") from e
  out = {k: v for k, v in params.items() if not re.fullmatch(r"blocks_\d+", k)}
  out["blocks"] = stacked
  return out


def unstack_layers(params: Mapping) -> dict:
  """The stacked layout -> "blocks_0" ... "blocks_{L-1}" (block 0 drops its unused value-residual params)."""
  if not is_scanned(params):
    raise ValueError("unstack_layers: params have no stacked 'blocks' (already unrolled?)")
  stacked = params["blocks"]
  L = jax.tree.leaves(stacked)[0].shape[0]
  out = {k: v for k, v in params.items() if k != "blocks"}
  for i in range(L):
    out[f"blocks_{i}"] = jax.tree.map(lambda x: x[i], stacked)
  out["blocks_0"] = {**out["blocks_0"], "att": {k: v for k, v in out["blocks_0"]["att"].items()
                                                if k not in ("v0", "v1", "v2")}}
  return out


def state_dict_from_params(config: RWKV7Config, params: Mapping, dtype=np.float32) -> dict[str, np.ndarray]:
  """(config, params) -> official RWKV-LM state dict (numpy, `dtype`), incl. block-0 v0/v1/v2.

  Either layout; adapters (Bone / Bat / LoRA) are merged into their kernels first."""
  _check_params(config, params)
  if peft.adapter_leaves(params):
    params = peft.merge_all(params)
  sd = {}
  for name, path, shape, kind in checkpoint_layout(config):
    index = None
    if config.scan_layers:
      path, index = _stacked_path(path)
    node = params
    for p in path:
      node = node[p]
    value = np.asarray(jax.device_get(node if index is None else node[index]), np.float32)
    value = value.T if kind == "T" else value.reshape(shape)
    sd[name] = np.asarray(value, dtype)
  # Block 0 never uses the value-residual LoRA, but RWKV-LM's strict loader expects the keys.
  D = config.n_embd
  if config.scan_layers:
    att = params["blocks"]["att"]
    unused = {k: np.asarray(jax.device_get(att[k][0]), np.float32) for k in ("v0", "v1", "v2")}
  else:
    unused = _block0_value_residual(D, config.dim_v)
  sd["blocks.0.att.v0"] = unused["v0"].reshape(1, 1, D).astype(dtype)
  sd["blocks.0.att.v1"] = unused["v1"].astype(dtype)
  sd["blocks.0.att.v2"] = unused["v2"].astype(dtype)
  return sd


def load_pth(path: str | os.PathLike, config: RWKV7Config | None = None, *, param_dtype=jnp.float32, mesh=None,
             **config_overrides) -> tuple[RWKV7Config, dict]:
  """Reads an official RWKV-LM `.pth` (fp32 / bf16 / fp16) without torch and without running the initialiser.

  Args:
    path: the .pth file.
    config: if given, the checkpoint must have exactly these sizes (else ValueError); its other fields
      (dtype, wkv_impl, scan_layers, remat) apply to the result.
    param_dtype: dtype of the returned params.
    mesh: place every leaf on its sharding (`sharding.logical_to_mesh`) as it is read.
    **config_overrides: non-size config fields, e.g. dtype="bfloat16", scan_layers=True.
  Returns:
    (config, params) with every size read from tensor shapes.
  """
  path = os.fspath(path)
  return params_from_state_dict(read_pth(path), config, source=path, param_dtype=param_dtype, mesh=mesh,
                                **config_overrides)


def save_pth(config: RWKV7Config, params: Mapping, path: str | os.PathLike, *, dtype=np.float32) -> None:
  """Writes params (either layout; adapters merged) as an official RWKV-LM `.pth` (loadable by torch,
  the `rwkv` package, RWKV-LM)."""
  write_pth(state_dict_from_params(config, params, np.dtype(dtype)), path)


# fla / Hugging Face `RWKV7ForCausalLM` names: official name -> (HF name, transposed).
def _hf_name(name: str) -> tuple[str, bool]:
  fixed = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.norm.weight",
           "ln_out.bias": "model.norm.bias", "head.weight": "lm_head.weight"}
  if name in fixed:
    return fixed[name], False
  _, layer, part, rest = name.split(".", 3)
  part = {"att": "attn", "ffn": "ffn", "ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}[part]
  if part == "attn":
    if m := re.fullmatch(r"([wavg])([012])", rest):
      x, j = m.groups()
      return f"model.layers.{layer}.attn.{x}_lora.lora." + {"0": "2.bias", "1": "0.weight", "2": "2.weight"}[j], j != "0"
    head, _, tail = rest.partition(".")
    rest = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj",
            "ln_x": "g_norm"}.get(head, head) + (f".{tail}" if tail else "")
  return f"model.layers.{layer}.{part}.{rest}", False


def load_safetensors(path: str | os.PathLike, config: RWKV7Config | None = None, *, param_dtype=jnp.float32,
                     mesh=None, **config_overrides) -> tuple[RWKV7Config, dict]:
  """Reads an fla / Hugging Face `RWKV7ForCausalLM` checkpoint (.safetensors file or snapshot folder),
  without running the initialiser; arguments as `load_pth`."""
  path = os.fspath(path)
  hf = read_safetensors_dir(path)
  if "model.embeddings.weight" not in hf:
    raise ValueError(f"{path}: not an RWKV7ForCausalLM checkpoint (no model.embeddings.weight)")
  n_layer = _layer_count(hf, r"model\.layers\.(\d+)\.", path)
  # Translate name by name into the official layout; the names depend only on n_layer.
  sd, used = {}, set()
  names = RWKV7Config(n_layer=n_layer)
  for name, _, _, _ in checkpoint_layout(names) + [(n, None, None, None) for n in _BLOCK0_UNUSED]:
    hf_name, transposed = _hf_name(name)
    if hf_name in hf:
      array = hf[hf_name]
      sd[name] = array.T if transposed else array
      used.add(hf_name)
  unexpected = sorted(set(hf) - used)
  if unexpected:
    raise ValueError(f"{path}: unexpected keys {unexpected[:6]}: not the RWKV7ForCausalLM layout this reader knows")
  return params_from_state_dict(sd, config, source=path, param_dtype=param_dtype, mesh=mesh, **config_overrides)
