"""WavLM (Microsoft; HF `WavLMModel`) in Flax linen, read from HF snapshots: raw 16 kHz audio -> 50 Hz features.

Architecture, in reading order below:
  * feature encoder: 7 Conv1d layers over the waveform (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2:
    320 samples per frame, receptive field 400 = 25 ms), GELU after each. `feat_extract_norm="group"`
    (base, base-plus): a per-channel GroupNorm over time after the first conv only. `"layer"` (large):
    a LayerNorm over channels after every conv.
  * feature projection: LayerNorm(conv_dim[-1]) -> Linear(-> C).
  * convolutional position embedding: grouped Conv1d(C→C, k=128, 16 groups, padding 64, last output
    dropped), weight-normed over every axis but the kernel tap (w = g·v/‖v‖), GELU, added to x.
  * transformer with gated relative position bias: layer 0 owns a bucketed table
    `rel_attn_embed[num_buckets, H]` (T5-style log buckets, max distance 800). transformers computes
    the bias [H, T, T] in layer 0 and hands the same tensor to every later layer; we compute it once
    before the layers (the table is a top-level param) and give it to all of them, which is the same
    computation and lets every layer be identical (a scanned stack, `scan_layers`). Every layer gates it
    per query and head: g = σ(a)·(σ(b)·const_h − 1) + 2 with (a, b) = pair sums of
    Linear(head_dim→8)(x_head); logits = (q/√N)·k + g·bias. `do_stable_layer_norm=False` (base):
    x + pos -> LayerNorm -> post-norm blocks; True (large): x + pos -> pre-norm blocks -> LayerNorm.
The output is the final layer at 50 Hz (one frame per 20 ms).

Padding (`mask`, right padding): frames are real when they lie fully inside the clip
(n' = conv arithmetic on the sample count), padded frames are zeroed before the position conv and
hidden from attention, as in transformers. Like transformers (and fairseq), the group-norm variant's
statistics in its first layer run over the whole padded batch row, so base / base-plus features of a
padded clip differ from the clip alone (much so when the padding is long: those checkpoints were
trained without padding). `forward(..., exact_padding=True)` restricts those statistics to each
clip's own frames: padded batches then equal one-clip-at-a-time encoding. Large (layer norm) is
always padding-exact.

Params (HF names in brackets; Linear weights transposed to [in, out], Conv1d to [K, in/groups, out]):
```
feature_extractor {conv_layers_i {conv {kernel, bias?}, layer_norm? {scale, bias}}}
feature_projection {layer_norm, projection}
pos_conv_embed {weight_g [K], weight_v [K, C/G, C], bias [C]}     [encoder.pos_conv_embed.conv]
layer_norm {scale, bias}                                          [encoder.layer_norm]
rel_attn_embed [num_buckets, H]            [encoder.layers.0.attention.rel_attn_embed.weight]
layers_i {attention {q_proj, k_proj, v_proj, out_proj, gru_rel_pos_const [H], gru_rel_pos_linear},
          layer_norm, feed_forward {fc1, fc2}, final_layer_norm}
                [feed_forward.intermediate_dense / output_dense; gru_rel_pos_const is [1, H, 1, 1]]
```
Logical axes (modrwkv_jax.sharding): feature encoder conv kernels ("conv_window", "conv_in", "conv_out"),
their biases and norms ("conv_out",); feature_projection layer_norm ("conv_out",), projection kernel
("conv_out", "enc_embed"); pos_conv_embed weight_v ("conv_window", "conv_in", "enc_embed"), weight_g
("conv_window",), bias ("enc_embed",); rel_attn_embed ("rel_buckets", "enc_heads"); in each layer
q/k/v_proj ("enc_embed", "enc_qkv"), out_proj ("enc_qkv", "enc_embed"), gru_rel_pos_const ("enc_heads",),
gru_rel_pos_linear [N, 8] (None, None) (tiny, replicated), feed_forward as transformer.MLP, norms
("enc_embed",). With `scan_layers` the layers are one `layers` subtree (leading axis "layers").

`load_hf(path)` reads `WavLMModel` snapshots (e.g. microsoft/wavlm-base-plus, microsoft/wavlm-large)
and task models that nest it under `wavlm.`; the weight-normed conv may be stored as
`parametrizations.weight.original0/1` (current transformers) or `weight_g/weight_v` (older files),
and `pytorch_model.bin`-only snapshots are read with our torch-free .pth reader.
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

from modrwkv_jax import tensor_files
from modrwkv_jax.layers import Conv1d, Dense, conv1d, layer_norm
from modrwkv_jax.models.encoders import hf_snapshot, transformer
from modrwkv_jax.models.encoders.hf_snapshot import Snapshot, read_config

CONV_NORM_EPS = 1e-5  # torch GroupNorm / LayerNorm defaults inside the feature encoder


@dataclasses.dataclass(frozen=True)
class WavLMConfig:
  """Sizes of a WavLM model (HF WavLMConfig names). Frozen and hashable: a static jit argument.

  scan_layers: params of the transformer layers stacked under one scanned `layers` (transformer.py).
  remat: "none", "block" or a jax.checkpoint_policies name, applied to each transformer layer.
  """
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"  # transformer.ACTIVATIONS name
  layer_norm_eps: float = 1e-5
  feat_extract_norm: str = "group"
  feat_extract_activation: str = "gelu"
  conv_dim: tuple[int, ...] = (512,) * 7
  conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
  conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
  conv_bias: bool = False
  num_conv_pos_embeddings: int = 128
  num_conv_pos_embedding_groups: int = 16
  num_buckets: int = 320
  max_bucket_distance: int = 800
  do_stable_layer_norm: bool = False
  dtype: str = "float32"  # compute dtype; params stay float32
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    for f in ("conv_dim", "conv_stride", "conv_kernel"):
      object.__setattr__(self, f, tuple(int(v) for v in getattr(self, f)))
    if not len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel) > 0:
      raise ValueError(f"WavLMConfig: conv_dim, conv_stride and conv_kernel must have one entry per conv layer; "
                       f"got {len(self.conv_dim)}, {len(self.conv_stride)}, {len(self.conv_kernel)}")
    if self.feat_extract_norm not in ("group", "layer"):
      raise ValueError(f"WavLMConfig.feat_extract_norm={self.feat_extract_norm!r}; expected 'group' or 'layer'")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"WavLMConfig: hidden_size={self.hidden_size} is not a multiple of "
                       f"num_attention_heads={self.num_attention_heads}")
    if self.hidden_size % self.num_conv_pos_embedding_groups:
      raise ValueError(f"WavLMConfig: hidden_size={self.hidden_size} is not a multiple of "
                       f"num_conv_pos_embedding_groups={self.num_conv_pos_embedding_groups}")
    for f in ("hidden_act", "feat_extract_activation"):
      if getattr(self, f) not in transformer.ACTIVATIONS:
        raise ValueError(f"WavLMConfig.{f}={getattr(self, f)!r}; choose one of {sorted(transformer.ACTIVATIONS)}")
    transformer.check_stack_options("WavLMConfig", self.scan_layers, self.remat)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def receptive_field(self) -> int:
    """Samples seen by one output frame (400 for the standard feature encoder)."""
    field = 1
    for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
      field = (field - 1) * s + k
    return field

  @classmethod
  def from_hf(cls, hf: Mapping, source: str = "config.json", **overrides) -> WavLMConfig:
    if hf.get("model_type", "wavlm") != "wavlm":
      raise ValueError(f"{source}: model_type is {hf.get('model_type')!r}; expected 'wavlm'")
    if hf.get("add_adapter", False):
      raise ValueError(f"{source}: add_adapter=true (a conv adapter after the encoder) is not supported")
    fields = {f.name for f in dataclasses.fields(cls)} - {"dtype", "hidden_act", "feat_extract_activation",
                                                          "scan_layers", "remat"}
    kwargs = {k: hf[k] for k in fields if k in hf}
    kwargs["hidden_act"] = transformer.activation_from_hf(hf.get("hidden_act", "gelu"), source)
    kwargs["feat_extract_activation"] = transformer.activation_from_hf(hf.get("feat_extract_activation", "gelu"),
                                                                       source)
    return cls(**kwargs, **overrides)


def frame_lengths(config: WavLMConfig, sample_lengths):
  """Output frames of clips of `sample_lengths` samples: n ← (n − k) // s + 1 per conv (numpy or jax ints)."""
  n = sample_lengths
  for k, s in zip(config.conv_kernel, config.conv_stride):
    n = (n - k) // s + 1
  return n


