"""Time-series encoders for ModRWKV: a WaveNet-style causal conv stack and a Timer-style patch transformer.

Both take a window float[B, L] (one variable) or float[B, L, V] with a padding mask bool[B, L]
(True at observed steps; left padding for short look-backs, right padding, or gaps all work),
normalise every series RevIN-style and return features float[B, L', C] with a mask:

  * RevIN (Kim et al., ICLR 2022): per series and variable, mean and std over the observed steps
    (biased variance, std = sqrt(var + eps)), x̂ = (x − mean)/std, optionally an affine γ x̂ + β
    learnt per variable. The statistics are returned (`RevINStats`) so a forecast made in
    normalised units is mapped back with `denormalize(config, params, y, stats)`, which undoes the
    affine and then the statistics. Padded steps are 0 after normalisation.
  * WaveNet (van den Oord et al., 2016), trained from scratch: pointwise (1×1) input embedding
    V -> R, then `num_stacks` × len(dilations) residual blocks, each a causal dilated conv
    R -> 2R (kernel K, left padding (K−1)·d) with the gated activation tanh(f) ⊙ σ(g), a 1×1
    residual conv (x ← (x + res)·√½) and a 1×1 skip conv; output = 1×1(relu(1×1(relu(Σ skips))))
    -> C. One feature per step: L' = L, receptive field 1 + (K−1)·Σd·num_stacks steps.
  * Timer (Liu et al., ICML 2024) style, frozen or trained: the window is cut into non-overlapping
    patches of `patch_len` steps aligned to its *end* (the latest observation closes the last patch;
    a remainder at the start is padded on the left and masked), each patch float[P·V] -> Linear -> C,
    plus sinusoidal positions counted from the first observed patch, then a causal pre-LN
    transformer (transformer.Encoder(causal=True)) and a final LayerNorm. L' = ceil(L / P); a patch
    is real when any of its steps is.

Causality: each output depends only on inputs at or before its step (WaveNet) or patch (Timer) —
*given the RevIN statistics*. The statistics of the whole window are computed first by default
(standard RevIN: the look-back window is entirely in the past of the forecast); pass `stats=` (or
normalize=False) to run the strictly causal map. Padding never changes a real output: masked steps
are zeroed after the embedding and after every block, which is exactly the causal zero padding an
unpadded series sees, and Timer's positions skip leading padding.

Bad values (NaN/inf at an observed step, a series with no observed step, or, for Timer, fewer
observed steps than one patch) are caught by `check_inputs` on concrete inputs, at the boundary (a
data pipeline, generate); `forward` and `encode` check only shapes, so they behave the same under jit.

Params and their logical axes (modrwkv_jax.sharding):
```
revin        weight, bias [V] ("series_var",)                       (revin_affine only)
WaveNet      input_embedding {kernel [1, V, R] ("conv_window", "series_var", "conv_out"), bias [R] ("conv_out",)}
             blocks_i {dilated_conv [K, R, 2R], residual [1, R, R], skip [1, R, S]: ("conv_window", "conv_in",
                       "conv_out"), biases ("conv_out",)}
             output_1 [1, S, C], output_2 [1, C, C]: ("conv_window", "conv_in", "enc_embed"), biases ("enc_embed",)
Timer        patch_embed {kernel [P·V, C] ("enc_patch", "enc_embed"), bias [C] ("enc_embed",)}
             encoder {layers_i or one scanned `layers`: transformer.EncoderLayer}
             layer_norm {scale, bias} [C] ("enc_embed",)
```
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax.layers import Conv1d, Dense, layer_norm
from modrwkv_jax.models.encoders import transformer

REVIN_EPS = 1e-5  # std = sqrt(var + 1e-5): a constant series maps to 0, not inf


# ---------------------------------------------------------------------------------------------
# RevIN.


@flax.struct.dataclass
class RevINStats:
  """Per-series statistics: mean, std float32[B, 1, V] (std already includes eps)."""
  mean: jax.Array
  std: jax.Array


def revin_normalize(x, mask=None, eps: float = REVIN_EPS):
  """Normalises each series over its observed steps.

  Args:
    x: float[B, L, V]; mask: bool[B, L] (True = observed) or None (all observed).
  Returns:
    (x̂ float32[B, L, V] with 0 at masked steps, RevINStats).
  """
  x = x.astype(jnp.float32)
  m = jnp.ones(x.shape[:2], jnp.float32) if mask is None else mask.astype(jnp.float32)
  m = m[..., None]
  count = jnp.maximum(m.sum(axis=1, keepdims=True), 1.0)
  xm = jnp.where(m > 0, x, 0.0)  # masked steps may hold anything (even NaN): never read them
  mean = xm.sum(axis=1, keepdims=True) / count
  var = jnp.square(jnp.where(m > 0, x - mean, 0.0)).sum(axis=1, keepdims=True) / count
  std = jnp.sqrt(var + eps)
  return jnp.where(m > 0, (xm - mean) / std, 0.0), RevINStats(mean, std)


def revin_denormalize(y, stats: RevINStats):
  """y float[B, L', V] in normalised units -> y·std + mean (float32)."""
  return y.astype(jnp.float32) * stats.std + stats.mean


class RevIN(nn.Module):
  """RevIN with an optional learnt affine (weight, bias [V]); `__call__` normalises, `inverse` maps back."""
  affine: bool = True
  eps: float = REVIN_EPS
  num_vars: int = 1  # V

  def setup(self):
    if self.affine:
      self.weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, ("series_var",)),
                               (self.num_vars,))
      self.bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("series_var",)),
                             (self.num_vars,))

  def __call__(self, x, mask=None, stats: RevINStats | None = None):
    """x float[B, L, V] -> (x̂ float32[B, L, V], stats); with `stats` given, uses them as they are."""
    if stats is None:
      xn, stats = revin_normalize(x, mask, self.eps)
    else:
      m = jnp.ones(x.shape[:2], bool) if mask is None else mask.astype(bool)
      xn = jnp.where(m[..., None], (x.astype(jnp.float32) - stats.mean) / stats.std, 0.0)
    if self.affine:
      xn = xn * self.weight + self.bias
      if mask is not None:
        xn = jnp.where(mask[..., None], xn, 0.0)
    return xn, stats

  def inverse(self, y, stats: RevINStats):
    """y float[B, L', V] (normalised, affine space) -> float32 in the series' units."""
    y = y.astype(jnp.float32)
    if self.affine:
      y = (y - self.bias) / (self.weight + self.eps * self.eps)  # RevIN's guard against a zero weight
    return revin_denormalize(y, stats)


