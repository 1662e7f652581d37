"""RWKV-7 "Goose" (x070) language model in Flax linen, with official-checkpoint import and export.

Formulas and shapes are those of DESIGN §2. Reading order: config and presets, the from-scratch
initialisation of RWKV-LM, token shift, the layers (TimeMix, ChannelMix, Block), the model, the
recurrent state, the pure-function surface (`init_params`, `forward`, `embed`), and last the
checkpoint formats (`load_pth`, `save_pth`, `load_safetensors`).

Params are a plain nested dict (the linen "params" collection). Flax kernels are Wᵀ of the
checkpoint's torch `[out, in]` weights; `[1, 1, D]` vectors are stored as `[D]`; LoRA-style
matrices (w1, w2, ...) keep their checkpoint layout because the checkpoint already applies them
as `x @ A`. Every parameter carries logical axis names (see `param_logical_axes`).

Numerics: matmuls run in `config.dtype` with float32 accumulation; LayerNorm / GroupNorm
statistics, the decay, the in-context rate, the WKV state and the logits are float32.
"""

from __future__ import annotations

import dataclasses
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

from modrwkv_jax.ops.wkv7 import resolve_impl, wkv7
from modrwkv_jax.peft import adapters as peft_adapters
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

  @property
  def n_head(self) -> int:
    return self.n_embd // self.head_size

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kwargs) -> RWKV7Config:
    return dataclasses.replace(self, **kwargs)


# Released RWKV-7 World / G1 sizes (DESIGN §2.2): (n_layer, n_embd, dim_w, dim_a, dim_v, dim_g).
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
# From-scratch initialisation (RWKV-LM train_temp, DESIGN §2.2).