# ---------------------------------------------------------------------------------------------
# Relative position buckets (host-side numpy: they depend only on the static length).


def relative_position_buckets(length: int, num_buckets: int = 320, max_distance: int = 800) -> np.ndarray:
  """bucket[q, k] of the relative position k − q, int32[length, length] (HF `_relative_positions_bucket`).

  Half the buckets per direction; |d| < num_buckets/4 gets its own bucket, larger distances share
  log-spaced buckets up to max_distance. Computed in float32 in torch's operation order, so bucket
  edges match transformers bit for bit (tested up to 3000 frames = 60 s).
  """
  rel = np.arange(length)[None, :] - np.arange(length)[:, None]
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  max_exact = half // 2
  safe = np.maximum(rel, 1).astype(np.float32)  # log(0) is never used: those positions are "small"
  large = np.log(safe / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
  large = (np.float32(max_exact) + large * np.float32(half - max_exact)).astype(np.int64)
  large = np.minimum(large, half - 1)
  return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Layers.


def _norm_params(module: nn.Module, dim: int):
  scale = module.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("conv_out",)), (dim,))
  bias = module.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), (dim,))
  return scale.astype(jnp.float32), bias.astype(jnp.float32)


class ChannelGroupNorm(nn.Module):
  """torch GroupNorm(C groups, C channels): per sample and channel over time. float[B, T, C] -> float32.

  With `mask` bool[B, T] the statistics use only the frames where it is True.
  """
  eps: float = CONV_NORM_EPS

  @nn.compact
  def __call__(self, x, mask=None):
    scale, bias = _norm_params(self, x.shape[-1])
    x = x.astype(jnp.float32)
    w = jnp.ones(x.shape[:2] + (1,), jnp.float32) if mask is None else mask.astype(jnp.float32)[..., None]
    count = jnp.maximum(w.sum(axis=1, keepdims=True), 1.0)
    mean = (x * w).sum(axis=1, keepdims=True) / count
    var = (jnp.square(x - mean) * w).sum(axis=1, keepdims=True) / count
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class ChannelLayerNorm(nn.Module):
  """torch LayerNorm over channels per frame, float32 statistics. float[B, T, C] -> float32."""
  eps: float = CONV_NORM_EPS

  @nn.compact
  def __call__(self, x):
    scale, bias = _norm_params(self, x.shape[-1])
    x = x.astype(jnp.float32)
    mean = x.mean(axis=-1, keepdims=True)
    var = jnp.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class FeatureConvLayer(nn.Module):
  """Conv1d (no padding) -> [GroupNorm | LayerNorm | nothing] -> GELU: float[B, T, C_in] -> float[B, T', C]."""
  config: WavLMConfig
  index: int

  @nn.compact
  def __call__(self, x, lengths=None):
    """x: float[B, T, C_in]; lengths: int[B] real samples per clip (GroupNorm statistics over the frames
    inside the clip only), or None."""
    cfg, cd, i = self.config, self.config.compute_dtype, self.index
    x = Conv1d(cfg.conv_dim[i], cfg.conv_kernel[i], ("conv_in", "conv_out"), stride=cfg.conv_stride[i],
               use_bias=cfg.conv_bias, dtype=cd, name="conv")(x)
    if cfg.feat_extract_norm == "layer":
      x = ChannelLayerNorm(name="layer_norm")(x)
    elif i == 0:
      mask = None
      if lengths is not None:
        frames = (lengths - cfg.conv_kernel[0]) // cfg.conv_stride[0] + 1
        mask = jnp.arange(x.shape[1])[None, :] < frames[:, None]
      x = ChannelGroupNorm(name="layer_norm")(x, mask)
    return transformer.ACTIVATIONS[cfg.feat_extract_activation](x.astype(jnp.float32)).astype(cd)


