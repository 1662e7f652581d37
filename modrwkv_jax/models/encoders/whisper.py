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
`load_ctranslate2(path)` reads the encoder of a CTranslate2 `model.bin` (faster-whisper's format, e.g.
Systran/faster-whisper-base; see `whisper_base_offline` for the copy on PyPI) with no ctranslate2;
`load_hf` hands such a file (or its folder) to it, so configs name either kind in `init.encoder_hf.audio`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
from collections.abc import Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
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
  A CTranslate2 `model.bin` (the file, or a folder holding it and no *.safetensors) is read by
  `load_ctranslate2` instead, so `init.encoder_hf.audio` may name a faster-whisper folder.
  """
  if is_ctranslate2(path):
    return load_ctranslate2(path, param_dtype=param_dtype, mesh=mesh, **config_overrides)
  snap = Snapshot(path)
  config = WhisperConfig.from_hf(snap.config, os.path.join(snap.path, "config.json"), **config_overrides)
  params = params_from_snapshot(snap, config)
  axes = param_logical_axes(config) if mesh is not None else None
  return config, hf_snapshot.to_device(params, param_dtype, mesh, axes)


# ---------------------------------------------------------------------------------------------
# CTranslate2 model.bin (faster-whisper's format), read without ctranslate2.
#
# The layout, as CTranslate2's writer (python/ctranslate2/specs/model_spec.py, ModelSpec._serialize)
# and its reader (src/models/model.cc, Model::load) define it, little-endian (the writer packs in native
# order, and every platform CTranslate2 ships for is little-endian):
#   u32 binary version (6 since CTranslate2 3.0, before Whisper support: every Whisper conversion),
#   str spec name ("WhisperSpec"), u32 spec revision (1 to 3 for Whisper; the encoder is the same in all),
#   u32 n_vars, then per variable, in name order: str name, u8 ndim, u32 dims[ndim], u8 dtype id,
#   u32 nbytes, nbytes of C-order data; then u32 n_aliases and (str alias, str target) pairs; nothing after.
#   str: u16 length counting a trailing NUL, the UTF-8 bytes, the NUL.
#   dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16 (ctranslate2::DataType).
# The converter replaces every variable equal to one earlier in name order by an alias of it, across the
# whole model: in a freshly initialised model the encoder's LayerNorm gammas are aliases of a decoder
# variable. Attributes are scalars (ndim 0): `encoder/num_heads` is an int16. Whisper's encoder
# (WhisperEncoderSpec; torch layouts, a Linear weight is [out, in]):
#   encoder/conv{1,2}/{weight [C, c_in, 3], bias [C]}, encoder/position_encodings/encodings [P, C],
#   encoder/layer_{i}/self_attention/{layer_norm/{gamma, beta}, linear_0 (q, k, v fused: weight [3C, C],
#   bias [3C], zeros for k), linear_1 (out)}, encoder/layer_{i}/ffn/{layer_norm, linear_0 [F, C],
#   linear_1 [C, F]}, encoder/layer_norm/{gamma, beta}, encoder/num_heads.

_CT2_BINARY_VERSION = 6
_CT2_WHISPER_REVISIONS = (1, 2, 3)
_CT2_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"), 4: np.dtype("<f2"),
               5: np.dtype(ml_dtypes.bfloat16)}
_CT2_DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
_CT2_FLOATS = (_CT2_DTYPES[0], _CT2_DTYPES[4], _CT2_DTYPES[5])
# Bound on the entries a file can make us index: whisper-large-v3 has ~1,100 variables, an 80-layer LLM ~2,000.
_CT2_MAX_ENTRIES = 1 << 16


def _quote(name: str, limit: int = 80) -> str:
  """repr(name), shortened: a name in a hostile file may be 65,534 bytes long."""
  return repr(name) if len(name) <= limit else repr(name[:limit]) + f"... ({len(name)} characters)"


class _Ct2Variable(NamedTuple):
  offset: int  # of the data in the file
  shape: tuple[int, ...]
  type_id: int

  @property
  def dtype(self) -> np.dtype:
    return _CT2_DTYPES[self.type_id]


class _Ct2File:
  """The index of a CTranslate2 model.bin (names, shapes, dtypes, data offsets, aliases); data is read
  only for the variables `take` asks for. Every field is checked as it is parsed: a count or a size is
  compared with the bytes left in the file before anything is skipped, stored or allocated."""

  def __init__(self, path: str):
    self.path = path
    self.used: set[str] = set()
    size = os.path.getsize(path)
    with open(path, "rb") as f:

      def read(n: int, what: str) -> bytes:
        at = f.tell()
        data = f.read(n)
        if len(data) != n:
          raise ValueError(f"{path}: truncated: {what} needs {n} bytes at offset {at}, but the file ends at "
                           f"{size}; re-download or re-convert it")
        return data

      def uint(fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, read(struct.calcsize(fmt), what))[0]

      def string(what: str) -> str:
        n = uint("H", f"the length of {what}")
        raw = read(n, what)
        if n == 0 or raw[-1] != 0 or 0 in raw[:-1]:
          raise ValueError(f"{path}: {what} at offset {f.tell() - n} is not a NUL-terminated string of {n} "
                           f"bytes ({raw[:60]!r}); the file is corrupt")
        try:
          return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
          raise ValueError(f"{path}: {what} is not UTF-8 ({e}); the file is corrupt") from e

      def count(what: str) -> int:
        n = uint("I", f"the {what} count")
        if n > _CT2_MAX_ENTRIES:
          raise ValueError(f"{path}: the file declares {n} {what}s (at most {_CT2_MAX_ENTRIES} accepted); the "
                           "file is corrupt or not a CTranslate2 model.bin")
        return n

      version = uint("I", "the binary version")
      if version != _CT2_BINARY_VERSION:
        raise ValueError(f"{path}: binary version {version}; this reader knows version {_CT2_BINARY_VERSION} "
                         "(CTranslate2 3.0 to 4.x, every Whisper conversion): not a CTranslate2 model.bin, or "
                         "one from another CTranslate2 release (re-convert it with ctranslate2 4.x)")
      self.spec = string("the model spec name")
      self.revision = uint("I", "the spec revision")
      self.variables: dict[str, _Ct2Variable] = {}
      previous = "the header"
      for i in range(count("variable")):
        name = string(f"the name of variable #{i} (after {previous})")
        what = f"variable {_quote(name)}"
        if name in self.variables:
          raise ValueError(f"{path}: {what} appears twice; the file is corrupt")
        ndim = uint("B", f"the rank of {what}")
        shape = struct.unpack(f"<{ndim}I", read(4 * ndim, f"the shape of {what}"))
        type_id = uint("B", f"the dtype of {what}")
        if type_id not in _CT2_DTYPES:
          raise ValueError(f"{path}: {what} has dtype id {type_id}; known ids: "
                           f"{', '.join(f'{k} {v}' for k, v in _CT2_DTYPE_NAMES.items())}")
        nbytes = uint("I", f"the byte count of {what}")
        expected = math.prod(shape) * _CT2_DTYPES[type_id].itemsize  # Python ints: no overflow
        if nbytes != expected:
          raise ValueError(f"{path}: {what} declares {nbytes} bytes, but its shape {shape} of "
                           f"{_CT2_DTYPE_NAMES[type_id]} needs {expected}; the file is corrupt")
        offset = f.tell()
        if offset + nbytes > size:
          raise ValueError(f"{path}: truncated: {what} ({nbytes} bytes at offset {offset}) runs past the end of "
                           f"the file ({size} bytes); re-download or re-convert it")
        f.seek(nbytes, os.SEEK_CUR)
        self.variables[name] = _Ct2Variable(offset, shape, type_id)
        previous = _quote(name)
      self.aliases: dict[str, str] = {}
      for i in range(count("alias")):
        alias = string(f"the name of alias #{i}")
        target = string(f"the target of alias {_quote(alias)}")
        if alias in self.variables or alias in self.aliases:
          raise ValueError(f"{path}: alias {_quote(alias)} is also the name of a variable or another alias; the "
                           "file is corrupt")
        self.aliases[alias] = target
      if f.tell() != size:
        raise ValueError(f"{path}: {size - f.tell()} bytes after the last alias, where the file should end; "
                         "the file is corrupt (or two files were joined)")

  def resolve(self, name: str) -> str | None:
    """The variable `name` denotes, following aliases (chains too, refusing cycles); None if no entry has
    that name."""
    chain = [name]
    while chain[-1] not in self.variables:
      if chain[-1] not in self.aliases:
        if len(chain) == 1:
          return None
        raise ValueError(f"{self.path}: alias {' -> '.join(map(_quote, chain))} leads to no variable; the file "
                         "is corrupt")
      target = self.aliases[chain[-1]]
      if target in chain:
        raise ValueError(f"{self.path}: aliases form a cycle {' -> '.join(map(_quote, chain + [target]))}; the "
                         "file is corrupt")
      chain.append(target)
    return chain[-1]

  def _entry(self, name: str) -> tuple[_Ct2Variable, str]:
    target = self.resolve(name)
    if target is None:
      raise ValueError(f"{self.path}: no variable {_quote(name)} (nor an alias of that name), which every "
                       "CTranslate2 Whisper model.bin has; is this another model, or a truncated conversion?")
    self.used.add(name)
    return self.variables[target], "" if target == name else f" (an alias of {_quote(target)})"

  def shape(self, name: str) -> tuple[int, ...]:
    return self._entry(name)[0].shape

  def _data(self, var: _Ct2Variable, what: str) -> np.ndarray:
    nbytes = math.prod(var.shape) * var.dtype.itemsize
    with open(self.path, "rb") as f:
      f.seek(var.offset)
      raw = f.read(nbytes)
    if len(raw) != nbytes:
      raise ValueError(f"{self.path}: {what}: the file changed while it was read (truncated)")
    return np.frombuffer(raw, var.dtype).reshape(var.shape)

  def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float variable `name` (aliases followed) in the file's dtype, checked against `shape`."""
    var, via = self._entry(name)
    if var.shape != tuple(shape):
      raise ValueError(f"{self.path}: variable {_quote(name)}{via} has shape {var.shape}; expected {tuple(shape)} "
                       "from the sizes of encoder/conv1/weight, ffn/linear_0 and position_encodings")
    if var.dtype not in _CT2_FLOATS:
      raise ValueError(f"{self.path}: variable {_quote(name)}{via} is {_CT2_DTYPE_NAMES[var.type_id]} (a quantized "
                       "conversion); this reader takes float32, float16 or bfloat16 weights: convert with "
                       "--quantization float16 (or float32)")
    return self._data(var, f"variable {_quote(name)}")

  def int_scalar(self, name: str) -> int | None:
    """The integer attribute `name` (a 0-d int8/16/32 variable), or None when the file has none."""
    if self.resolve(name) is None:
      return None
    var, via = self._entry(name)
    if var.shape != () or var.dtype.kind != "i":
      raise ValueError(f"{self.path}: variable {_quote(name)}{via} is {_CT2_DTYPE_NAMES[var.type_id]}{var.shape}; "
                       "expected an integer scalar")
    return int(self._data(var, f"variable {_quote(name)}")[()])

  def check_all_used(self, prefix: str) -> None:
    left = sorted(n for n in (*self.variables, *self.aliases) if n.startswith(prefix) and n not in self.used)
    if left:
      raise ValueError(f"{self.path}: {len(left)} unexpected variables under {prefix!r}, e.g. "
                       f"{', '.join(map(_quote, left[:5]))}; this reader knows the Whisper encoder of CTranslate2's "
                       "WhisperSpec revisions 1-3 (float weights)")