def _layer_init_values(config: RWKV7Config, layer: int) -> dict[str, np.ndarray]:
  """The deterministic per-channel initial values of one layer, float64."""
  L, D, N = config.n_layer, config.n_embd, config.head_size
  n = np.arange(D, dtype=np.float64)
  r01 = layer / (L - 1) if L > 1 else 0.0
  r1 = 1.0 - layer / L
  ddd = n / D
  linear = n / (D - 1) - 0.5
  z = ((n % N) - (N - 1) / 2) / ((N - 1) / 2)
  zig = z * np.abs(z)
  www = -6 + 6 * (n / (D - 1)) ** (1 + r01**0.3)
  return {
      "x_r": 1 - ddd ** (0.2 * r1), "x_w": 1 - ddd ** (0.9 * r1), "x_k": 1 - ddd ** (0.7 * r1),
      "x_v": 1 - ddd ** (0.7 * r1), "x_a": 1 - ddd ** (0.9 * r1), "x_g": 1 - ddd ** (0.2 * r1),
      "w0": www + 0.5 + 2.5 * zig, "a0": -0.19 + 0.3 * zig + 0.4 * linear, "v0": 0.73 - 0.4 * linear,
      "k_k": 0.71 - 0.1 * linear, "k_a": np.full(D, 1.02), "r_k": np.full((D // N, N), -0.04),
      "ln_x": np.full(D, ((layer + 1) / L) ** 0.7), "ffn_x_k": 1 - ddd ** (r1**4),
  }


def _const(value: np.ndarray) -> Callable:
  def init(key, shape, dtype=jnp.float32):
    del key
    if tuple(shape) != value.shape:
      raise ValueError(f"initial value has shape {value.shape}, parameter has {tuple(shape)}")
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


def _param(module: nn.Module, name: str, init: Callable, shape: tuple[int, ...], axes: tuple):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape)


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


def token_shift(x, shift_state, indices=None):
  """prev(x)_t = x of the previous real position (shift_state before the first).

  Args:
    x: float[B, T, D]; shift_state: float[B, D]; indices: `shift_indices(mask)` or None (no padding).
  Returns:
    (prev float[B, T, D], new_shift_state float[B, D]).
  """
  shift_state = shift_state.astype(x.dtype)
  if indices is None:
    return jnp.concatenate([shift_state[:, None], x[:, :-1]], axis=1), x[:, -1]
  prev_idx, last_idx = indices
  ext = jnp.concatenate([shift_state[:, None], x], axis=1)  # [B, 1 + T, D]; index 0 = carried state
  prev = jnp.take_along_axis(ext, (prev_idx + 1)[:, :, None], axis=1)
  last = jnp.take_along_axis(ext, (last_idx + 1)[:, None, None], axis=1)[:, 0]
  return prev, last


def _mm(x, w, dtype):
  """x @ w in `dtype` with float32 accumulation; returns float32."""
  return jnp.einsum("...i,io->...o", x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


class Linear(nn.Module):
  """Bias-free projection y = x @ kernel; kernel float[in, out] is the torch weight transposed.

  x: float[..., in] -> float[..., out] in `out_dtype` (default: `dtype`), float32 accumulation.
  When the params hold adapter leaves next to the kernel (modrwkv_jax.peft.add_adapters: "bone",
  "bat", "lora_a"/"lora_b"/"lora_scale"), the projection is the adapted one, peft.linear.
  """
  features: int
  axes: tuple[str, str]
  kernel_init: Callable
  dtype: Any = jnp.float32
  out_dtype: Any = None

  @nn.compact
  def __call__(self, x):
    kernel = _param(self, "kernel", self.kernel_init, (x.shape[-1], self.features), self.axes)
    adapter = {n: nn.meta.unbox(self.get_variable("params", n))
               for n in peft_adapters.ADAPTER_LEAVES if self.has_variable("params", n)}
    y = peft_adapters.linear(x, kernel, adapter, self.dtype) if adapter else _mm(x, kernel, self.dtype)
    return y.astype(self.out_dtype or self.dtype)


def _layer_norm(name: str, dtype, scale_init=nn.initializers.ones) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, use_fast_variance=False, name=name,
                      scale_init=nn.with_logical_partitioning(scale_init, ("embed",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


class HeadGroupNorm(nn.Module):
  """GroupNorm with one group per head (att.ln_x), per token, float32 statistics.

  x: float[B, T, H, N] -> float32[B, T, H·N].
  """
  eps: float
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    b, t, h, n = x.shape
    scale = _param(self, "scale", self.scale_init, (h * n,), ("attn",))
    bias = _param(self, "bias", nn.initializers.zeros, (h * n,), ("attn",))
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = ((x - mean) * jax.lax.rsqrt(var + self.eps)).reshape(b, t, h * n)
    return y * scale.astype(jnp.float32) + bias.astype(jnp.float32)


class TimeMix(nn.Module):
  """RWKV-7 time mixing (attention replacement) of one layer, DESIGN §2 table."""
  config: RWKV7Config
  layer: int

  @nn.compact
  def __call__(self, x, shift_state, wkv_state, v_first, indices=None, mask=None):
    """
    Args:
      x: float[B, T, D] layer input after ln1.
      shift_state: float32[B, D] the last ln1 output of the previous call (zeros at sequence start).
      wkv_state: float32[B, H, N, N] WKV state, layout [key, value].
      v_first: float[B, T, D] value of layer 0, or None when this is layer 0.
      indices, mask: `shift_indices(mask)` and bool[B, T] (True = real token), or None.
    Returns:
      (out float[B, T, D], new_shift_state float32[B, D], new_wkv_state float32[B, H, N, N], v_first)
    """
    cfg = self.config
    B, T, D = x.shape
    H, N, cd = cfg.n_head, cfg.head_size, cfg.compute_dtype
    init = _layer_init_values(cfg, self.layer)
    vec = lambda name, axes=("embed",): _param(self, name, _const(init[name]), (D,), axes)

    def low_rank(prefix, rank, x, inner=lambda y: y):
      """inner(x @ {prefix}1) @ {prefix}2 in float32; {prefix}1 [D, rank] starts at zero, {prefix}2 [rank, D]
      orthogonal·0.1 (RWKV-LM). Stored as in the checkpoint: they already act as x @ A."""
      a1 = _param(self, f"{prefix}1", nn.initializers.zeros, (D, rank), ("embed", "lora"))
      a2 = _param(self, f"{prefix}2", _orthogonal(0.1, (rank, D)), (rank, D), ("lora", "attn"))
      return _mm(inner(_mm(x, a1, cd)).astype(cd), a2, cd)

    proj = lambda name, scale, axes=("embed", "attn"): Linear(D, axes, _orthogonal(scale), cd, name=name)

    prev, new_shift = token_shift(x, shift_state, indices)
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
    if self.layer == 0:
      v_first = v
    else:
      gate = jax.nn.sigmoid(vec("v0", ("attn",)).astype(jnp.float32) + low_rank("v", cfg.dim_v, mixed["v"]))
      v = (v + (v_first - v).astype(jnp.float32) * gate).astype(cd)

    a_in, b_in, k_in, lw_in = -kk, kk * heads(alpha), heads(k), heads(log_w)
    if mask is not None:  # padding: decay 1, no write, no removal -> the state passes unchanged
      m = mask[:, :, None, None]
      b_in, k_in, lw_in = jnp.where(m, b_in, 0), jnp.where(m, k_in, 0), jnp.where(m, lw_in, 0)
    spec = ("batch", "length", "heads", "head_dim")
    r_in, v_in, a_in, b_in, k_in, lw_in = (nn.with_logical_constraint(t, spec) for t in (
        heads(r), heads(v), a_in.astype(cd), b_in.astype(cd), k_in, lw_in))
    out, new_wkv = wkv7(r_in, lw_in, k_in, v_in, a_in, b_in, wkv_state, impl=cfg.wkv_impl,
                        chunk_size=cfg.wkv_chunk_size, partition=nn.logical_to_mesh_axes(spec))
    out = HeadGroupNorm(GN_EPS, _const(init["ln_x"]), name="ln_x")(out)
    r_k = _param(self, "r_k", _const(init["r_k"]), (H, N), ("heads", "head_dim"))
    bonus = (heads(r).astype(jnp.float32) * heads(k).astype(jnp.float32) * r_k.astype(jnp.float32)).sum(-1, keepdims=True)
    out = out + (bonus * heads(v).astype(jnp.float32)).reshape(B, T, D)
    out = proj("output", 0.0, ("attn", "embed"))((out * g).astype(cd))
    return out, new_shift.astype(jnp.float32), new_wkv, v_first


class ChannelMix(nn.Module):
  """RWKV-7 channel mixing: out = W_v relu(W_k (x + δ ⊙ x_k))²."""
  config: RWKV7Config
  layer: int

  @nn.compact
  def __call__(self, x, shift_state, indices=None):
    """x: float[B, T, D] after ln2; shift_state: float32[B, D]. Returns (out float[B, T, D], new shift)."""
    cfg, cd = self.config, self.config.compute_dtype
    init = _layer_init_values(cfg, self.layer)
    prev, new_shift = token_shift(x, shift_state, indices)
    x_k = _param(self, "x_k", _const(init["ffn_x_k"]), (cfg.n_embd,), ("embed",))
    h = x + (prev - x) * x_k.astype(cd)
    h = Linear(cfg.dim_ffn, ("embed", "mlp"), _orthogonal(1.0), cd, name="key")(h)
    h = jnp.square(jax.nn.relu(h))
    out = Linear(cfg.n_embd, ("mlp", "embed"), _orthogonal(0.0), cd, name="value")(h)
    return out, new_shift.astype(jnp.float32)


class Block(nn.Module):
  """x += TimeMix(ln1(x)); x += ChannelMix(ln2(x))."""
  config: RWKV7Config
  layer: int

  @nn.compact
  def __call__(self, x, state, v_first, indices=None, mask=None):
    """x: float[B, T, D]; state: (att_shift [B, D], wkv [B, H, N, N], ffn_shift [B, D]) float32."""
    cfg, cd = self.config, self.config.compute_dtype
    att_shift, wkv_state, ffn_shift = state
    h = _layer_norm("ln1", cd)(x)
    h, att_shift, wkv_state, v_first = TimeMix(cfg, self.layer, name="att")(
        h, att_shift, wkv_state, v_first, indices, mask)
    x = x + h
    h, ffn_shift = ChannelMix(cfg, self.layer, name="ffn")(_layer_norm("ln2", cd)(x), ffn_shift, indices)
    x = nn.with_logical_constraint(x + h, ("batch", "length", "embed"))
    return x, (att_shift, wkv_state, ffn_shift), v_first


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


class RWKV7(nn.Module):
  """The RWKV-7 language model: emb -> ln0 -> blocks -> ln_out -> head."""
  config: RWKV7Config

  def setup(self):
    cfg = self.config
    V, D = cfg.vocab_size, cfg.n_embd
    emb_init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -1e-4, 1e-4)
    self.emb = nn.Embed(V, D, dtype=cfg.compute_dtype,
                        embedding_init=nn.with_logical_partitioning(emb_init, ("vocab", "embed")))
    self.ln0 = _layer_norm("ln0", cfg.compute_dtype)
    self.blocks = [Block(cfg, i, name=f"blocks_{i}") for i in range(cfg.n_layer)]
    self.ln_out = _layer_norm("ln_out", cfg.compute_dtype)
    self.head = Linear(V, ("embed", "vocab"), _orthogonal(0.5), cfg.compute_dtype, jnp.float32, name="head")

  def embed(self, tokens):
    """tokens: int[B, T] -> float[B, T, D] (before ln0)."""
    return self.emb(tokens)

  def init_all(self, tokens, state):
    """Touches every submodule (for init): embeds tokens, then runs the model."""
    return self(self.embed(tokens), state)

  def __call__(self, x, state: RWKV7State, mask=None, hidden: bool = False):
    """
    Args:
      x: float[B, T, D] input embeddings (token or modality), before ln0.
      state: RWKV7State with batch B.
      mask: bool[B, T] True at real positions, or None.
      hidden: return the final hidden states (after ln_out, float32[B, T, D]) instead of logits.
    Returns:
      (logits float32[B, T, V] or hidden float32[B, T, D], new RWKV7State).
    """
    x = nn.with_logical_constraint(self.ln0(x.astype(self.config.compute_dtype)), ("batch", "length", "embed"))
    indices = None if mask is None else shift_indices(mask)
    v_first, att, wkv, ffn = None, [], [], []
    for i, block in enumerate(self.blocks):
      x, (a, w, f), v_first = block(x, (state.att_shift[i], state.wkv[i], state.ffn_shift[i]), v_first,
                                    indices, mask)
      att.append(a), wkv.append(w), ffn.append(f)
    new_state = RWKV7State(jnp.stack(att), jnp.stack(wkv), jnp.stack(ffn))
    x = self.ln_out(x)
    if hidden:
      return x.astype(jnp.float32), new_state
    logits = nn.with_logical_constraint(self.head(x), ("batch", "length", "vocab"))
    return logits, new_state


# ---------------------------------------------------------------------------------------------
# Pure-function surface.


def init_state(config: RWKV7Config, batch_size: int) -> RWKV7State:
  L, D, H, N = config.n_layer, config.n_embd, config.n_head, config.head_size
  return RWKV7State(jnp.zeros((L, batch_size, D), jnp.float32), jnp.zeros((L, batch_size, H, N, N), jnp.float32),
                    jnp.zeros((L, batch_size, D), jnp.float32))


def _init_boxed(config: RWKV7Config, key):
  variables = RWKV7(config).init(key, jnp.zeros((1, 1), jnp.int32), init_state(config, 1), method=RWKV7.init_all)
  return variables["params"]


def init_params(config: RWKV7Config, key: jax.Array) -> dict:
  """From-scratch parameters (RWKV-LM initialisation, DESIGN §2.2) as a plain float32 nested dict."""
  return nn.meta.unbox(jax.jit(_init_boxed, static_argnums=0)(config, key))


def param_logical_axes(config: RWKV7Config) -> dict:
  """The logical axis names of every parameter, a tree shaped like the params (PartitionSpecs)."""
  boxed = jax.eval_shape(lambda: _init_boxed(config, jax.random.key(0)))
  return nn.get_partition_spec(boxed)


def _check_params(config: RWKV7Config, params: Mapping):
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


def _concrete(x):
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def embed(config: RWKV7Config, params: Mapping, tokens) -> jax.Array:
  """tokens: int[B, T] -> float[B, T, D] embeddings (the rows of emb.weight, before ln0)."""
  return RWKV7(config).apply({"params": params}, tokens, method=RWKV7.embed)


def forward(config: RWKV7Config, params: Mapping, tokens=None, state: RWKV7State | None = None, *,
            embeddings=None, mask=None, hidden: bool = False):
  """Runs the model over a sequence, continuing from `state`.

  Args:
    config: model sizes (static under jit: `jax.jit(forward, static_argnums=0)`).
    params: the nested param dict (`init_params`, `load_pth`, ...).
    tokens: int[B, T] token ids, or None when `embeddings` is given.
    state: RWKV7State with batch B, or None for the zero state (sequence start).
    embeddings: float[B, T, D] vectors fed in place of token embeddings (the multimodal path:
      modality tokens concatenated with `embed(config, params, text_tokens)`); they go through ln0.
    mask: bool[B, T], True at real tokens. Padding positions leave every part of the state
      untouched and do not affect real positions; their logits are meaningless.
    hidden: return the final hidden states (after ln_out) float32[B, T, D] instead of logits
      (for task heads such as time-series forecasting).
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
    values = _concrete(tokens)
    if values is not None and values.size and (values.min() < 0 or values.max() >= config.vocab_size):
      bad = values[(values < 0) | (values >= config.vocab_size)]
      raise ValueError(f"forward: token id {int(bad[0])} is outside the vocabulary [0, {config.vocab_size})")
    embeddings = model.apply({"params": params}, tokens, method=RWKV7.embed)
  if embeddings.ndim != 3 or embeddings.shape[-1] != config.n_embd:
    raise ValueError(f"forward: embeddings must be float[B, T, D={config.n_embd}]; got shape {tuple(embeddings.shape)}")
  batch, length = embeddings.shape[:2]
  if length == 0:
    raise ValueError("forward: the sequence is empty (T = 0)")
  if mask is not None and tuple(mask.shape) != (batch, length):
    raise ValueError(f"forward: mask has shape {tuple(mask.shape)}; expected [B, T] = {(batch, length)}")
  state = init_state(config, batch) if state is None else state
  _check_state(config, state, batch)
  return model.apply({"params": params}, embeddings, state, None if mask is None else mask.astype(bool), hidden)


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


def config_from_state_dict(sd: Mapping[str, np.ndarray], source: str = "checkpoint", **overrides) -> RWKV7Config:
  """Infers every size from tensor shapes (never from a formula)."""
  def shape(name):
    if name not in sd:
      raise ValueError(f"{source}: missing key '{name}'; is this an RWKV-7 (x070) checkpoint?")
    return tuple(sd[name].shape)

  V, D = shape("emb.weight")
  layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
  if not layers:
    raise ValueError(f"{source}: no 'blocks.<i>.' keys; is this an RWKV-7 checkpoint?")
  L = max(layers) + 1
  H, N = shape("blocks.0.att.r_k")
  if H * N != D:
    raise ValueError(f"{source}: blocks.0.att.r_k has shape {(H, N)} but n_embd = {D} != H·N")
  dim_v = shape("blocks.1.att.v1")[1] if L > 1 else (
      shape("blocks.0.att.v1")[1] if "blocks.0.att.v1" in sd else RWKV7Config.dim_v)
  return RWKV7Config(vocab_size=V, n_layer=L, n_embd=D, head_size=N, dim_w=shape("blocks.0.att.w1")[1],
                     dim_a=shape("blocks.0.att.a1")[1], dim_v=dim_v, dim_g=shape("blocks.0.att.g1")[1],
                     dim_ffn=shape("blocks.0.ffn.key.weight")[0], **overrides)


def _check_expected_config(found: RWKV7Config, expected: RWKV7Config | None, source: str):
  if expected is None:
    return
  fields = ("vocab_size", "n_layer", "n_embd", "head_size", "dim_w", "dim_a", "dim_v", "dim_g", "dim_ffn")
  diff = [f"{f}={getattr(found, f)} (expected {getattr(expected, f)})" for f in fields
          if getattr(found, f) != getattr(expected, f)]
  if diff:
    raise ValueError(f"{source}: checkpoint is from another model size: {', '.join(diff)}")


def params_from_state_dict(sd: Mapping[str, np.ndarray], config: RWKV7Config | None = None, *,
                           source: str = "checkpoint", param_dtype=jnp.float32, **config_overrides):
  """Official RWKV-LM state dict (names of DESIGN §2.2) -> (config, params)."""
  found = config_from_state_dict(sd, source, **config_overrides)
  _check_expected_config(found, config, source)
  config = found
  layout = checkpoint_layout(config)
  known = {row[0] for row in layout} | set(_BLOCK0_UNUSED)
  unexpected = sorted(set(sd) - known)
  if unexpected:
    raise ValueError(f"{source}: unexpected keys {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''} "
                     "(not part of the RWKV-7 x070 layout; DeepEmbed and other variants are not supported)")
  params: dict = {}
  for name, path, shape, kind in layout:
    if name not in sd:
      raise ValueError(f"{source}: missing key '{name}' (expected shape {shape})")
    array = sd[name]
    ok = tuple(array.shape) == shape or (kind == "vec" and array.size == shape[-1] and array.ndim <= 3)
    if not ok:
      raise ValueError(f"{source}: key '{name}' has shape {tuple(array.shape)}; expected {shape} "
                       f"for a model with vocab={config.vocab_size}, D={config.n_embd}, H={config.n_head}")
    value = np.asarray(array, np.float32)
    value = value.T if kind == "T" else value.reshape(-1) if kind == "vec" else value
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = jnp.asarray(value, param_dtype)
  return config, params


def state_dict_from_params(config: RWKV7Config, params: Mapping, dtype=np.float32) -> dict[str, np.ndarray]:
  """(config, params) -> official RWKV-LM state dict (numpy, `dtype`), incl. block-0 v0/v1/v2."""
  _check_params(config, params)
  sd = {}
  for name, path, shape, kind in checkpoint_layout(config):
    node = params
    for p in path:
      node = node[p]
    value = np.asarray(jax.device_get(node), np.float32)
    value = value.T if kind == "T" else value.reshape(shape)
    sd[name] = np.asarray(value, dtype)
  # Block 0 never uses the value-residual LoRA, but RWKV-LM's strict loader expects the keys.
  init = _layer_init_values(config, 0)
  D = config.n_embd
  sd["blocks.0.att.v0"] = init["v0"].reshape(1, 1, D).astype(dtype)
  sd["blocks.0.att.v1"] = np.zeros((D, config.dim_v), dtype)
  sd["blocks.0.att.v2"] = np.zeros((config.dim_v, D), dtype)
  return sd


def load_pth(path: str | os.PathLike, config: RWKV7Config | None = None, *, param_dtype=jnp.float32,
             **config_overrides) -> tuple[RWKV7Config, dict]:
  """Reads an official RWKV-LM `.pth` (fp32 / bf16 / fp16) without torch.

  Args:
    path: the .pth file.
    config: if given, the checkpoint must have exactly these sizes (else ValueError).
    param_dtype: dtype of the returned params.
    **config_overrides: non-size config fields, e.g. dtype="bfloat16", wkv_impl="reference".
  Returns:
    (config, params) with every size read from tensor shapes.
  """
  path = os.fspath(path)
  return params_from_state_dict(read_pth(path), config, source=path, param_dtype=param_dtype, **config_overrides)


def save_pth(config: RWKV7Config, params: Mapping, path: str | os.PathLike, *, dtype=np.float32) -> None:
  """Writes params as an official RWKV-LM `.pth` (loadable by torch, the `rwkv` package, RWKV-LM)."""
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
                     **config_overrides) -> tuple[RWKV7Config, dict]:
  """Reads an fla / Hugging Face `RWKV7ForCausalLM` checkpoint (.safetensors file or snapshot folder)."""
  path = os.fspath(path)
  hf = read_safetensors_dir(path)
  layers = {int(m.group(1)) for k in hf if (m := re.match(r"model\.layers\.(\d+)\.", k))}
  if "model.embeddings.weight" not in hf or not layers:
    raise ValueError(f"{path}: not an RWKV7ForCausalLM checkpoint (no model.embeddings.weight / model.layers.*)")
  # Translate name by name into the official layout; the names depend only on n_layer.
  sd, used = {}, set()
  names = RWKV7Config(n_layer=max(layers) + 1)
  for name, _, _, _ in checkpoint_layout(names) + [(n, None, None, None) for n in _BLOCK0_UNUSED]:
    hf_name, transposed = _hf_name(name)
    if hf_name in hf:
      array = hf[hf_name]
      sd[name] = array.T if transposed else array
      used.add(hf_name)
  unexpected = sorted(set(hf) - used)
  if unexpected:
    raise ValueError(f"{path}: unexpected keys {unexpected[:6]}: not the RWKV7ForCausalLM layout this reader knows")
  return params_from_state_dict(sd, config, source=path, param_dtype=param_dtype, **config_overrides)
