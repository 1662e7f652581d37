"""SigLIP and SigLIP2 vision towers in Flax linen, loaded from local Hugging Face snapshots.

Two input forms share one transformer (docs/architecture.md, docs/architecture.md#encoders):
- fixed resolution (HF model_type `siglip`; SigLIP and the fixed-resolution SigLIP2 checkpoints such
  as `google/siglip2-base-patch16-384`, ModRWKV's vision encoder): pixels float[B, H, W, 3] with
  H = W = image_size, a stride-p patch convolution, learned position embeddings for the
  (H/p)·(W/p) grid;
- NaFlex (HF model_type `siglip2`): pre-patchified pixels float[B, L, p·p·3] (each patch row-major
  (py, px, channel), see `modrwkv_jax.data.image`), a pixel attention mask bool[B, L] and per-image
  spatial shapes int[B, 2] = (rows, cols) of patches; the square table of position embeddings is
  resized to each image's (rows, cols) with antialiased bilinear interpolation
  (`F.interpolate(..., mode="bilinear", align_corners=False, antialias=True)`), and padded
  positions get the first position's embedding.
Then pre-LN encoder blocks (GELU-tanh MLP) and a post-LayerNorm. ModRWKV uses `last_hidden_state`
(after post-LN, no pooling, e.g. 576 × 768 for siglip2-base-patch16-384); the attention-pooling
("MAP") head is optional (`use_head`) and off by default.

Reading order: config and presets, the embeddings (patchify, position-embedding resize), the MAP head,
the model, the pure-function surface (`init_params`, `forward`, `forward_all`, and the interface every
encoder shares: `encode`, `num_tokens`, `check_inputs`), and last `load_hf`.
Pixels are channels-last (JAX convention); HF's `pixel_values` are [B, 3, H, W]: transpose them.

Params and their logical axes (modrwkv_jax.sharding):
```
embeddings  patch_embedding {kernel [p·p·3, D] ("enc_patch", "enc_embed"), bias [D] ("enc_embed",)}
            position_embedding {embedding [P, D] ("enc_positions", "enc_embed")}
encoder     layers_i (or one scanned `layers`, leading axis "layers"): transformer.EncoderLayer
post_layernorm {scale, bias} [D] ("enc_embed",)
head        (use_head) probe [D] ("enc_embed",), attention, layernorm, mlp as in transformer.py
```
Both forms store the patch embedding as one matrix over the flattened patch (py, px, c): the fixed
resolution's Conv2d weight [D, 3, p, p] transposed to [p, p, 3, D] and reshaped.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax.layers import Dense, layer_norm
from modrwkv_jax.models.encoders import hf_snapshot, transformer
from modrwkv_jax.models.encoders.transformer import (EMBED, MLP, Attention, Encoder, EncoderOutput, Take,
                                                     activation_from_hf, dense_from_hf, encoder_params_from_hf,
                                                     layer_norm_from_hf)

# ---------------------------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  """Sizes of a SigLIP / SigLIP2 vision tower. Frozen and hashable: a static jit argument.

  image_size: the fixed input resolution (None for NaFlex, which takes any patch grid).
  num_patches: NaFlex only, the size of the (square) position-embedding table.
  dtype: the compute dtype ("float32", "bfloat16", "float16"); LayerNorm statistics and softmax
    stay float32.
  scan_layers: params of the encoder layers stacked under one scanned `layers` (see transformer.py).
  remat: "none", "block" or a jax.checkpoint_policies name, applied to each encoder layer.
  """
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  patch_size: int = 16
  image_size: int | None = 224
  num_patches: int = 256
  num_channels: int = 3
  activation: str = "gelu_tanh"
  eps: float = 1e-6
  naflex: bool = False
  use_head: bool = False
  dtype: str = "float32"
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    for field in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "patch_size", "num_channels",
                  "num_patches"):
      value = getattr(self, field)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"SiglipConfig.{field} must be a positive int, got {value!r}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"SiglipConfig: hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")
    if self.naflex:
      if math.isqrt(self.num_patches) ** 2 != self.num_patches:
        raise ValueError(f"SiglipConfig: NaFlex num_patches={self.num_patches} is not a square number")
    elif not isinstance(self.image_size, int) or self.image_size < self.patch_size:
      raise ValueError(f"SiglipConfig: image_size={self.image_size!r} must be an int >= patch_size={self.patch_size}")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"SiglipConfig.dtype must be 'float32', 'bfloat16' or 'float16', got {self.dtype!r}")
    transformer.check_stack_options("SiglipConfig", self.scan_layers, self.remat)

  @property
  def grid_size(self) -> int:
    """Side of the position-embedding grid: image_size / patch_size, or √num_patches for NaFlex."""
    return math.isqrt(self.num_patches) if self.naflex else self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    return self.grid_size ** 2

  @property
  def patch_dim(self) -> int:
    """p·p·channels: the length of one flattened patch."""
    return self.patch_size * self.patch_size * self.num_channels

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **kwargs) -> SiglipConfig:
    return dataclasses.replace(self, **kwargs)


PRESETS: dict[str, SiglipConfig] = {
    # ModRWKV's vision encoder: 576 tokens × 768.
    "siglip2-base-patch16-384": SiglipConfig(image_size=384),
    "siglip2-base-patch16-naflex": SiglipConfig(image_size=None, naflex=True, num_patches=256),
    "siglip-base-patch16-224": SiglipConfig(image_size=224),
    "siglip-so400m-patch14-384": SiglipConfig(hidden_size=1152, intermediate_size=4304, num_layers=27,
                                              num_heads=16, patch_size=14, image_size=384),
}


def preset(name: str, **overrides) -> SiglipConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown SigLIP preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


# ---------------------------------------------------------------------------------------------
# Embeddings.


def patchify(pixels: jax.Array, patch_size: int) -> jax.Array:
  """float[B, H, W, C] -> float[B, ⌊H/p⌋·⌊W/p⌋, p·p·C]; patches row-major, each flattened (py, px, c).

  A stride-p p×p 'valid' convolution is this followed by a matmul with the kernel reshaped to
  [p·p·C, D]; like the convolution it drops the last H mod p rows and W mod p columns
  (so400m: 384 px, p = 14 -> 27×27 patches).
  """
  B, H, W, C = pixels.shape
  p = patch_size
  pixels = pixels[:, :H // p * p, :W // p * p]
  x = pixels.reshape(B, H // p, p, W // p, p, C).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(B, (H // p) * (W // p), p * p * C)


class PositionEmbedding(nn.Module):
  """A learned table float32[num_positions, D] (HF `nn.Embedding`), returned whole."""
  num_positions: int
  features: int

  @nn.compact
  def __call__(self):
    init = nn.initializers.normal(1 / math.sqrt(self.features))
    return self.param("embedding", nn.with_logical_partitioning(init, ("enc_positions", "enc_embed")),
                      (self.num_positions, self.features))


def antialiased_bilinear_weights(index: jax.Array, out_size: jax.Array, in_size: int) -> jax.Array:
  """Interpolation weights of output positions `index` when resizing `in_size` -> `out_size` samples.

  PyTorch's `F.interpolate(mode="bilinear", align_corners=False, antialias=True)` along one axis
  (the PIL-style separable filter): scale = in/out, centre = scale·(i + 0.5), a triangle filter
  stretched by max(scale, 1) (it only widens when downsampling), truncated to the window
  [⌊centre − support + 0.5⌋, ⌊centre + support + 0.5⌋) and normalised to sum 1.
  Args:
    index: int[...] output positions; out_size: int[...] output lengths (broadcast with index; traced
      values are fine); in_size: the static input length.
  Returns:
    float32[..., in_size].
  """
  scale = in_size / out_size.astype(jnp.float32)
  support = jnp.maximum(scale, 1.0)  # bilinear interp_size / 2 = 1, widened by the downscale factor
  invscale = jnp.where(scale >= 1.0, 1.0 / scale, 1.0)
  center = (scale * (index.astype(jnp.float32) + 0.5))[..., None]
  j = jnp.arange(in_size, dtype=jnp.float32)
  w = jnp.maximum(0.0, 1.0 - jnp.abs((j - center + 0.5) * invscale[..., None]))
  lo = jnp.maximum(jnp.trunc(center - support[..., None] + 0.5), 0.0)
  hi = jnp.minimum(jnp.trunc(center + support[..., None] + 0.5), in_size)
  w = jnp.where((j >= lo) & (j < hi), w, 0.0)
  return w / jnp.sum(w, axis=-1, keepdims=True)


def resize_position_embeddings(table: jax.Array, spatial_shapes: jax.Array, length: int) -> jax.Array:
  """NaFlex position embeddings: the S×S table resized to each image's patch grid, padded to `length`.

  Args:
    table: float[S, S, D] position embeddings on their square grid.
    spatial_shapes: int[B, 2] (rows h, cols w) of each image's patch grid, h·w <= length (may be traced).
    length: L, the padded number of patches.
  Returns:
    float32[B, L, D]: position l < h·w gets the embedding of grid cell (l // w, l % w); padded
    positions l >= h·w get that of cell (0, 0), like HF.
  """
  S, D = table.shape[0], table.shape[-1]
  h, w = spatial_shapes[:, 0:1].astype(jnp.int32), spatial_shapes[:, 1:2].astype(jnp.int32)  # [B, 1]
  pos = jnp.arange(length, dtype=jnp.int32)[None]  # [1, L]
  real = pos < h * w
  row = jnp.where(real, pos // jnp.maximum(w, 1), 0)
  col = jnp.where(real, pos % jnp.maximum(w, 1), 0)
  wy = antialiased_bilinear_weights(row, jnp.broadcast_to(h, row.shape), S)  # [B, L, S]
  wx = antialiased_bilinear_weights(col, jnp.broadcast_to(w, col.shape), S)  # [B, L, S]
  weights = (wy[..., :, None] * wx[..., None, :]).reshape(*row.shape, S * S)  # [B, L, S·S]
  return jnp.einsum("blk,kd->bld", weights, table.reshape(S * S, D).astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


def patch_embedding(features: int, use_bias: bool, dtype, name: str = "patch_embedding") -> Dense:
  """The patch embedding as a Dense over flattened patches [p·p·C] -> [D]: the stride-p p×p 'valid'
  Conv2d applied to `patchify`'s output (float32 result, so positions are added before rounding)."""
  return Dense(features, ("enc_patch", "enc_embed"), use_bias, dtype, out_dtype=jnp.float32, name=name)


class SiglipEmbeddings(nn.Module):
  """Patch embedding plus position embedding: -> float[B, L, D] in the compute dtype."""
  config: SiglipConfig

  @nn.compact
  def __call__(self, pixels, spatial_shapes=None):
    cfg = self.config
    D, cd = cfg.hidden_size, cfg.compute_dtype
    table = PositionEmbedding(cfg.num_positions, D, name="position_embedding")()
    patches = pixels if cfg.naflex else patchify(pixels, cfg.patch_size)
    x = patch_embedding(D, True, cd)(patches)
    if cfg.naflex:
      S = cfg.grid_size
      pos = resize_position_embeddings(table.reshape(S, S, D), spatial_shapes, pixels.shape[1])
    else:
      pos = table[None].astype(jnp.float32)
    return (x + pos).astype(cd)


# ---------------------------------------------------------------------------------------------
# Attention-pooling head (optional; ModRWKV does not pool).


class MAPHead(nn.Module):
  """Multihead attention pooling: one learned probe attends over the tokens, then a residual MLP.

  x: float[B, L, D], mask bool[B, L] or None -> float[B, D] (HF `SiglipMultiheadAttentionPoolingHead`;
  torch's fused in_proj is split into q/k/v_proj).
  """
  num_heads: int
  mlp_dim: int
  activation: str
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    B, _, D = x.shape
    probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.normal(1.0), EMBED), (D,))
    q = jnp.broadcast_to(probe.astype(self.dtype), (B, 1, D))
    h = Attention(self.num_heads, dtype=self.dtype, name="attention")(q, mask, context=x)
    normed = layer_norm("layernorm", self.eps, self.dtype, EMBED)(h)
    h = h + MLP(self.mlp_dim, self.activation, self.dtype, name="mlp")(normed)
    return h[:, 0]


