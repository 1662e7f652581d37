"""The Whisper audio encoder (OpenAI Whisper, HF `WhisperEncoder`) in Flax linen, read from HF snapshots.

Architecture: log-mel float[B, T, n_mels] -> Conv1d(n_mels→C, k3, p1) -> GELU -> Conv1d(C→C, k3, s2, p1)
-> GELU -> + the checkpoint's sinusoidal position table `embed_positions[:T']` -> pre-LN transformer
blocks (transformer.EncoderLayer; k_proj without bias, LayerNorm eps 1e-5, exact GELU MLP) -> final
LayerNorm. T' = ceil(T / 2): 50 frames per second of audio (mel hop 10 ms, stride 2).

Two ways to run it (`forward(..., mode=)`):
  * "paper" (ModRWKV, and how Whisper was trained): the input is the 30 s window, exactly
    T = 2·max_source_positions = 3000 frames of `data.audio.whisper_features(pad_to_chunk=True)`, the
    silence after the clip included; no attention mask (HF ignores one). The output keeps
    `sum(mel_mask)//2 + 1` frames per clip (at most max_source_positions): ModRWKV's cut, one
    frame more than the conv arithmetic ceil(n/2) when n is even.
  * "real_length" (cheaper): the input is only as long as the longest clip in the batch
    (`whisper_features(pad_to_chunk=False)`), padded frames are zeroed before each conv and hidden
    from attention, so every clip is encoded exactly as if it were alone and unpadded, at cost
    O(T'²) instead of O(1500²). It differs from "paper": attention no longer sees the trailing
    silence the model always saw in training (so every output frame changes a little: each one attends
    to all others), and it keeps ceil(n/2) frames. Whisper was never trained on short windows; use it for speed, and
    prefer "paper" when matching the paper's numbers.

Params (kernels are torch weights transposed: Linear [in, out], Conv1d [K, in, out]):
```
conv1 {kernel [3, n_mels, C], bias [C]}   conv2 {kernel [3, C, C], bias [C]}
embed_positions [max_source_positions, C]          (the checkpoint's table; sinusoids at init)
encoder {layers_i: transformer.EncoderLayer params}   layer_norm {scale, bias} [C]
```
Logical axes (modrwkv_jax.sharding): conv1 kernel ("conv_window", "mel", "enc_embed"), conv2 kernel
("conv_window", "conv_in", "enc_embed"), their biases ("enc_embed",); embed_positions
("enc_positions", "enc_embed"); layer_norm ("enc_embed",); transformer.py's names for the blocks.
With `scan_layers` the blocks are one scanned `encoder.layers` (leading axis "layers").

`load_hf(path)` reads a local snapshot of `WhisperForConditionalGeneration` / `WhisperModel`
(`model.encoder.*` / `encoder.*`) or of an encoder alone (`conv1.weight` at the top), e.g.
openai/whisper-small, -medium, -large-v3 (128 mel bins); no torch at run time.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax.layers import Conv1d, layer_norm
from modrwkv_jax.models.encoders import hf_snapshot, transformer
from modrwkv_jax.models.encoders.hf_snapshot import Snapshot

MODES = ("paper", "real_length")


@dataclasses.dataclass(frozen=True)
class WhisperConfig:
  """Sizes of a Whisper encoder (HF WhisperConfig names). Frozen and hashable: a static jit argument.

  scan_layers: params of the encoder layers stacked under one scanned `encoder.layers` (transformer.py).
  remat: "none", "block" or a jax.checkpoint_policies name, applied to each encoder layer.
  """
  num_mel_bins: int = 80
  d_model: int = 768
  encoder_layers: int = 12
  encoder_attention_heads: int = 12
  encoder_ffn_dim: int = 3072
  max_source_positions: int = 1500
  activation: str = "gelu"  # transformer.ACTIVATIONS name of the MLP (HF activation_function)
  layer_norm_eps: float = 1e-5
  dtype: str = "float32"  # compute dtype; params stay float32
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    for f in ("num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
              "max_source_positions"):
      if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
        raise ValueError(f"WhisperConfig.{f} must be a positive int, got {getattr(self, f)!r}")
    if self.d_model % self.encoder_attention_heads:
      raise ValueError(f"WhisperConfig: d_model={self.d_model} is not a multiple of "
                       f"encoder_attention_heads={self.encoder_attention_heads}")
    if self.activation not in transformer.ACTIVATIONS:
      raise ValueError(f"WhisperConfig.activation={self.activation!r}; choose one of {sorted(transformer.ACTIVATIONS)}")
    transformer.check_stack_options("WhisperConfig", self.scan_layers, self.remat)

  @property
  def n_frames(self) -> int:
    """Mel frames of the padded window the encoder was trained on (3000 = 30 s)."""
    return 2 * self.max_source_positions

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @classmethod
  def from_hf(cls, hf: Mapping, source: str = "config.json", **overrides) -> WhisperConfig:
    if hf.get("model_type", "whisper") != "whisper":
      raise ValueError(f"{source}: model_type is {hf.get('model_type')!r}; expected 'whisper'")
    try:
      return cls(num_mel_bins=hf["num_mel_bins"], d_model=hf["d_model"], encoder_layers=hf["encoder_layers"],
                 encoder_attention_heads=hf["encoder_attention_heads"], encoder_ffn_dim=hf["encoder_ffn_dim"],
                 max_source_positions=hf["max_source_positions"],
                 activation=transformer.activation_from_hf(hf.get("activation_function", "gelu"), source),
                 **overrides)
    except KeyError as e:
      raise ValueError(f"{source}: missing Whisper setting {e}") from e


# ---------------------------------------------------------------------------------------------
# Layers.


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
  """Whisper's position table float32[length, channels]: [sin(t·f_i), cos(t·f_i)], f_i = max_timescale^(−i/(C/2−1))."""
  if channels % 2:
    raise ValueError(f"sinusoids: channels={channels} must be even")
  inv = np.exp(-math.log(max_timescale) / (channels // 2 - 1) * np.arange(channels // 2))
  t = np.arange(length)[:, None] * inv[None, :]
  return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def _gelu(x):
  return jax.nn.gelu(x.astype(jnp.float32), approximate=False)  # torch.nn.functional.gelu (erf)


class WhisperEncoder(nn.Module):
  """The Whisper encoder: convs, positions, pre-LN blocks, final LayerNorm."""
  config: WhisperConfig

  @nn.compact
  def __call__(self, features, frame_mask=None, token_mask=None):
    """
    Args:
      features: float[B, T, n_mels] log-mel frames (T <= 2·max_source_positions).
      frame_mask: bool[B, T] or None. If given, frames where it is False are zeroed before each conv
        (the "real_length" mode: a clip then sees the convs' own zero padding after its end).
      token_mask: bool[B, T'] or None; False hides a token from attention as a key.
    Returns:
      float[B, T', C] with T' = ceil(T / 2), after the final LayerNorm.
    """
    cfg, cd = self.config, self.config.compute_dtype
    C, P = cfg.d_model, cfg.max_source_positions
    zero_pad = (lambda h: h) if frame_mask is None else (lambda h: jnp.where(frame_mask[..., None], h, 0))
    x = zero_pad(features.astype(cd))
    x = _gelu(Conv1d(C, 3, ("mel", "enc_embed"), padding=1, dtype=cd, name="conv1")(x)).astype(cd)
    x = zero_pad(x)
    x = _gelu(Conv1d(C, 3, ("conv_in", "enc_embed"), stride=2, padding=1, dtype=cd, name="conv2")(x))
    table = self.param("embed_positions", nn.with_logical_partitioning(
        lambda key, shape, dtype=jnp.float32: jnp.asarray(sinusoids(*shape), dtype), ("enc_positions", "enc_embed")),
        (P, C))
    x = (x + table[: x.shape[1]].astype(jnp.float32)).astype(cd)
    x = nn.with_logical_constraint(x, transformer.ACT)
    x, _ = transformer.Encoder(cfg.encoder_layers, cfg.encoder_attention_heads, cfg.encoder_ffn_dim, cfg.activation,
                               cfg.layer_norm_eps, key_bias=False, causal=False, dtype=cd, scan_layers=cfg.scan_layers,
                               remat=cfg.remat, name="encoder")(x, token_mask)
    return layer_norm("layer_norm", cfg.layer_norm_eps, cd, transformer.EMBED)(x)


# ---------------------------------------------------------------------------------------------
# Pure-function surface.


def output_lengths(config: WhisperConfig, mel_lengths, mode: str = "paper"):
  """Encoder frames kept per clip of `mel_lengths` real mel frames (int array -> int array).

  paper: min(n // 2 + 1, max_source_positions) (ModRWKV's cut); real_length: ceil(n / 2).
  """
  n = jnp.asarray(mel_lengths)
  if mode == "paper":
    return jnp.minimum(n // 2 + 1, config.max_source_positions)
  if mode == "real_length":
    return (n + 1) // 2
  raise ValueError(f"whisper: unknown mode {mode!r}; choose one of {MODES}")


def _dummy_features(config: WhisperConfig):
  return jnp.zeros((1, 2, config.num_mel_bins))


def _init_boxed(config: WhisperConfig, key):
  return WhisperEncoder(config).init(key, _dummy_features(config))["params"]


def init_params(config: WhisperConfig, key: jax.Array) -> dict:
  """Random parameters (lecun-normal kernels, zero biases, sinusoidal position table), float32."""
  return nn.meta.unbox(jax.jit(_init_boxed, static_argnums=0)(config, key))


def param_logical_axes(config: WhisperConfig) -> dict:
  """The logical axis names of every parameter (a PartitionSpec tree shaped like the params)."""
  return transformer.logical_axes(WhisperEncoder(config), _dummy_features(config))


def _check_shapes(config: WhisperConfig, features, mel_mask, mode: str, where: str = "whisper.forward"):
  """Static checks (shapes and the mode, safe under jit)."""
  if mode not in MODES:
    raise ValueError(f"{where}: unknown mode {mode!r}; choose one of {MODES}")
  if features.ndim != 3 or features.shape[-1] != config.num_mel_bins:
    raise ValueError(f"{where}: features must be float[B, T, n_mels={config.num_mel_bins}] (time-major; "
                     f"transformers' input_features is [B, n_mels, T]); got shape {tuple(features.shape)}")
  T = features.shape[1]
  if mode == "paper" and T != config.n_frames:
    raise ValueError(f"{where}(mode='paper'): features have {T} frames; this encoder takes exactly "
                     f"{config.n_frames} (= 2·max_source_positions, {config.n_frames / 100:g} s): pad with "
                     "data.audio.whisper_features(pad_to_chunk=True), or use mode='real_length'")
  if mode == "real_length" and not 0 < T <= config.n_frames:
    raise ValueError(f"{where}(mode='real_length'): features have {T} frames; expected 1 to "
                     f"{config.n_frames} ({config.n_frames / 100:g} s)")
  if mel_mask is not None and tuple(mel_mask.shape) != tuple(features.shape[:2]):
    raise ValueError(f"{where}: mel_mask has shape {tuple(mel_mask.shape)}; expected [B, T] = "
                     f"{tuple(features.shape[:2])}")


def check_inputs(config: WhisperConfig, features, mel_mask=None, *, mode: str = "paper") -> None:
  """The boundary check a data pipeline (or generate) runs on concrete (numpy) inputs before encoding.

  Shapes as in `forward`, and the values: each clip's mel_mask is a prefix (right padding) with at
  least one real frame, and every real frame is finite. Raises ValueError naming the clip.
  `forward` / `encode` check only shapes (they run under jit).
  """
  _check_shapes(config, features, mel_mask, mode, "whisper.check_inputs")
  B, T = features.shape[:2]
  mask = np.ones((B, T), bool) if mel_mask is None else np.asarray(mel_mask).astype(bool)
  lengths = mask.sum(-1)
  for b in range(B):
    if lengths[b] == 0:
      raise ValueError(f"whisper.check_inputs: clip {b} has no real mel frame")
    if not mask[b, :lengths[b]].all():
      raise ValueError(f"whisper.check_inputs: mel_mask[{b}] is not a prefix (real frames first, then padding)")
  bad = ~np.isfinite(np.asarray(features)).all(-1) & mask
  if bad.any():
    b, t = map(int, np.argwhere(bad)[0])
    raise ValueError(f"whisper.check_inputs: clip {b} has a non-finite mel value (NaN or inf) at frame {t}")


def forward(config: WhisperConfig, params: Mapping, features, mel_mask=None, *, mode: str = "paper"):
  """Encodes log-mel features.

  Args:
    config: sizes (static under jit: `jax.jit(forward, static_argnums=0, static_argnames="mode")`).
    params: `load_hf` / `init_params` output.
    features: float[B, T, n_mels] from `data.audio.whisper_features` (T = 3000 in "paper" mode).
    mel_mask: bool[B, T] True at real frames, a prefix per clip (right padding), or None (all real);
      values are checked by `check_inputs`, not here.
    mode: "paper" or "real_length" (see the module docstring).
  Returns:
    (hidden float[B, T', C], mask bool[B, T']): T' = max_source_positions in "paper" mode, ceil(T/2)
    in "real_length" mode; mask[b, t] = t < output_lengths(n_b). Masked frames hold values that
    belong to no clip (paper: the encoded silence; real_length: padding) — drop them.
  """
  _check_shapes(config, features, mel_mask, mode)
  B, T = features.shape[:2]
  lengths = jnp.full((B,), T, jnp.int32) if mel_mask is None else mel_mask.astype(jnp.int32).sum(-1)
  out_len = output_lengths(config, lengths, mode)
  T_out = config.max_source_positions if mode == "paper" else (T + 1) // 2
  out_mask = jnp.arange(T_out)[None, :] < out_len[:, None]
  model = WhisperEncoder(config)
  if mode == "paper":
    hidden = model.apply({"params": params}, features)
  else:
    frame_mask = None if mel_mask is None else mel_mask.astype(bool)
    hidden = model.apply({"params": params}, features, frame_mask, None if mel_mask is None else out_mask)
  return hidden, out_mask


def encode(config: WhisperConfig, params: Mapping, features, mask=None, *, mode: str = "paper"):
  """The encoder interface shared by every encoder module: `forward` -> (features float[N, T', C],
  mask bool[N, T']), real frames first. features float[N, T, n_mels], mask bool[N, T] real mel frames."""
  return forward(config, params, features, mask, mode=mode)


def num_tokens(config: WhisperConfig, n: int, *, mode: str = "paper") -> int:
  """Encoder frames of one clip with n real mel frames (`output_lengths`): paper min(n // 2 + 1,
  max_source_positions), real_length ceil(n / 2)."""
  return int(np.asarray(output_lengths(config, np.asarray([int(n)]), mode))[0])


# ---------------------------------------------------------------------------------------------
# Hugging Face snapshots.

_PREFIXES = ("model.encoder.", "encoder.", "")


def params_from_snapshot(snap: Snapshot, config: WhisperConfig) -> dict:
  """The encoder's params (numpy, the layout `config.scan_layers` asks for) from an opened snapshot
  (shapes checked against `config`)."""
  p = snap.find_prefix(_PREFIXES, "conv1.weight")
  C, M, P = config.d_model, config.num_mel_bins, config.max_source_positions
  take = snap.take
  conv = lambda name, c_in: {"kernel": np.ascontiguousarray(take(f"{p}{name}.weight", (C, c_in, 3)).transpose(2, 1, 0)),
                             "bias": take(f"{p}{name}.bias", (C,))}
  params = {
      "conv1": conv("conv1", M),
      "conv2": conv("conv2", C),
      "embed_positions": take(f"{p}embed_positions.weight", (P, C)),
      "encoder": transformer.encoder_params_from_hf(take, p + "layers.{i}.", config.encoder_layers, C,
                                                    config.encoder_ffn_dim, transformer.WHISPER_LAYER_NAMES,
                                                    key_bias=False),
      "layer_norm": transformer.layer_norm_from_hf(take, f"{p}layer_norm", C),
  }
  if p:
    snap.check_all_used(p)
  else:  # an encoder-only snapshot: everything must be ours
    snap.check_all_used("")
  return transformer.stack_layers(params) if config.scan_layers else params


def load_hf(path: str | os.PathLike, *, param_dtype=jnp.float32, mesh=None,
            **config_overrides) -> tuple[WhisperConfig, dict]:
  """Reads the Whisper encoder from a local HF snapshot folder (config.json + *.safetensors).

  Accepts full WhisperForConditionalGeneration / WhisperModel checkpoints (the decoder is ignored)
  and encoder-only ones. The params are built from the file's tensors alone (the random initialiser
  never runs).
  Args:
    param_dtype: dtype of the returned parameters.
    mesh: None, or a ("data", "fsdp", "tensor") Mesh: each parameter is placed with its NamedSharding
      (sharding.logical_to_mesh of `param_logical_axes(config)`) as it is converted.
    config_overrides: non-size fields, e.g. dtype="bfloat16", scan_layers=True (layers stacked under
      one `encoder.layers`), remat="block".
  Returns (config, params) with params a nested dict of `param_dtype` arrays.
  """
  snap = Snapshot(path)
  config = WhisperConfig.from_hf(snap.config, os.path.join(snap.path, "config.json"), **config_overrides)
  params = params_from_snapshot(snap, config)
  axes = param_logical_axes(config) if mesh is not None else None
  return config, hf_snapshot.to_device(params, param_dtype, mesh, axes)
