"""From encoder features to RWKV embeddings: the sequence compressor and the modality adapters (docs/architecture.md).

  compressor        Conv1d(C_enc → C_enc, kernel k, stride s, no bias, no padding): L' = ⌊(L − k)/s⌋ + 1
  vision adapter    h = W2·relu(W1 x + b1) + b2 (W1: C_enc → m·D, W2: m·D → D); out = h + LayerNorm(h)
  audio adapter     Conv1d(C_enc → 2D, k3, s2, pad 2) → Linear(2D → 2D) → ReLU → Linear(2D → D)
  series adapter    Linear(C_enc → m·C_enc) → ReLU → Linear(m·C_enc → D)

Every stage carries a padding mask (True = real token). Masks are prefixes (encoders emit their real
frames first), so a stage maps a real length n to the length torch would produce on the unpadded
item, and padded inputs are zeroed before every convolution: a real output never sees padding.
Kernels are Flax layout: Linear [in, out], Conv1d [k, in, out] (torch [out, in, k] transposed).
"""

from __future__ import annotations

import dataclasses
import flax.linen as nn
import jax
import jax.numpy as jnp

from modrwkv_jax.layers import Conv1d, Dense, layer_norm

ADAPTERS = ("vision", "audio", "series")


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
  """One modality's compressor + adapter.

  kind: "vision", "audio" or "series" (the adapter of docs/architecture.md).
  in_features: C_enc, the encoder's feature width.
  out_features: D, the RWKV embedding width.
  compressor: (kernel, stride) of the Conv1d compressor, or None (identity).
  hidden_mult: m, the adapter's hidden multiplier (vision: m·D; series: m·C_enc; audio ignores it).
  """
  kind: str
  in_features: int
  out_features: int
  compressor: tuple[int, int] | None = None
  hidden_mult: int = 4
  dtype: str = "float32"

  def __post_init__(self):
    if self.kind not in ADAPTERS:
      raise ValueError(f"ProjectorConfig: kind {self.kind!r} is not one of {ADAPTERS}")
    if self.compressor is not None:
      k, s = self.compressor
      if not (isinstance(k, int) and isinstance(s, int) and k >= 1 and s >= 1):
        raise ValueError(f"ProjectorConfig: compressor must be (kernel >= 1, stride >= 1); got {self.compressor}")

  def output_length(self, length: int) -> int:
    """Tokens an item of `length` encoder frames becomes (0 if too short for the compressor)."""
    if self.compressor is not None:
      k, s = self.compressor
      length = max(0, (length - k) // s + 1)
    if self.kind == "audio" and length > 0:
      length = (length + 2 * 2 - 3) // 2 + 1
    return length


def conv_length(length, kernel: int, stride: int, padding: int = 0):
  """Output length of a Conv1d: ⌊(L + 2p − k)/s⌋ + 1, floored at 0 (int or int array)."""
  out = (length + 2 * padding - kernel) // stride + 1
  return jnp.maximum(out, 0) if isinstance(out, jax.Array) else max(out, 0)


def _prefix_mask(lengths, size):
  return jnp.arange(size)[None, :] < lengths[:, None]


def _dense(features, axes, name, dtype):
  return Dense(features, axes, True, dtype, name=name)


class Projector(nn.Module):
  """Compressor + adapter for one modality.

  x: float[N, L, C_enc], mask: bool[N, L] (prefix) -> (float[N, L', D] in float32, bool[N, L']).
  """
  config: ProjectorConfig

  @nn.compact
  def __call__(self, x, mask):
    cfg = self.config
    dt = jnp.dtype(cfg.dtype)
    lengths = mask.sum(-1)
    x = jnp.where(mask[..., None], x, 0)
    if cfg.compressor is not None:
      k, s = cfg.compressor
      x = Conv1d(x.shape[-1], k, ("conv_in", "enc_embed"), stride=s, use_bias=False, dtype=dt, name="compressor")(x)
      lengths = conv_length(lengths, k, s)
    D = cfg.out_features
    if cfg.kind == "vision":
      h = _dense(cfg.hidden_mult * D, ("enc_embed", "proj_hidden"), "fc1", dt)(x)
      h = _dense(D, ("proj_hidden", "embed"), "fc2", dt)(jax.nn.relu(h)).astype(jnp.float32)
      out = h + layer_norm("norm", 1e-5, jnp.float32)(h)
    elif cfg.kind == "audio":
      x = jnp.where(_prefix_mask(lengths, x.shape[1])[..., None], x, 0)
      h = Conv1d(2 * D, 3, ("enc_embed", "proj_hidden"), stride=2, padding=2, dtype=dt, name="conv")(x)
      lengths = jnp.where(lengths > 0, conv_length(lengths, 3, 2, 2), 0)
      h = _dense(2 * D, ("proj_hidden", "proj_mid"), "fc1", dt)(h)
      out = _dense(D, ("proj_mid", "embed"), "fc2", dt)(jax.nn.relu(h)).astype(jnp.float32)
    else:
      h = _dense(cfg.hidden_mult * x.shape[-1], ("enc_embed", "proj_hidden"), "fc1", dt)(x)
      out = _dense(D, ("proj_hidden", "embed"), "fc2", dt)(jax.nn.relu(h)).astype(jnp.float32)
    out_mask = _prefix_mask(lengths, out.shape[1])
    out = nn.with_logical_constraint(out, ("batch", "length", "act_embed"))
    return jnp.where(out_mask[..., None], out, 0.0), out_mask


def init_params(config: ProjectorConfig, key: jax.Array, length: int = 8) -> dict:
  """Fresh projector params (unboxed), from a dummy item of `length` frames."""
  x = jnp.zeros((1, max(length, (config.compressor or (1, 1))[0]), config.in_features), jnp.float32)
  boxed = Projector(config).init(key, x, jnp.ones(x.shape[:2], bool))["params"]
  return nn.meta.unbox(boxed)


def param_logical_axes(config: ProjectorConfig) -> dict:
  x = jnp.zeros((1, max(8, (config.compressor or (1, 1))[0]), config.in_features), jnp.float32)
  boxed = jax.eval_shape(lambda: Projector(config).init(jax.random.key(0), x, jnp.ones(x.shape[:2], bool)))
  return nn.get_partition_spec(boxed)["params"]


def forward(config: ProjectorConfig, params, features, mask):
  """features: float[N, L, C_enc], mask: bool[N, L] -> (float32[N, L', D], bool[N, L'])."""
  if features.ndim != 3 or features.shape[-1] != config.in_features:
    raise ValueError(f"projector ({config.kind}): features have shape {tuple(features.shape)}; "
                     f"expected [N, L, C_enc={config.in_features}]")
  return Projector(config).apply({"params": params}, features, mask.astype(bool))