# ---------------------------------------------------------------------------------------------
# The model.


class SiglipVisionTransformer(nn.Module):
  """embeddings -> encoder -> post_layernorm [-> head]."""
  config: SiglipConfig

  @nn.compact
  def __call__(self, pixels, mask=None, spatial_shapes=None) -> EncoderOutput:
    """
    Args:
      pixels: float[B, H, W, C] (fixed resolution) or float[B, L, p·p·C] (NaFlex).
      mask: NaFlex bool[B, L] True at real patches (None: all real).
      spatial_shapes: NaFlex int[B, 2] patch rows and columns of each image.
    Returns:
      EncoderOutput(last_hidden_state float[B, L, D] after post-LN, hidden_states (num_layers + 1)
      × float[B, L, D] before post-LN, pooler_output float[B, D] or None).
    """
    cfg = self.config
    cd = cfg.compute_dtype
    x = SiglipEmbeddings(cfg, name="embeddings")(pixels, spatial_shapes)
    x, hidden_states = Encoder(cfg.num_layers, cfg.num_heads, cfg.intermediate_size, cfg.activation, cfg.eps,
                               dtype=cd, scan_layers=cfg.scan_layers, remat=cfg.remat, name="encoder")(x, mask)
    x = layer_norm("post_layernorm", cfg.eps, cd, EMBED)(x)
    pooled = None
    if cfg.use_head:
      pooled = MAPHead(cfg.num_heads, cfg.intermediate_size, cfg.activation, cfg.eps, cd, name="head")(x, mask)
    return EncoderOutput(x, hidden_states, pooled)