# ---------------------------------------------------------------------------------------------
# WaveNet.


@dataclasses.dataclass(frozen=True)
class WaveNetConfig:
  """A WaveNet-style causal encoder (trained from scratch)."""
  in_channels: int = 1  # V
  residual_channels: int = 64  # R
  skip_channels: int = 128  # S
  out_channels: int = 256  # C
  kernel_size: int = 2  # K
  dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
  num_stacks: int = 2
  revin_affine: bool = True
  dtype: str = "float32"

  def __post_init__(self):
    object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
    for f in ("in_channels", "residual_channels", "skip_channels", "out_channels", "kernel_size", "num_stacks"):
      if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
        raise ValueError(f"WaveNetConfig.{f} must be a positive int, got {getattr(self, f)!r}")
    if not self.dilations or min(self.dilations) <= 0:
      raise ValueError(f"WaveNetConfig.dilations must be positive ints, got {self.dilations}")

  @property
  def receptive_field(self) -> int:
    """Steps an output sees: 1 + (K−1)·Σdilations·num_stacks (511 for the defaults)."""
    return 1 + (self.kernel_size - 1) * sum(self.dilations) * self.num_stacks

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


class WaveNetBlock(nn.Module):
  """Gated causal dilated conv with residual and skip 1×1 convs.

  x: float[B, L, R], mask float[B, L, 1] -> (x' float[B, L, R], skip float32[B, L, S]).
  """
  config: WaveNetConfig
  dilation: int

  @nn.compact
  def __call__(self, x, mask):
    cfg, cd = self.config, self.config.compute_dtype
    R, K = cfg.residual_channels, cfg.kernel_size
    h = Conv1d(2 * R, K, ("conv_in", "conv_out"), padding=((K - 1) * self.dilation, 0), dilation=self.dilation,
               dtype=cd, name="dilated_conv")(x).astype(jnp.float32)
    f, g = jnp.split(h, 2, axis=-1)
    z = (jnp.tanh(f) * jax.nn.sigmoid(g)).astype(cd)
    res = Conv1d(R, 1, ("conv_in", "conv_out"), dtype=cd, name="residual")(z)
    skip = Conv1d(cfg.skip_channels, 1, ("conv_in", "conv_out"), dtype=cd, name="skip")(z)
    # (x + res)·√½ keeps the residual stream's variance constant over the depth.
    x = ((x.astype(jnp.float32) + res.astype(jnp.float32)) * math.sqrt(0.5) * mask).astype(cd)
    return x, skip.astype(jnp.float32) * mask