def _ct2_config(ct2: _Ct2File, num_heads: int | None, overrides: Mapping) -> WhisperConfig:
  """The encoder sizes, from the shapes of the file's variables and its `encoder/num_heads`."""
  conv1 = ct2.shape("encoder/conv1/weight")
  if len(conv1) != 3 or conv1[2] != 3:
    raise ValueError(f"{ct2.path}: variable 'encoder/conv1/weight' has shape {conv1}; expected "
                     "[d_model, n_mels, 3]")
  layers = 0
  while ct2.resolve(f"encoder/layer_{layers}/self_attention/linear_0/weight") is not None:
    layers += 1
  if layers == 0:
    raise ValueError(f"{ct2.path}: no variable 'encoder/layer_0/self_attention/linear_0/weight'; a Whisper "
                     "encoder has at least one layer")
  ffn = ct2.shape("encoder/layer_0/ffn/linear_0/weight")
  positions = ct2.shape("encoder/position_encodings/encodings")
  for name, shape in (("encoder/layer_0/ffn/linear_0/weight", ffn),
                      ("encoder/position_encodings/encodings", positions)):
    if len(shape) != 2:
      raise ValueError(f"{ct2.path}: variable {name!r} has shape {shape}; expected a matrix")
  stored = ct2.int_scalar("encoder/num_heads")
  if num_heads is not None and stored is not None and num_heads != stored:
    raise ValueError(f"{ct2.path}: variable 'encoder/num_heads' is {stored}, but num_heads={num_heads} was passed")
  heads = stored if num_heads is None else num_heads
  if heads is None:
    raise ValueError(f"{ct2.path}: no variable 'encoder/num_heads' (CTranslate2 then assumes 8); pass "
                     "num_heads= with the model's encoder_attention_heads")
  try:
    return WhisperConfig(num_mel_bins=conv1[1], d_model=conv1[0], encoder_layers=layers,
                         encoder_attention_heads=heads, encoder_ffn_dim=ffn[0], max_source_positions=positions[0],
                         activation="gelu", **overrides)
  except ValueError as e:
    raise ValueError(f"{ct2.path}: {e}") from e