# ---------------------------------------------------------------------------------------------
# Pure-function surface.


def _dummy_inputs(config: SiglipConfig):
  if config.naflex:
    L = config.num_positions
    return (jnp.zeros((1, L, config.patch_dim), jnp.float32), jnp.ones((1, L), bool),
            jnp.array([[config.grid_size, config.grid_size]], jnp.int32))
  s = config.image_size
  return jnp.zeros((1, s, s, config.num_channels), jnp.float32), None, None


def _init_boxed(config: SiglipConfig, key):
  return SiglipVisionTransformer(config).init(key, *_dummy_inputs(config))["params"]


def init_params(config: SiglipConfig, key: jax.Array) -> dict:
  """Random parameters (lecun-normal kernels, HF-like position-embedding scale) as a plain float32 dict."""
  return nn.meta.unbox(jax.jit(_init_boxed, static_argnums=0)(config, key))


def param_logical_axes(config: SiglipConfig) -> dict:
  """The logical axis names of every parameter (a tree of PartitionSpecs shaped like the params)."""
  return transformer.logical_axes(SiglipVisionTransformer(config), *_dummy_inputs(config))


def _check_shapes(config: SiglipConfig, pixels, mask=None, spatial_shapes=None, where: str = "siglip.forward"):
  """Static checks (shapes only, safe under jit): raises ValueError naming the argument and its shape."""
  shape = tuple(pixels.shape)
  if not config.naflex:
    s, c = config.image_size, config.num_channels
    if len(shape) == 4 and shape[1] == c and shape[-1] != c:
      raise ValueError(f"{where}: pixels have shape {shape}, which looks channels-first (HF pixel_values); "
                       f"expected channels-last float[B, {s}, {s}, {c}]: transpose with x.transpose(0, 2, 3, 1)")
    if len(shape) != 4 or shape[1:] != (s, s, c):
      raise ValueError(f"{where}: pixels have shape {shape}; this checkpoint expects float[B, {s}, {s}, {c}] "
                       f"(image_size={s}); preprocess with modrwkv_jax.data.image")
    return
  if len(shape) != 3 or shape[-1] != config.patch_dim:
    raise ValueError(f"{where}: NaFlex pixels have shape {shape}; expected patchified float[B, L, "
                     f"{config.patch_dim}] (patch_size={config.patch_size}, p·p·{config.num_channels})")
  B, L = shape[:2]
  if spatial_shapes is None:
    raise ValueError(f"{where}: a NaFlex (siglip2) encoder needs spatial_shapes int[B, 2]")
  if tuple(spatial_shapes.shape) != (B, 2):
    raise ValueError(f"{where}: spatial_shapes has shape {tuple(spatial_shapes.shape)}; expected {(B, 2)}")
  if mask is not None and tuple(mask.shape) != (B, L):
    raise ValueError(f"{where}: pixel_attention_mask has shape {tuple(mask.shape)}; expected {(B, L)}")