class WaveNet(nn.Module):
  """float[B, L, V] series -> (features float[B, L, C], RevINStats)."""
  config: WaveNetConfig

  @nn.compact
  def __call__(self, series, mask, stats=None, normalize=True):
    cfg, cd = self.config, self.config.compute_dtype
    m = mask.astype(jnp.float32)[..., None]
    x, stats = _normalize_input(self, cfg.in_channels, cfg.revin_affine, series, mask, stats, normalize)
    x = Conv1d(cfg.residual_channels, 1, ("series_var", "conv_out"), dtype=cd, name="input_embedding")(x)
    x = (x.astype(jnp.float32) * m).astype(cd)
    skips = 0.0
    for s in range(cfg.num_stacks):
      for j, d in enumerate(cfg.dilations):
        x, skip = WaveNetBlock(cfg, d, name=f"blocks_{s * len(cfg.dilations) + j}")(x, m)
        skips = skips + skip
    h = jax.nn.relu(skips).astype(cd)
    h = jax.nn.relu(Conv1d(cfg.out_channels, 1, ("conv_in", "enc_embed"), dtype=cd, name="output_1")(h)
                    .astype(jnp.float32))
    out = Conv1d(cfg.out_channels, 1, ("conv_in", "enc_embed"), dtype=cd, name="output_2")(h.astype(cd))
    out = (out.astype(jnp.float32) * m).astype(cd)
    return nn.with_logical_constraint(out, transformer.ACT), stats


def _normalize_input(module, num_vars, affine, series, mask, stats, normalize):
  """RevIN (a submodule named 'revin') or the raw series; masked steps are zeroed either way."""
  if not normalize:
    return jnp.where(mask[..., None], series.astype(jnp.float32), 0.0), stats
  return RevIN(affine, num_vars=num_vars, name="revin")(series, mask, stats)


# ---------------------------------------------------------------------------------------------
# Timer-style patch transformer.


@dataclasses.dataclass(frozen=True)
class TimerConfig:
  """A Timer-style decoder-only (causal) patch transformer.

  scan_layers: params of the transformer layers stacked under one scanned `encoder.layers` (transformer.py).
  remat: "none", "block" or a jax.checkpoint_policies name, applied to each transformer layer.
  """
  in_channels: int = 1  # V
  patch_len: int = 96  # P (Timer's token length)
  width: int = 256  # C
  num_layers: int = 4
  num_heads: int = 8
  mlp_dim: int = 1024
  activation: str = "gelu"
  eps: float = 1e-5
  revin_affine: bool = False  # Timer normalises without a learnt affine
  dtype: str = "float32"
  scan_layers: bool = False
  remat: str = "none"

  def __post_init__(self):
    for f in ("in_channels", "patch_len", "width", "num_layers", "num_heads", "mlp_dim"):
      if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
        raise ValueError(f"TimerConfig.{f} must be a positive int, got {getattr(self, f)!r}")
    if self.width % self.num_heads or self.width % 2:
      raise ValueError(f"TimerConfig: width={self.width} must be even and a multiple of num_heads={self.num_heads}")
    if self.activation not in transformer.ACTIVATIONS:
      raise ValueError(f"TimerConfig.activation={self.activation!r}; choose one of {sorted(transformer.ACTIVATIONS)}")
    transformer.check_stack_options("TimerConfig", self.scan_layers, self.remat)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