class FeatureEncoder(nn.Module):
  """The conv stack: float[B, N] waveform -> float[B, T', conv_dim[-1]]."""
  config: WavLMConfig

  @nn.compact
  def __call__(self, wave, lengths=None):
    x = wave.astype(self.config.compute_dtype)[..., None]
    for i in range(len(self.config.conv_dim)):
      x = FeatureConvLayer(self.config, i, name=f"conv_layers_{i}")(x, lengths if i == 0 else None)
    return x


class FeatureProjection(nn.Module):
  """LayerNorm -> Linear: float[B, T', conv_dim[-1]] -> float[B, T', C]."""
  config: WavLMConfig

  @nn.compact
  def __call__(self, x):
    cfg, cd = self.config, self.config.compute_dtype
    x = layer_norm("layer_norm", cfg.layer_norm_eps, cd, ("conv_out",))(x)
    return Dense(cfg.hidden_size, ("conv_out", "enc_embed"), True, cd, name="projection")(x)


class PositionalConvEmbedding(nn.Module):
  """Weight-normed grouped conv over time + GELU: float[B, T, C] -> float[B, T, C]."""
  config: WavLMConfig

  @nn.compact
  def __call__(self, x):
    cfg, cd = self.config, self.config.compute_dtype
    C, K, G = cfg.hidden_size, cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups
    v = self.param("weight_v", nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                            ("conv_window", "conv_in", "enc_embed")), (K, C // G, C))
    g = self.param("weight_g", nn.with_logical_partitioning(nn.initializers.ones, ("conv_window",)), (K,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, transformer.EMBED), (C,))
    # torch weight_norm(dim=2): one norm per kernel tap over (out, in/groups); ‖v‖ > 0 for any trained v.
    v32 = v.astype(jnp.float32)
    kernel = g.astype(jnp.float32)[:, None, None] * v32 / jnp.sqrt(jnp.sum(v32 * v32, axis=(1, 2), keepdims=True))
    y = conv1d(x, kernel, bias, padding=K // 2, groups=G, dtype=cd)
    if K % 2 == 0:  # padding K/2 on both sides gives T + 1 outputs: drop the last (HF WavLMSamePadLayer)
      y = y[:, :-1]
    return transformer.ACTIVATIONS[cfg.feat_extract_activation](y.astype(jnp.float32)).astype(cd)


class WavLMAttention(nn.Module):
  """Self-attention with a gated relative position bias.

  x: float[B, T, C]; position_bias: float32[H, T, T] (layer 0's table, shared); key_mask bool[B, T].
  Returns float[B, T, C].
  """
  config: WavLMConfig

  @nn.compact
  def __call__(self, x, position_bias, key_mask=None):
    cfg, cd = self.config, self.config.compute_dtype
    B, T, C = x.shape
    H, N = cfg.num_attention_heads, cfg.head_dim
    dense = lambda name, features, axes: Dense(features, axes, True, cd, name=name)
    q = dense("q_proj", C, ("enc_embed", "enc_qkv"))(x).reshape(B, T, H, N).astype(jnp.float32) * (N ** -0.5)
    k = dense("k_proj", C, ("enc_embed", "enc_qkv"))(x).reshape(B, T, H, N)
    v = dense("v_proj", C, ("enc_embed", "enc_qkv"))(x).reshape(B, T, H, N)
    # Gate per (query, head) from the layer input's head slice; g in (1, 1 + const).
    const = self.param("gru_rel_pos_const", nn.with_logical_partitioning(nn.initializers.ones, ("enc_heads",)), (H,))
    gate_in = dense("gru_rel_pos_linear", 8, (None, None))(x.reshape(B, T, H, N)).astype(jnp.float32)
    gate_a, gate_b = jnp.split(jax.nn.sigmoid(gate_in.reshape(B, T, H, 2, 4).sum(-1)), 2, axis=-1)
    gate = (gate_a * (gate_b * const.astype(jnp.float32)[:, None] - 1.0) + 2.0)[..., 0]  # [B, T, H]
    bias = jnp.einsum("bqh,hqk->bhqk", gate, position_bias)
    logits = jnp.einsum("bqhn,bkhn->bhqk", q.astype(cd), k, preferred_element_type=jnp.float32) + bias
    if key_mask is not None:
      logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(cd)
    out = jnp.einsum("bhqk,bkhn->bqhn", weights, v, preferred_element_type=jnp.float32).astype(cd)
    return dense("out_proj", C, ("enc_qkv", "enc_embed"))(out.reshape(B, T, C))


class EncoderLayer(nn.Module):
  """One WavLM block, post-norm (base) or pre-norm (`do_stable_layer_norm`, large)."""
  config: WavLMConfig

  @nn.compact
  def __call__(self, x, position_bias, key_mask=None):
    cfg, cd = self.config, self.config.compute_dtype
    ln = lambda name: layer_norm(name, cfg.layer_norm_eps, cd, transformer.EMBED)
    attention = WavLMAttention(cfg, name="attention")
    ffn = lambda h: transformer.MLP(cfg.intermediate_size, cfg.hidden_act, cd, name="feed_forward")(h)
    if cfg.do_stable_layer_norm:
      x = x + attention(ln("layer_norm")(x), position_bias, key_mask)
      x = x + ffn(ln("final_layer_norm")(x))
    else:
      x = ln("layer_norm")(x + attention(x, position_bias, key_mask))
      x = ln("final_layer_norm")(x + ffn(x))
    return nn.with_logical_constraint(x, transformer.ACT)


class WavLM(nn.Module):
  """The whole model: waveform float[B, N] -> final-layer features float[B, T', C]."""
  config: WavLMConfig

  @nn.compact
  def __call__(self, wave, frame_mask=None, group_norm_lengths=None):
    """wave: float[B, N]; frame_mask: bool[B, T'] (True at real frames) or None; group_norm_lengths:
    int[B] real samples per clip to restrict the group-norm statistics to, or None (whole row)."""
    cfg = self.config
    H = cfg.num_attention_heads
    feats = FeatureEncoder(cfg, name="feature_extractor")(wave, group_norm_lengths)
    x = FeatureProjection(cfg, name="feature_projection")(feats)
    if frame_mask is not None:
      x = jnp.where(frame_mask[..., None], x, 0)
    x = x + PositionalConvEmbedding(cfg, name="pos_conv_embed")(x)
    final_norm = layer_norm("layer_norm", cfg.layer_norm_eps, cfg.compute_dtype, transformer.EMBED)
    if not cfg.do_stable_layer_norm:
      x = final_norm(x)
    x = nn.with_logical_constraint(x, transformer.ACT)
    T = x.shape[1]
    table = self.param("rel_attn_embed", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                      ("rel_buckets", "enc_heads")),
                       (cfg.num_buckets, H))
    buckets = relative_position_buckets(T, cfg.num_buckets, cfg.max_bucket_distance)
    # HF computes this in layer 0 and passes it on unchanged: computing it here is the same tensor.
    position_bias = jnp.transpose(table.astype(jnp.float32)[buckets], (2, 0, 1))  # [H, T, T]
    x, _ = transformer.run_layers(EncoderLayer, {"config": cfg}, cfg.num_hidden_layers, x, position_bias, frame_mask,
                                  scan_layers=cfg.scan_layers, remat=cfg.remat)
    if cfg.do_stable_layer_norm:
      x = final_norm(x)
    return x


# ---------------------------------------------------------------------------------------------
# Pure-function surface.


def _dummy_wave(config: WavLMConfig):
  return jnp.zeros((1, config.receptive_field))


def _init_boxed(config: WavLMConfig, key):
  return WavLM(config).init(key, _dummy_wave(config))["params"]


def init_params(config: WavLMConfig, key: jax.Array) -> dict:
  """Random parameters (lecun-normal kernels, zero biases, unit weight-norm gains), float32."""
  return nn.meta.unbox(jax.jit(_init_boxed, static_argnums=0)(config, key))


def param_logical_axes(config: WavLMConfig) -> dict:
  """The logical axis names of every parameter (a PartitionSpec tree shaped like the params)."""
  return transformer.logical_axes(WavLM(config), _dummy_wave(config))


def _check_shapes(config: WavLMConfig, input_values, mask, where: str = "wavlm.forward"):
  """Static checks (shapes only, safe under jit)."""
  if input_values.ndim != 2:
    raise ValueError(f"{where}: input_values must be float[B, N] (mono samples); got shape "
                     f"{tuple(input_values.shape)}")
  B, N = input_values.shape
  if N < config.receptive_field:
    raise ValueError(f"{where}: {N} samples is shorter than one frame ({config.receptive_field} samples, "
                     f"{config.receptive_field / 16:g} ms at 16 kHz)")
  if mask is not None and tuple(mask.shape) != (B, N):
    raise ValueError(f"{where}: mask has shape {tuple(mask.shape)}; expected [B, N] = {(B, N)}")


def check_inputs(config: WavLMConfig, input_values, mask=None) -> None:
  """The boundary check a data pipeline (or generate) runs on concrete (numpy) inputs before encoding.

  Shapes as in `forward`, and the values: each clip's mask is a prefix (right padding) of at least one
  frame (receptive_field samples), and every real sample is finite. Raises ValueError naming the clip.
  `forward` / `encode` check only shapes (they run under jit).
  """
  _check_shapes(config, input_values, mask, "wavlm.check_inputs")
  B, N = input_values.shape
  m = np.ones((B, N), bool) if mask is None else np.asarray(mask).astype(bool)
  lengths = m.sum(-1)
  for b in range(B):
    if lengths[b] < config.receptive_field:
      raise ValueError(f"wavlm.check_inputs: clip {b} has {int(lengths[b])} real samples, shorter than one frame "
                       f"({config.receptive_field} samples)")
    if not m[b, :lengths[b]].all():
      raise ValueError(f"wavlm.check_inputs: mask[{b}] is not a prefix (real samples first, then padding)")
  bad = ~np.isfinite(np.asarray(input_values)) & m
  if bad.any():
    b, t = map(int, np.argwhere(bad)[0])
    raise ValueError(f"wavlm.check_inputs: clip {b} has a non-finite sample (NaN or inf) at index {t}")


def forward(config: WavLMConfig, params: Mapping, input_values, mask=None, *, exact_padding: bool = False):
  """Encodes 16 kHz audio.

  Args:
    config: sizes (static under jit: `jax.jit(forward, static_argnums=0)`).
    params: `load_hf` / `init_params` output.
    input_values: float[B, N] from `data.audio.wav2vec2_inputs` (normalised when the checkpoint's
      preprocessor says do_normalize).
    mask: bool[B, N] True at real samples, a prefix per clip (right padding), or None (all real);
      values are checked by `check_inputs`, not here (a clip shorter than one frame has no real frame).
    exact_padding: group-norm checkpoints only: take the first GroupNorm's statistics over each clip's
      own frames, so a padded clip is encoded exactly as alone (transformers, False, averages over the
      padded row). No effect on layer-norm checkpoints, which are always padding-exact.
  Returns:
    (hidden float[B, T', C], frame_mask bool[B, T']): the final layer at 50 Hz, T' =
    frame_lengths(N); frame_mask[b, t] = t < frame_lengths(n_b). Masked frames are meaningless.
  """
  _check_shapes(config, input_values, mask)
  B, N = input_values.shape
  T = frame_lengths(config, N)
  if mask is None:
    frame_mask, key_mask = jnp.ones((B, T), bool), None
  else:
    lengths = mask.astype(jnp.int32).sum(-1)
    frame_mask = key_mask = jnp.arange(T)[None, :] < frame_lengths(config, lengths)[:, None]
  group_norm_lengths = None
  if mask is not None and exact_padding and config.feat_extract_norm == "group":
    group_norm_lengths = mask.astype(jnp.int32).sum(-1)
  hidden = WavLM(config).apply({"params": params}, input_values, key_mask, group_norm_lengths)
  return hidden, frame_mask


def encode(config: WavLMConfig, params: Mapping, input_values, mask=None, *, exact_padding: bool = False):
  """The encoder interface shared by every encoder module: `forward` -> (features float[N, T', C],
  mask bool[N, T']), real frames first. input_values float[N, S] samples, mask bool[N, S] real samples."""
  return forward(config, params, input_values, mask, exact_padding=exact_padding)


def num_tokens(config: WavLMConfig, n: int, *, exact_padding: bool = False) -> int:
  """Frames of one clip of n real 16 kHz samples (`frame_lengths`, 0 when shorter than one frame)."""
  del exact_padding
  return max(0, int(frame_lengths(config, int(n))))


# ---------------------------------------------------------------------------------------------
# Hugging Face snapshots.


class _TorchBinSnapshot(Snapshot):
  """A snapshot folder holding only pytorch_model.bin (read torch-free with tensor_files.read_pth)."""

  def __init__(self, path: str | os.PathLike):  # pylint: disable=super-init-not-called
    self.path = os.fspath(path)
    self.config = read_config(self.path)
    self.tensors = dict(tensor_files.read_pth(os.path.join(self.path, "pytorch_model.bin")))
    self._used = set()


def open_snapshot(path: str | os.PathLike) -> Snapshot:
  """Snapshot(path), or a pytorch_model.bin reader for folders without .safetensors files."""
  path = os.fspath(path)
  has_safetensors = os.path.isdir(path) and any(f.endswith(".safetensors") for f in os.listdir(path))
  if not has_safetensors and os.path.isfile(os.path.join(path, "pytorch_model.bin")):
    return _TorchBinSnapshot(path)
  return Snapshot(path)


def params_from_snapshot(snap: Snapshot, config: WavLMConfig) -> dict:
  """WavLM params (numpy, the layout `config.scan_layers` asks for) from an opened snapshot (`WavLMModel`
  keys, optionally under `wavlm.`)."""
  p = snap.find_prefix(("", "wavlm."), "feature_extractor.conv_layers.0.conv.weight")
  take = snap.take
  C, H, N, F = config.hidden_size, config.num_attention_heads, config.head_dim, config.intermediate_size
  K, G = config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups
  dense, ln = transformer.dense_from_hf, transformer.layer_norm_from_hf
  params: dict[str, Any] = {}

  fe, c_in = {}, 1
  for i, (c, k) in enumerate(zip(config.conv_dim, config.conv_kernel)):
    name = f"{p}feature_extractor.conv_layers.{i}."
    conv = {"kernel": np.ascontiguousarray(take(name + "conv.weight", (c, c_in, k)).transpose(2, 1, 0))}
    if config.conv_bias:
      conv["bias"] = take(name + "conv.bias", (c,))
    fe[f"conv_layers_{i}"] = {"conv": conv}
    if config.feat_extract_norm == "layer" or i == 0:
      fe[f"conv_layers_{i}"]["layer_norm"] = ln(take, name + "layer_norm", c)
    c_in = c
  params["feature_extractor"] = fe
  params["feature_projection"] = {
      "layer_norm": ln(take, f"{p}feature_projection.layer_norm", config.conv_dim[-1]),
      "projection": dense(take, f"{p}feature_projection.projection", config.conv_dim[-1], C)}

  conv = f"{p}encoder.pos_conv_embed.conv."
  if snap.has(conv + "parametrizations.weight.original0"):
    g_name, v_name = conv + "parametrizations.weight.original0", conv + "parametrizations.weight.original1"
  else:
    g_name, v_name = conv + "weight_g", conv + "weight_v"
  params["pos_conv_embed"] = {
      "weight_g": take(g_name, (1, 1, K)).reshape(K),
      "weight_v": np.ascontiguousarray(take(v_name, (C, C // G, K)).transpose(2, 1, 0)),
      "bias": take(conv + "bias", (C,)),
  }
  params["layer_norm"] = ln(take, f"{p}encoder.layer_norm", C)
  params["rel_attn_embed"] = take(f"{p}encoder.layers.0.attention.rel_attn_embed.weight", (config.num_buckets, H))
  for i in range(config.num_hidden_layers):
    a = f"{p}encoder.layers.{i}.attention."
    f = f"{p}encoder.layers.{i}.feed_forward."
    params[f"layers_{i}"] = {
        "attention": {
            **{proj: dense(take, a + proj, C, C) for proj in ("q_proj", "k_proj", "v_proj", "out_proj")},
            "gru_rel_pos_const": take(a + "gru_rel_pos_const", (1, H, 1, 1)).reshape(H),
            "gru_rel_pos_linear": dense(take, a + "gru_rel_pos_linear", N, 8),
        },
        "layer_norm": ln(take, f"{p}encoder.layers.{i}.layer_norm", C),
        "feed_forward": {"fc1": dense(take, f + "intermediate_dense", C, F), "fc2": dense(take, f + "output_dense", F, C)},
        "final_layer_norm": ln(take, f"{p}encoder.layers.{i}.final_layer_norm", C),
    }
  # Pre-training / SpecAugment leftovers that inference never uses.
  snap.check_all_used(p, ignore=("masked_spec_embed", "quantizer.", "project_hid.", "project_q."))
  return transformer.stack_layers(params) if config.scan_layers else params


def load_hf(path: str | os.PathLike, *, param_dtype=jnp.float32, mesh=None,
            **config_overrides) -> tuple[WavLMConfig, dict]:
  """Reads WavLM from a local HF snapshot folder (config.json + *.safetensors or pytorch_model.bin).

  The params are built from the file's tensors alone (the random initialiser never runs).
  Args:
    param_dtype: dtype of the returned parameters.
    mesh: None, or a ("data", "fsdp", "tensor") Mesh: each parameter is placed with its NamedSharding
      (sharding.logical_to_mesh of `param_logical_axes(config)`) as it is converted.
    config_overrides: non-size fields, e.g. dtype="bfloat16", scan_layers=True (layers stacked under
      one `layers`), remat="block".
  Returns (config, params).
  """
  snap = open_snapshot(path)
  config = WavLMConfig.from_hf(snap.config, os.path.join(snap.path, "config.json"), **config_overrides)
  params = params_from_snapshot(snap, config)
  axes = param_logical_axes(config) if mesh is not None else None
  return config, hf_snapshot.to_device(params, param_dtype, mesh, axes)