def check_inputs(config: SiglipConfig, pixels, mask=None, spatial_shapes=None) -> None:
  """The boundary check a data pipeline (or generate) runs on concrete (numpy) inputs before encoding.

  Shapes as in `forward`; every real pixel finite; for NaFlex every spatial_shapes[i] = (h, w)
  positive with h·w <= L, and the mask (if given) True at exactly the first h·w patches. Raises
  ValueError naming the item. `forward` / `encode` check only shapes (they run under jit).
  """
  _check_shapes(config, pixels, mask, spatial_shapes, "siglip.check_inputs")
  values = np.asarray(pixels)
  finite = np.isfinite(values).reshape(*values.shape[:1 + config.naflex], -1).all(-1)  # [B] or [B, L]
  if config.naflex and mask is not None:
    finite |= ~np.asarray(mask).astype(bool)  # padded patches may hold anything
  if not finite.all():
    raise ValueError(f"siglip.check_inputs: image {int(np.argwhere(~finite)[0][0])} holds NaN or inf pixels")
  if not config.naflex:
    return
  L = pixels.shape[1]
  shapes = np.asarray(spatial_shapes)
  for i, (h, w) in enumerate(shapes.tolist()):
    if h <= 0 or w <= 0 or h * w > L:
      raise ValueError(f"siglip.check_inputs: spatial_shapes[{i}] = ({h}, {w}) must be positive with h·w <= {L} "
                       "patches")
  if mask is not None:
    mask = np.asarray(mask).astype(bool)
    want = np.arange(L)[None, :] < (shapes[:, 0] * shapes[:, 1])[:, None]
    bad = np.flatnonzero((mask != want).any(-1))
    if bad.size:
      i = int(bad[0])
      raise ValueError(f"siglip.check_inputs: pixel_attention_mask[{i}] has {int(mask[i].sum())} real patches, "
                       f"not the first h·w = {int(want[i].sum())} of spatial_shapes[{i}] = {tuple(shapes[i].tolist())}")