def _ct2_params(ct2: _Ct2File, config: WhisperConfig) -> dict:
  """The encoder's params (numpy, the file's dtype, the layout `config.scan_layers` asks for)."""
  C, M, P, F = config.d_model, config.num_mel_bins, config.max_source_positions, config.encoder_ffn_dim
  take = ct2.take

  def conv(name, c_in):
    return {"kernel": np.ascontiguousarray(take(f"encoder/{name}/weight", (C, c_in, 3)).transpose(2, 1, 0)),
            "bias": take(f"encoder/{name}/bias", (C,))}

  def dense(name, d_in, d_out):
    return {"kernel": np.ascontiguousarray(take(f"{name}/weight", (d_out, d_in)).T),
            "bias": take(f"{name}/bias", (d_out,))}

  def norm(name):
    return {"scale": take(f"{name}/gamma", (C,)), "bias": take(f"{name}/beta", (C,))}

  def layer(i):
    p = f"encoder/layer_{i}/"
    qkv = take(p + "self_attention/linear_0/weight", (3 * C, C))
    qkv_bias = take(p + "self_attention/linear_0/bias", (3 * C,))
    q, k, v = (np.ascontiguousarray(qkv[j * C:(j + 1) * C].T) for j in range(3))
    # The k third of the bias (zeros: Whisper's k_proj has none) is dropped. That is exact for any value:
    # a key bias adds q·b_k to every logit of one query alike, and softmax ignores a common shift.
    return {
        "layer_norm1": norm(p + "self_attention/layer_norm"),
        "self_attn": {"q_proj": {"kernel": q, "bias": qkv_bias[:C]}, "k_proj": {"kernel": k},
                      "v_proj": {"kernel": v, "bias": qkv_bias[2 * C:]},
                      "out_proj": dense(p + "self_attention/linear_1", C, C)},
        "layer_norm2": norm(p + "ffn/layer_norm"),
        "mlp": {"fc1": dense(p + "ffn/linear_0", C, F), "fc2": dense(p + "ffn/linear_1", F, C)},
    }

  params = {
      "conv1": conv("conv1", M),
      "conv2": conv("conv2", C),
      "embed_positions": take("encoder/position_encodings/encodings", (P, C)),
      "encoder": {f"layers_{i}": layer(i) for i in range(config.encoder_layers)},
      "layer_norm": norm("encoder/layer_norm"),
  }
  ct2.check_all_used("encoder/")
  return transformer.stack_layers(params) if config.scan_layers else params