def _sinusoid_at(positions, channels: int):
  """Transformer sinusoids at integer positions int[B, N] -> float32[B, N, channels] ([sin, cos] halves)."""
  inv = jnp.exp(-math.log(10000.0) / max(channels // 2 - 1, 1) * jnp.arange(channels // 2))
  t = positions.astype(jnp.float32)[..., None] * inv
  return jnp.concatenate([jnp.sin(t), jnp.cos(t)], axis=-1)


def patchify(config: TimerConfig, x, mask):
  """Cuts float[B, L, V] into end-aligned patches: (float[B, N, P·V], patch_mask bool[B, N]), N = ceil(L/P).

  The first `N·P − L` steps are left padding (masked).
  """
  B, L, V = x.shape
  P = config.patch_len
  N = -(-L // P)
  pad = N * P - L
  x = jnp.pad(x, ((0, 0), (pad, 0), (0, 0)))
  mask = jnp.pad(mask, ((0, 0), (pad, 0)))
  return x.reshape(B, N, P * V), mask.reshape(B, N, P).any(-1)


class Timer(nn.Module):
  """float[B, L, V] series -> (patch features float[B, N, C], patch_mask bool[B, N], RevINStats)."""
  config: TimerConfig

  @nn.compact
  def __call__(self, series, mask, stats=None, normalize=True):
    cfg, cd = self.config, self.config.compute_dtype
    x, stats = _normalize_input(self, cfg.in_channels, cfg.revin_affine, series, mask, stats, normalize)
    patches, patch_mask = patchify(cfg, x, mask)
    h = Dense(cfg.width, ("enc_patch", "enc_embed"), True, cd, name="patch_embed")(patches)
    positions = jnp.maximum(jnp.cumsum(patch_mask, axis=1) - 1, 0)  # 0 at the first observed patch
    h = (h.astype(jnp.float32) + _sinusoid_at(positions, cfg.width)).astype(cd)
    h = jnp.where(patch_mask[..., None], h, 0)
    h, _ = transformer.Encoder(cfg.num_layers, cfg.num_heads, cfg.mlp_dim, cfg.activation, cfg.eps, key_bias=True,
                               causal=True, dtype=cd, scan_layers=cfg.scan_layers, remat=cfg.remat,
                               name="encoder")(h, patch_mask)
    h = layer_norm("layer_norm", cfg.eps, cd, transformer.EMBED)(h)
    h = jnp.where(patch_mask[..., None], h, 0)
    return nn.with_logical_constraint(h, transformer.ACT), patch_mask, stats


# ---------------------------------------------------------------------------------------------
# Pure-function surface (shared by both encoders).


def _model(config):
  if isinstance(config, WaveNetConfig):
    return WaveNet(config)
  if isinstance(config, TimerConfig):
    return Timer(config)
  raise TypeError(f"expected a WaveNetConfig or TimerConfig, got {type(config).__name__}")


def _example(config):
  L = config.patch_len if isinstance(config, TimerConfig) else 4
  return jnp.zeros((1, L, config.in_channels)), jnp.ones((1, L), bool)


def _init_boxed(config, key):
  return _model(config).init(key, *_example(config))["params"]


def init_params(config: WaveNetConfig | TimerConfig, key: jax.Array) -> dict:
  """Random parameters (lecun-normal kernels, zero biases, identity RevIN affine), float32."""
  return nn.meta.unbox(jax.jit(_init_boxed, static_argnums=0)(config, key))


def param_logical_axes(config: WaveNetConfig | TimerConfig) -> dict:
  """The logical axis names of every parameter (a PartitionSpec tree shaped like the params)."""
  return transformer.logical_axes(_model(config), *_example(config))


def _as_3d(config, series, mask, where: str, whole_patch: bool = True):
  """Static checks (shapes only, safe under jit): [B, L] or [B, L, V] series + mask -> (float[B, L, V], bool[B, L]).

  whole_patch: Timer windows must hold at least one patch (a shorter one can never be encoded)."""
  if series.ndim == 2:
    series = series[..., None]
  if series.ndim != 3 or series.shape[-1] != config.in_channels:
    raise ValueError(f"{where}: series must be float[B, L] or float[B, L, V={config.in_channels}]; got shape "
                     f"{tuple(series.shape)}")
  B, L, _ = series.shape
  if L == 0:
    raise ValueError(f"{where}: the series is empty (L = 0)")
  if whole_patch and isinstance(config, TimerConfig) and L < config.patch_len:
    raise ValueError(f"{where}: a window of {L} steps is shorter than one patch ({config.patch_len} steps), "
                     "fewer than one patch")
  mask = jnp.ones((B, L), bool) if mask is None else jnp.asarray(mask).astype(bool)
  if tuple(mask.shape) != (B, L):
    raise ValueError(f"{where}: mask has shape {tuple(mask.shape)}; expected [B, L] = {(B, L)}")
  return series, mask


def check_inputs(config: WaveNetConfig | TimerConfig, series, mask=None) -> None:
  """The boundary check a data pipeline (or generate) runs on concrete (numpy) inputs before encoding.

  Shapes as in `forward`, and the values: no NaN/inf at an observed step (mask missing steps out
  instead), and every series observed at least once (Timer: at least patch_len steps). Raises
  ValueError naming the sample and step. `forward` / `encode` check only shapes (they run under jit).
  """
  series = np.asarray(series)
  where = "timeseries.check_inputs"
  x, _ = _as_3d(config, series, None if mask is None else np.asarray(mask), where)
  x = np.asarray(x)
  m = np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask).astype(bool)
  bad = ~np.isfinite(x).all(-1) & m
  if bad.any():
    b, t = map(int, np.argwhere(bad)[0])
    raise ValueError(f"{where}: sample {b} has a non-finite value (NaN or inf) at step {t} "
                     f"({int(bad.sum())} such steps in the batch); mask missing steps out instead")
  count = m.sum(-1)
  need = config.patch_len if isinstance(config, TimerConfig) else 1
  if count.min() < need:
    b = int(np.argmin(count))
    what = f"one patch ({need} steps)" if need > 1 else "one step"
    raise ValueError(f"{where}: sample {b} has {int(count[b])} observed steps, fewer than {what}")


def forward(config: WaveNetConfig | TimerConfig, params: Mapping, series, mask=None, *, stats=None,
            normalize: bool = True):
  """Encodes a batch of series.

  Args:
    config: WaveNetConfig or TimerConfig (static under jit: `jax.jit(forward, static_argnums=0)`).
    params: `init_params` output (or trained params).
    series: float[B, L] or float[B, L, V].
    mask: bool[B, L] True at observed steps, or None (all observed). Values (NaN at observed steps,
      too few observed steps) are checked by `check_inputs`, not here.
    stats: RevINStats to normalise with (e.g. from an earlier call), or None to compute them here.
    normalize: False skips RevIN (the series is used as it is; stats is returned unchanged).
  Returns:
    (features float[B, L', C], out_mask bool[B, L'], stats): WaveNet L' = L, out_mask = mask;
    Timer L' = ceil(L / patch_len), out_mask = the patch mask. Masked outputs are 0.
  """
  series, mask = _as_3d(config, series, mask, "timeseries.forward")
  model = _model(config)
  if isinstance(config, WaveNetConfig):
    out, stats = model.apply({"params": params}, series, mask, stats, normalize)
    return out, mask, stats
  return model.apply({"params": params}, series, mask, stats, normalize)


def encode(config: WaveNetConfig | TimerConfig, params: Mapping, series, mask=None, *, stats=None,
           normalize: bool = True):
  """The encoder interface shared by every encoder module: `forward` without the RevIN statistics ->
  (features float[N, L', C], mask bool[N, L']). Real steps / patches are where the mask is True (a
  prefix when the series' padding is on the right)."""
  feats, out_mask, _ = forward(config, params, series, mask, stats=stats, normalize=normalize)
  return feats, out_mask


def num_tokens(config: WaveNetConfig | TimerConfig, n: int, *, stats=None, normalize: bool = True) -> int:
  """Features of one series of n observed steps: WaveNet n, Timer ceil(n / patch_len)."""
  del stats, normalize
  if isinstance(config, TimerConfig):
    return -(-int(n) // config.patch_len)
  if isinstance(config, WaveNetConfig):
    return int(n)
  raise TypeError(f"expected a WaveNetConfig or TimerConfig, got {type(config).__name__}")


def normalize(config: WaveNetConfig | TimerConfig, params: Mapping, series, mask=None):
  """The encoder's RevIN alone: (x̂ float32[B, L, V], RevINStats), affine included."""
  series, mask = _as_3d(config, series, mask, "timeseries.normalize", whole_patch=False)
  revin = RevIN(config.revin_affine, num_vars=config.in_channels)
  return revin.apply({"params": params.get("revin", {})}, series, mask)


def denormalize(config: WaveNetConfig | TimerConfig, params: Mapping, y, stats: RevINStats):
  """Maps a forecast y float[B, H, V] (or [B, H]) made in normalised units back to the series' units."""
  squeeze = y.ndim == 2
  y = y[..., None] if squeeze else y
  revin = RevIN(config.revin_affine, num_vars=config.in_channels)
  out = revin.apply({"params": params.get("revin", {})}, y, stats, method=RevIN.inverse)
  return out[..., 0] if squeeze else out