def forward_all(config: SiglipConfig, params: Mapping, pixels, pixel_attention_mask=None,
                spatial_shapes=None) -> EncoderOutput:
  """Runs the tower and returns every output (see `SiglipVisionTransformer`).

  Args:
    config: static under jit (`jax.jit(forward_all, static_argnums=0)`).
    pixels: float[B, H, W, 3] (fixed resolution, channels-last) or float[B, L, p·p·3] (NaFlex).
    pixel_attention_mask: NaFlex bool/int[B, L], nonzero at real patches.
    spatial_shapes: NaFlex int[B, 2] patch rows and columns (values checked by `check_inputs`).
  """
  _check_shapes(config, pixels, pixel_attention_mask, spatial_shapes)
  mask = None if pixel_attention_mask is None else pixel_attention_mask.astype(bool)
  return SiglipVisionTransformer(config).apply({"params": params}, pixels, mask, spatial_shapes)


def forward(config: SiglipConfig, params: Mapping, pixels, pixel_attention_mask=None, spatial_shapes=None):
  """The features ModRWKV uses: `last_hidden_state` float[B, L, D] (after post-LN, no pooling).

  L = (image_size / patch_size)² for fixed resolution (576 for siglip2-base-patch16-384), or the
  padded patch count for NaFlex (rows of padded patches are meaningless: drop them with the mask).
  """
  return forward_all(config, params, pixels, pixel_attention_mask, spatial_shapes).last_hidden_state