def is_ctranslate2(path: str | os.PathLike) -> bool:
  """Whether `path` is a CTranslate2 model.bin (by its first 4 bytes: binary version 6) or a folder
  holding one and no *.safetensors (a Hugging Face snapshot otherwise)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    if any(name.endswith(".safetensors") for name in os.listdir(path)):
      return False
    path = os.path.join(path, "model.bin")
  if not os.path.isfile(path):
    return False
  with open(path, "rb") as f:
    head = f.read(4)
  return len(head) == 4 and struct.unpack("<I", head)[0] == _CT2_BINARY_VERSION


def load_ctranslate2(path: str | os.PathLike, *, param_dtype=jnp.float32, mesh=None, num_heads: int | None = None,
                     **config_overrides) -> tuple[WhisperConfig, dict]:
  """Reads the Whisper encoder from a CTranslate2 `model.bin` (a faster-whisper model), without ctranslate2.

  Only the encoder's variables are read (and the decoder variables they are aliases of); float32,
  float16 and bfloat16 conversions load, quantized ones (int8, int16) are refused. The sizes come from
  the variables' shapes and `encoder/num_heads` (CTranslate2's config.json does not hold them).
  Args:
    path: the model.bin, or the folder holding it.
    param_dtype: dtype of the returned parameters (float16 weights become float32 by default).
    mesh: None, or a ("data", "fsdp", "tensor") Mesh, as in `load_hf`.
    num_heads: the encoder's attention heads, for a file without `encoder/num_heads` (must agree
      with it otherwise).
    config_overrides: non-size fields, e.g. dtype="bfloat16", scan_layers=True, remat="block".
  Returns (config, params) with params a nested dict of `param_dtype` arrays, as `load_hf` returns.
  Raises ValueError naming the file and the variable for a corrupt, truncated or foreign file.
  """
  file = os.fspath(path)
  if os.path.isdir(file):
    file = os.path.join(file, "model.bin")
  if not os.path.isfile(file):
    raise FileNotFoundError(f"{file}: no such file (a CTranslate2 model folder holds model.bin)")
  ct2 = _Ct2File(file)
  if ct2.spec != "WhisperSpec":
    raise ValueError(f"{file}: the model spec is {_quote(ct2.spec)}; expected 'WhisperSpec' (a Whisper conversion)")
  if ct2.revision not in _CT2_WHISPER_REVISIONS:
    raise ValueError(f"{file}: WhisperSpec revision {ct2.revision}; this reader knows revisions "
                     f"{_CT2_WHISPER_REVISIONS} (CTranslate2 3.0 to 4.x)")
  config = _ct2_config(ct2, num_heads, config_overrides)
  params = _ct2_params(ct2, config)
  axes = param_logical_axes(config) if mesh is not None else None
  return config, hf_snapshot.to_device(params, param_dtype, mesh, axes)