def encode(config: SiglipConfig, params: Mapping, pixels, mask=None, *, spatial_shapes=None):
  """The encoder interface shared by every encoder module: (features float[N, L, D], mask bool[N, L]).

  pixels: float[N, H, W, 3] (fixed resolution; `mask` is ignored, every token is real) or NaFlex
  float[N, L, p·p·3] with `mask` bool[N, L] (None: all real) and spatial_shapes int[N, 2].
  Real tokens come first in each row (NaFlex patches are a prefix).
  """
  feats = forward(config, params, pixels, mask if config.naflex else None, spatial_shapes)
  if config.naflex and mask is not None:
    return feats, mask.astype(bool)
  return feats, jnp.ones(feats.shape[:2], bool)


def num_tokens(config: SiglipConfig, n: int, *, spatial_shapes=None) -> int:
  """Features of one image whose preprocessed form has n pixels (the data layer's measure, H'·W').

  Fixed resolution: (image_size / patch_size)², whatever n. NaFlex: its real patches, n // p².
  """
  del spatial_shapes  # an encode option; the count follows from n
  if config.naflex:
    return int(n) // (config.patch_size ** 2)
  return config.num_positions


# ---------------------------------------------------------------------------------------------
# Hugging Face snapshots.

MODEL_TYPES = {"siglip": False, "siglip_vision_model": False, "siglip2": True, "siglip2_vision_model": True}

# HF config-class defaults for fields a config.json may omit (SiglipVisionConfig / Siglip2VisionConfig).
_HF_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                "num_channels": 3, "image_size": 224, "patch_size": 16, "num_patches": 256,
                "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}


def _square(value, name: str, source: str) -> int:
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"{source}: {name}={value!r}; only square sizes are supported")
    value = value[0]
  return int(value)


def config_from_hf(hf: Mapping, source: str = "config.json", *, dtype: str = "float32",
                   use_head: bool = False) -> SiglipConfig:
  """A SiglipConfig from a parsed config.json (two-tower or vision-only, SigLIP or SigLIP2)."""
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{source}: model_type {model_type!r} is not a SigLIP vision checkpoint; siglip.load_hf "
                     f"reads {sorted(MODEL_TYPES)} (use clip.load_hf for 'clip')")
  naflex = MODEL_TYPES[model_type]
  v = {**_HF_DEFAULTS, **hf_snapshot.sub_config(hf, "vision_config", source=source)}
  return SiglipConfig(
      hidden_size=int(v["hidden_size"]), intermediate_size=int(v["intermediate_size"]),
      num_layers=int(v["num_hidden_layers"]), num_heads=int(v["num_attention_heads"]),
      patch_size=_square(v["patch_size"], "patch_size", source),
      image_size=None if naflex else _square(v["image_size"], "image_size", source),
      num_patches=int(v["num_patches"]), num_channels=int(v["num_channels"]),
      activation=activation_from_hf(v["hidden_act"], source), eps=float(v["layer_norm_eps"]),
      naflex=naflex, use_head=use_head, dtype=dtype)


def params_from_hf(config: SiglipConfig, take: Take) -> dict:
  """Our params (numpy, the layout `config.scan_layers` asks for) from HF tensors; take(name, shape) reads
  a name relative to the vision prefix."""
  D, F, p, C = config.hidden_size, config.intermediate_size, config.patch_size, config.num_channels
  if config.naflex:  # nn.Linear over patches flattened (py, px, c): the same order as our patchify
    patch = dense_from_hf(take, "embeddings.patch_embedding", config.patch_dim, D)
  else:  # Conv2d weight [D, C, p, p] -> [p, p, C, D] -> [p·p·C, D], rows in patchify's (py, px, c) order
    conv = take("embeddings.patch_embedding.weight", (D, C, p, p))
    patch = {"kernel": np.ascontiguousarray(conv.transpose(2, 3, 1, 0).reshape(p * p * C, D)),
             "bias": take("embeddings.patch_embedding.bias", (D,))}
  params = {
      "embeddings": {"patch_embedding": patch,
                     "position_embedding": {"embedding": take("embeddings.position_embedding.weight",
                                                              (config.num_positions, D))}},
      "encoder": encoder_params_from_hf(take, "encoder.layers.{i}.", config.num_layers, D, F),
      "post_layernorm": layer_norm_from_hf(take, "post_layernorm", D),
  }
  if config.use_head:
    w, b = take("head.attention.in_proj_weight", (3 * D, D)), take("head.attention.in_proj_bias", (3 * D,))
    attention = {name: {"kernel": np.ascontiguousarray(w[i * D:(i + 1) * D].T), "bias": b[i * D:(i + 1) * D]}
                 for i, name in enumerate(("q_proj", "k_proj", "v_proj"))}
    attention["out_proj"] = dense_from_hf(take, "head.attention.out_proj", D, D)
    params["head"] = {"probe": take("head.probe", (1, 1, D)).reshape(D), "attention": attention,
                      "layernorm": layer_norm_from_hf(take, "head.layernorm", D),
                      "mlp": {"fc1": dense_from_hf(take, "head.mlp.fc1", D, F),
                              "fc2": dense_from_hf(take, "head.mlp.fc2", F, D)}}
  return transformer.stack_layers(params) if config.scan_layers else params


def load_hf(path: str | os.PathLike, *, dtype: str = "float32", with_head: bool = False, scan_layers: bool = False,
            remat: str = "none", param_dtype=jnp.float32, mesh=None) -> tuple[SiglipConfig, dict]:
  """Reads a local HF snapshot folder of a SigLIP / SigLIP2 vision tower. No torch, no network.

  Accepts vision-only (`SiglipVisionModel`, `Siglip2VisionModel`: keys `embeddings...`) and full
  two-tower (`SiglipModel`, `Siglip2Model`: keys `vision_model.embeddings...`, the text tower is
  ignored) checkpoints, in one or several safetensors files, stored in fp32/bf16/fp16.
  Args:
    path: the folder with config.json and *.safetensors.
    dtype: compute dtype of the returned config.
    with_head: also load the attention-pooling head (config.use_head); ModRWKV does not use it.
    scan_layers, remat: the returned config's layer-stack settings; scan_layers=True returns the
      encoder layers stacked under one `layers` (transformer.stack_layers).
    param_dtype: dtype of the returned parameters.
    mesh: None, or a ("data", "fsdp", "tensor") Mesh: each parameter is placed with its NamedSharding
      (sharding.logical_to_mesh of `param_logical_axes(config)`) as it is converted.
  The params are built from the file's tensors alone (the random initialiser never runs).
  Returns:
    (SiglipConfig, params nested dict of jax arrays).
  """
  snap = hf_snapshot.Snapshot(path)
  source = os.path.join(snap.path, "config.json")
  config = config_from_hf(snap.config, source, dtype=dtype, use_head=with_head).replace(scan_layers=scan_layers,
                                                                                         remat=remat)
  prefix = snap.find_prefix(["vision_model.", ""], "embeddings.patch_embedding.weight")
  if with_head and not snap.has(prefix + "head.probe"):
    raise KeyError(f"{snap.path}: with_head=True but the checkpoint has no attention-pooling head "
                   f"({prefix}head.probe); it was saved with vision_use_head=false")
  params = params_from_hf(config, lambda name, shape=None: snap.take(prefix + name, shape))
  snap.check_all_used(prefix, ignore=("position_ids",) + (() if with_head else (prefix + "head.",)))
  axes = param_logical_axes(config) if mesh is not None else None
  return config, hf_snapshot.to_device(params, param_dtype, mesh, axes)
