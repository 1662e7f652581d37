"""ModRWKV: modality encoders → compressor → adapter → tokens spliced into RWKV-7's input (docs/architecture.md).

    items (image / audio / series)  --encoder (frozen unless configured)-->  float[N, L, C_enc]
      --projector (Conv1d compressor, adapter)-->  float32[N, L', D]
      --splice at the positions the batch names-->  float[B, T, D]  --ln0, RWKV-7 blocks-->  logits

Batches (numpy or jax dicts, built by `modrwkv_jax.data`) follow one schema; for a modality m in
{"image", "audio", "series"} that the config enables:

    tokens   int32[B, T]   text ids (0 at modality and padding positions)
    labels   int32[B, T]   target at position t (the next token) or −100 (ignored)
    mask     bool[B, T]    True at real positions
    m        float[B, I, ...]       the items' encoder inputs (pixels, log-mel / waveform, series)
    m_mask   bool[B, I, ...]        optional input mask (audio frames/samples, series steps)
    m_pos    int32[B, T]   at a modality position, i·L_m + j for the j-th token of item i, −1 elsewhere;
                           L_m = the most real tokens of any item of m in the batch (at least 1)
    image_spatial_shapes   int32[B, I, 2] (SigLIP2 NaFlex only; image is then [B, I, N, p·p·3]
                           and image_mask bool[B, I, N] marks the real patches)

Both layouts of the paper are just different `m_pos` maps: prefix (all modality tokens, then the
text — the paper's format) and placeholder (tokens where the text said <image>/<audio>/<series>).
Params: {"rwkv": ..., "encoders": {m: ...}, "projectors": {m: ...}}.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from modrwkv_jax import peft, sharding
from modrwkv_jax.models import projector as proj
from modrwkv_jax.models import rwkv7
from modrwkv_jax.models.encoders import clip, siglip, timeseries, wavlm, whisper

MODALITIES = ("image", "audio", "series")
IGNORE = -100
# encoder kind -> (module, modality)
ENCODERS = {"siglip": (siglip, "image"), "clip": (clip, "image"), "whisper": (whisper, "audio"),
            "wavlm": (wavlm, "audio"), "wavenet": (timeseries, "series"), "timer": (timeseries, "series")}


@dataclasses.dataclass(frozen=True)
class ModalityConfig:
  """One modality: its encoder (kind + the encoder's own config) and its projector.

  encoder_options: extra keyword arguments of the encoder's forward, as a tuple of pairs
    (e.g. (("mode", "real_length"),) for Whisper, (("layer", -2),) for CLIP).
  train_encoder: False (the paper) stops gradients at the encoder output.
  """
  encoder: str
  encoder_config: Any
  projector: proj.ProjectorConfig
  encoder_options: tuple = ()
  train_encoder: bool = False

  def __post_init__(self):
    if self.encoder not in ENCODERS:
      raise ValueError(f"ModalityConfig: unknown encoder {self.encoder!r}; known: {sorted(ENCODERS)}")


@dataclasses.dataclass(frozen=True)
class ModRWKVConfig:
  """rwkv: the language model; modalities: ((name, ModalityConfig), ...) with names from MODALITIES;
  max_length: the longest input sequence (text + modality tokens) accepted;
  forecast_horizon: > 0 adds the time-series forecasting head (see `forecast`), 0 = text answers only."""
  rwkv: rwkv7.RWKV7Config
  modalities: tuple[tuple[str, ModalityConfig], ...] = ()
  max_length: int = 4096
  forecast_horizon: int = 0

  def __post_init__(self):
    for name, m in self.modalities:
      if name not in MODALITIES:
        raise ValueError(f"ModRWKVConfig: modality {name!r} is not one of {MODALITIES}")
      if ENCODERS[m.encoder][1] != name:
        raise ValueError(f"ModRWKVConfig: encoder {m.encoder!r} encodes {ENCODERS[m.encoder][1]}, not {name}")
      if m.projector.out_features != self.rwkv.n_embd:
        raise ValueError(f"ModRWKVConfig: the {name} projector outputs {m.projector.out_features} features; "
                         f"the RWKV-7 embedding width is {self.rwkv.n_embd}")

  def modality(self, name: str) -> ModalityConfig:
    for n, m in self.modalities:
      if n == name:
        return m
    raise ValueError(f"ModRWKV: no encoder is configured for modality {name!r}; configured: "
                     f"{[n for n, _ in self.modalities] or 'none'}")


# ---------------------------------------------------------------------------------------------
# Encoding items.

def _run_encoder(m: ModalityConfig, params, inputs, mask, spatial_shapes=None):
  """The encoder's `encode` (one interface for every encoder): (features float[N, L, C], mask bool[N, L])."""
  module, _ = ENCODERS[m.encoder]
  opts = dict(m.encoder_options)
  if spatial_shapes is not None:  # SigLIP2 NaFlex: patches + patch mask + grid shapes
    opts["spatial_shapes"] = spatial_shapes
  return module.encode(m.encoder_config, params, inputs, mask, **opts)


def check_items(config: ModRWKVConfig, name: str, inputs, mask=None, spatial_shapes=None) -> None:
  """The boundary check of concrete (numpy) items of modality `name` before they are encoded: the
  encoder's own `check_inputs` (shapes and values; raises ValueError naming what is wrong). The jitted
  `encode_items` does no value checks."""
  m = config.modality(name)
  check = ENCODERS[m.encoder][0].check_inputs
  accepted = inspect.signature(check).parameters
  opts = {k: v for k, v in m.encoder_options if k in accepted}
  if spatial_shapes is not None:
    opts["spatial_shapes"] = np.asarray(spatial_shapes)
  check(m.encoder_config, np.asarray(inputs), None if mask is None else np.asarray(mask), **opts)


def encode_items(config: ModRWKVConfig, params: Mapping, name: str, inputs, mask=None, spatial_shapes=None):
  """Encodes a flat batch of items of one modality into RWKV embedding tokens.

  Args:
    inputs: float[N, ...] encoder inputs (pixels [N, H, W, 3]; log-mel [N, F, n_mels] or samples
      [N, S]; series [N, L] or [N, L, V]).
    mask: bool[N, ...] input mask (audio, series, NaFlex patches) or None.
    spatial_shapes: int[N, 2] patch grids of SigLIP2 NaFlex images, else None.
  Returns:
    (tokens float32[N, L', D], token_mask bool[N, L']) — real tokens first in each row.
  """
  m = config.modality(name)
  feats, fmask = _run_encoder(m, params["encoders"][name], inputs, mask, spatial_shapes)
  if not m.train_encoder:
    feats = jax.lax.stop_gradient(feats)
  return proj.forward(m.projector, params["projectors"][name], feats, fmask)


def capacity(config: ModRWKVConfig, name: str, item_shape: tuple[int, ...]) -> int:
  """L'_m: tokens per item (padding included) for items of `item_shape` (without the batch axis)."""
  x = jax.ShapeDtypeStruct((1, *item_shape), jnp.float32)
  mask = None if name == "image" else jax.ShapeDtypeStruct((1, *item_shape[:1]), jnp.bool_)
  abstract = jax.eval_shape(lambda p, x, mk: encode_items(config, p, name, x, mk),
                            abstract_params(config), x, mask)
  return int(abstract[0].shape[1])


def num_tokens(config: ModRWKVConfig, name: str, input_length: int) -> int:
  """Real tokens of one item with `input_length` real input steps (mel frames, samples or series steps;
  images ignore it). `pipeline_num_tokens` wraps this for the data pipeline."""
  m = config.modality(name)
  module, _ = ENCODERS[m.encoder]
  return m.projector.output_length(module.num_tokens(m.encoder_config, input_length, **dict(m.encoder_options)))


def pipeline_num_tokens(config: ModRWKVConfig, name: str, hop_length: int = 160):
  """The `num_tokens(n)` callable of `data.transforms` for modality `name`, whose n is the data layer's
  measure of an item: pixels (images: ignored, fixed count), 16 kHz samples (audio; Whisper frames
  are ⌈n / hop⌉ since frame t is real iff t·hop < n), steps (series)."""
  m = config.modality(name)
  if m.encoder == "whisper":
    return lambda n: num_tokens(config, name, -(-int(n) // hop_length))
  return lambda n: num_tokens(config, name, int(n))


# ---------------------------------------------------------------------------------------------
# The model.

def embed_inputs(config: ModRWKVConfig, params: Mapping, batch: Mapping):
  """Builds the input embedding sequence: text embeddings with modality tokens spliced in.

  Returns:
    (embeddings float32[B, T, D], mask bool[B, T], positions {m: int32[B, T]}).
  """
  tokens = jnp.asarray(batch["tokens"], jnp.int32)
  B, T = tokens.shape
  if T > config.max_length:
    raise ValueError(f"ModRWKV: the sequence has {T} positions; max_length is {config.max_length}")
  x = rwkv7.embed(config.rwkv, params["rwkv"], tokens).astype(jnp.float32)
  positions = {}
  for name, _ in config.modalities:
    if f"{name}_pos" not in batch:
      continue
    pos = jnp.asarray(batch[f"{name}_pos"], jnp.int32)
    items = jnp.asarray(batch[name])
    I = items.shape[1]
    flat = items.reshape(B * I, *items.shape[2:])
    mask = batch.get(f"{name}_mask")
    if mask is not None:
      mask = jnp.asarray(mask, bool).reshape(B * I, *mask.shape[2:])
    shapes = batch.get(f"{name}_spatial_shapes")
    if shapes is not None:
      shapes = jnp.asarray(shapes, jnp.int32).reshape(B * I, 2)
    tok, tok_mask = encode_items(config, params, name, flat, mask, shapes)
    L = tok.shape[1]
    tok = tok.reshape(B, I * L, tok.shape[-1])
    # pos = i·L_m + j with L_m the most real tokens of any item (the data layer's convention);
    # our rows hold L >= L_m slots per item, so re-index to i·L + j.
    L_m = jnp.maximum(tok_mask.sum(-1).max(), 1)
    index = jnp.where(pos >= 0, (pos // L_m) * L + pos % L_m, 0)
    picked = jnp.take_along_axis(tok, jnp.clip(index, 0, I * L - 1)[..., None], axis=1)
    x = jnp.where((pos >= 0)[..., None], picked, x)
    positions[name] = pos
  mask = jnp.asarray(batch["mask"], bool) if "mask" in batch else jnp.ones((B, T), bool)
  return x, mask, positions


def forward(config: ModRWKVConfig, params: Mapping, batch: Mapping, state: rwkv7.RWKV7State | None = None):
  """(logits float32[B, T, V], RWKV7State) of a batch; ln0 applies to modality tokens too (paper).

  A packed batch carries `segment_ids` int32[B, T] (examples 1, 2, ... per row, 0 at padding): each
  example then runs as if alone (token shift and WKV state restart; see `rwkv7.forward`)."""
  x, mask, _ = embed_inputs(config, params, batch)
  return rwkv7.forward(config.rwkv, params["rwkv"], state=state, embeddings=x, mask=mask,
                       segment_ids=batch.get("segment_ids"))


def hidden_states(config: ModRWKVConfig, params: Mapping, batch: Mapping):
  """The final hidden states (after ln_out) of a batch: float32[B, T, D]. One pass serves both the
  language-model loss (`loss_terms`) and the forecasting head (`forecast`)."""
  x, mask, _ = embed_inputs(config, params, batch)
  hidden, _ = rwkv7.forward(config.rwkv, params["rwkv"], embeddings=x, mask=mask, hidden=True,
                            segment_ids=batch.get("segment_ids"))
  return hidden


def _label_nll(config: ModRWKVConfig, params: Mapping, hidden, labels):
  """hidden float32[..., D], labels int32[...] -> (nll float32[...] (0 where ignored), argmax hit bool[...])."""
  logits = rwkv7.head(config.rwkv, params["rwkv"], hidden)
  valid = labels >= 0
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.minimum(safe, logp.shape[-1] - 1)[..., None], axis=-1)[..., 0]
  nll = jnp.where(safe >= logp.shape[-1], jnp.nan, nll)
  return jnp.where(valid, nll, 0.0), valid & (jnp.argmax(logits, -1) == safe)


def loss_terms(config: ModRWKVConfig, params: Mapping, batch: Mapping, *, hidden=None, label_capacity: int = 0):
  """Summed cross-entropy over label positions and their count: the terms that gradient accumulation
  and multi-host averaging add up before dividing once.

  Labels: every negative label is ignored (−100 by our convention; other codebases' −1 too, so it is
  never trained as a target); a label >= V makes its nll NaN (the loss is NaN, loudly: the data do not
  belong to this vocabulary).

  hidden: float32[B, T, D] from `hidden_states` when the caller already has them (else computed here).
  label_capacity: 0 computes the V-word head at every position. K > 0 computes it only at each row's
    first K label positions, [B, K] instead of [B, T] (the head and softmax dominate a small model's step:
    SFT labels only the answers). Exact when no row has more than K labels; a label beyond a row's K-th
    is left out of nll_sum and counted in aux["over_capacity"] (n_tokens still counts it). The trainer
    checks every batch on the host before the step (`check_label_capacity`), so a run never trains on
    a truncated loss.
  Returns:
    (nll_sum float32[], n_tokens int32[], aux {"correct": int32[] argmax hits, "over_capacity": int32[]}).
  """
  if hidden is None:
    hidden = hidden_states(config, params, batch)
  labels = jnp.asarray(batch["labels"], jnp.int32)
  valid = labels >= 0
  T = labels.shape[1]

  over = jnp.zeros((), jnp.int32)
  if 0 < label_capacity < T:
    # Each row's label positions first, in order (a stable sort of "not a label"), then the first K.
    order = jnp.argsort(~valid, axis=1, stable=True)[:, :label_capacity]
    hidden = jnp.take_along_axis(hidden, order[..., None], axis=1)
    labels = jnp.take_along_axis(labels, order, axis=1)
    over = jnp.maximum(valid.sum(axis=1) - label_capacity, 0).sum().astype(jnp.int32)
  nll, hit = _label_nll(config, params, hidden, labels)
  nll_sum, correct = nll.sum(), hit.sum().astype(jnp.int32)
  return nll_sum, valid.sum().astype(jnp.int32), {"correct": correct, "over_capacity": over}


def check_label_capacity(labels, label_capacity: int, where: str = "batch") -> None:
  """Raises ValueError when a row of concrete labels int[B, T] has more than `label_capacity` labels (>= 0);
  0 means no capacity. `loss_terms(label_capacity=K)` is exact only below the bound."""
  if label_capacity <= 0:
    return
  per_row = (np.asarray(labels) >= 0).sum(axis=-1)
  if per_row.size and int(per_row.max()) > label_capacity:
    raise ValueError(f"{where}: a row has {int(per_row.max())} label tokens; train.label_capacity is "
                     f"{label_capacity} (raise it, or set 0 to compute the head at every position)")


def loss(config: ModRWKVConfig, params: Mapping, batch: Mapping):
  """Token-mean cross-entropy over label positions (labels >= 0): `loss_terms` sum / count.

  Returns:
    (loss float32[], {"loss", "accuracy", "tokens"}) — with no label in the batch the loss is 0.
  """
  nll_sum, count, aux = loss_terms(config, params, batch)
  denom = jnp.maximum(count, 1)
  value = nll_sum / denom
  return value, {"loss": value, "accuracy": aux["correct"] / denom, "tokens": count}


# ---------------------------------------------------------------------------------------------
# Time-series forecasting head (the alternative to answering with digits as text).
#
# Choice: the head predicts the horizon in the series' own RevIN units, (y − mean)/std with the
# statistics of the observed context (no learnt affine), and the loss is the MSE there. Normalised
# MSE is scale-free, so series of very different magnitudes (CO₂ ppm, sunspot counts) weigh the
# same, and it is the metric the forecasting literature reports; `forecast` also returns the
# de-normalised prediction (pred·std + mean) for plotting and for MSE in the original units.

def _series_stats(batch):
  """RevIN statistics of each example's first series item: mean, std float32[B, 1] (context only)."""
  series = jnp.asarray(batch["series"], jnp.float32)[:, 0]
  if series.ndim == 3:
    raise ValueError("forecast: multivariate series need a per-variable head; give one variable per item")
  mask = batch.get("series_mask")
  mask = jnp.ones(series.shape, bool) if mask is None else jnp.asarray(mask, bool)[:, 0]
  _, stats = timeseries.revin_normalize(series[..., None], mask)
  return stats.mean[..., 0], stats.std[..., 0]


def forecast(config: ModRWKVConfig, params: Mapping, batch: Mapping, *, hidden=None):
  """Forecasts the horizon from the final hidden state at each example's last real position.

  hidden: float32[B, T, D] from `hidden_states` when the caller already has them (else computed here).

  Returns:
    (normalised prediction float32[B, horizon], prediction in the series' units float32[B, horizon]).
  """
  if not config.forecast_horizon:
    raise ValueError("forecast: this ModRWKVConfig has forecast_horizon = 0 (no forecasting head)")
  if hidden is None:
    hidden = hidden_states(config, params, batch)
  mask = jnp.asarray(batch["mask"], bool) if "mask" in batch else jnp.ones(hidden.shape[:2], bool)
  last = jnp.max(jnp.where(mask, jnp.arange(mask.shape[1])[None], -1), axis=1)
  h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  head = params["forecast_head"]
  pred = h @ head["kernel"] + head["bias"]
  mean, std = _series_stats(batch)
  return pred, pred * std + mean


def forecast_target_mask(batch: Mapping):
  """bool[B, horizon]: the target values that count (`target_mask` of each example's first series item, on
  rows that hold a series); known before any forward pass, so accumulation can count them up front."""
  target = batch["target"]
  valid = jnp.ones((target.shape[0], target.shape[2]), bool)
  if "target_mask" in batch:
    valid = jnp.asarray(batch["target_mask"], bool)[:, 0]
  if "series_count" in batch:
    valid = valid & (jnp.asarray(batch["series_count"])[:, None] > 0)
  return valid


def forecast_loss_terms(config: ModRWKVConfig, params: Mapping, batch: Mapping, *, hidden=None):
  """Summed squared error (RevIN units) over the real target values and their count: the terms that
  gradient accumulation and multi-host averaging add up before dividing once.

  Only rows that hold a series (`series_count` > 0) and target steps marked by `target_mask` count: a
  mixed batch (images, audio, series) or a padding row contributes nothing, and a batch without series
  gives (0, 0).
  Returns:
    (se_sum float32[], n_values int32[], aux {"se_units": float32[] squared error in the series' units,
     "ae_units": float32[] absolute error in the series' units}).
  """
  pred, pred_units = forecast(config, params, batch, hidden=hidden)
  target = jnp.asarray(batch["target"], jnp.float32)[:, 0]
  if target.shape[-1] != config.forecast_horizon:
    raise ValueError(f"forecast: the batch's targets have {target.shape[-1]} steps; forecast_horizon is "
                     f"{config.forecast_horizon} (set data.series.horizon / the source's horizon to match)")
  valid = forecast_target_mask(batch)
  mean, std = _series_stats(batch)
  se = jnp.where(valid, jnp.square(pred - (target - mean) / std), 0.0).sum()
  se_units = jnp.where(valid, jnp.square(pred_units - target), 0.0).sum()
  ae_units = jnp.where(valid, jnp.abs(pred_units - target), 0.0).sum()
  return se, valid.sum().astype(jnp.int32), {"se_units": se_units, "ae_units": ae_units}


def forecast_loss(config: ModRWKVConfig, params: Mapping, batch: Mapping):
  """MSE in RevIN units against batch["target"] float[B, S, horizon] (first item), over the real target
  values only (`forecast_loss_terms`); also the MSE and MAE in the series' units. With no target value in
  the batch the loss is 0. Returns (loss, metrics)."""
  se, n, aux = forecast_loss_terms(config, params, batch)
  denom = jnp.maximum(n, 1)
  value = se / denom
  return value, {"loss": value, "mse": aux["se_units"] / denom, "mae": aux["ae_units"] / denom, "values": n}


# ---------------------------------------------------------------------------------------------
# Parameters and checkpoints.

def _encoder_module(m: ModalityConfig):
  return ENCODERS[m.encoder][0]


def _forecast_head_init(config: ModRWKVConfig, key) -> dict:
  D, H = config.rwkv.n_embd, config.forecast_horizon
  return {"kernel": jax.random.normal(key, (D, H), jnp.float32) / np.sqrt(D), "bias": jnp.zeros((H,), jnp.float32)}


FORECAST_HEAD_AXES = {"kernel": P("embed", "horizon"), "bias": P("horizon")}


def _init_all(config: ModRWKVConfig, key: jax.Array, peft_config=None, skip=()) -> dict:
  """Every fresh part; the parts named in `skip` ("rwkv", "encoders/<m>", "projectors") are left out."""
  k_rwkv, k_enc, k_proj, k_peft = jax.random.split(key, 4)
  params: dict = {"encoders": {}, "projectors": {}}
  if "rwkv" not in skip:
    params["rwkv"] = nn.meta.unbox(rwkv7._init_boxed(config.rwkv, k_rwkv))
  for i, (name, m) in enumerate(config.modalities):
    if f"encoders/{name}" not in skip:
      params["encoders"][name] = _encoder_module(m).init_params(m.encoder_config, jax.random.fold_in(k_enc, i))
    if "projectors" not in skip:
      params["projectors"][name] = proj.init_params(m.projector, jax.random.fold_in(k_proj, i))
  if config.forecast_horizon and "projectors" not in skip:
    params["forecast_head"] = _forecast_head_init(config, jax.random.fold_in(k_proj, 99))
  if peft_config is not None and "rwkv" in params:
    params["rwkv"], _ = peft.add_adapters(params["rwkv"], peft_config, k_peft)
  return params


@functools.lru_cache(maxsize=16)
def _abstract_all(config: ModRWKVConfig, peft_config, skip: tuple[str, ...]) -> dict:
  """jax.ShapeDtypeStruct of every leaf of `_init_all(config, key, peft_config, skip)`: one trace of the
  init per arguments, however often a setup asks (every argument positional: lru_cache keys on the call's
  form). Callers copy before handing a tree out."""
  return jax.eval_shape(lambda k: _init_all(config, k, peft_config, skip), jax.random.key(0))


def param_logical_axes(config: ModRWKVConfig, peft_config=None) -> dict:
  """The logical axis names (PartitionSpecs of names from `modrwkv_jax.sharding`) of every leaf of
  `init_params(config, key, peft_config)`: RWKV-7, each encoder, each projector, the forecasting
  head and the PEFT adapters."""
  rwkv_axes = rwkv7.param_logical_axes(config.rwkv)
  if peft_config is not None:
    rwkv_axes = peft.logical_axes(_abstract_all(config, peft_config, ())["rwkv"], rwkv_axes)
  axes = {"rwkv": rwkv_axes, "encoders": {}, "projectors": {}}
  for name, m in config.modalities:
    axes["encoders"][name] = _encoder_module(m).param_logical_axes(m.encoder_config)
    axes["projectors"][name] = proj.param_logical_axes(m.projector)
  if config.forecast_horizon:
    axes["forecast_head"] = dict(FORECAST_HEAD_AXES)
  return axes


def abstract_params(config: ModRWKVConfig, peft_config=None, *, mesh=None):
  """jax.ShapeDtypeStruct of every leaf of `init_params(config, key, peft_config)` (with its sharding
  on `mesh` when given), computing nothing."""
  shapes = jax.tree.map(lambda s: s, _abstract_all(config, peft_config, ()))  # a copy of the cached tree
  if mesh is None:
    return shapes
  shardings = sharding.logical_to_mesh(param_logical_axes(config, peft_config), mesh)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def _like(full: Mapping, like: Mapping) -> dict:
  """The subtree of `full` with the (nested) keys of `like`."""
  return {k: _like(full[k], v) if isinstance(v, Mapping) else full[k] for k, v in like.items()}


def _init_fresh(config: ModRWKVConfig, key: jax.Array, peft_config, skip, mesh) -> dict:
  """`_init_all` in one jit; with `mesh`, straight into the shardings of the parts it creates."""
  fn = lambda k: _init_all(config, k, peft_config, skip)
  if mesh is None:
    return jax.jit(fn)(key)
  axes = _like(param_logical_axes(config, peft_config), _abstract_all(config, peft_config, skip))
  return jax.jit(fn, out_shardings=sharding.logical_to_mesh(axes, mesh))(key)


def init_params(config: ModRWKVConfig, key: jax.Array, peft_config=None, *, mesh=None,
                encoder_params: Mapping | None = None, rwkv_params: Mapping | None = None) -> dict:
  """Fresh parameters: RWKV-7 (RWKV-LM init), encoders, projectors, forecasting head and, with
  `peft_config`, PEFT adapters on RWKV-7.

  mesh: initialise every leaf directly in its sharding (one jit with out_shardings): the full
    weights never sit on one device.
  encoder_params / rwkv_params: pretrained parts to use instead of fresh ones (they are not
    initialised at all; adapters from `peft_config` are added to rwkv_params).
  """
  encoder_params = dict(encoder_params or {})
  skip = tuple(f"encoders/{n}" for n in encoder_params) + (("rwkv",) if rwkv_params is not None else ())
  params = _init_fresh(config, key, peft_config, skip, mesh)
  params["encoders"].update(encoder_params)
  if rwkv_params is not None:
    rwkv = rwkv_params
    if peft_config is not None:
      rwkv, _ = peft.add_adapters(rwkv, peft_config, jax.random.fold_in(key, 7))
    params["rwkv"] = rwkv
  return {"rwkv": params.pop("rwkv"), **params}


TRAINED_PARTS = ("projectors", "forecast_head")  # what ModRWKV trains on top of pretrained weights


def _trained(tree: Mapping) -> dict:
  return {k: tree[k] for k in TRAINED_PARTS if k in tree}


def _path_name(kp) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in kp)


def save_projectors(params: Mapping, path: str | os.PathLike) -> None:
  """Writes the trained parts (projectors, forecasting head) of `params` to `path`, a small .npz with
  '/'-joined names (the path comes last, as in every writer of the project: `rwkv7.save_pth(config,
  params, path)`, `worldrwkv.save_worldrwkv(config, params, path)`)."""
  if isinstance(params, (str, os.PathLike)) and isinstance(path, Mapping):
    raise TypeError("save_projectors(params, path): the path comes last (the order changed from (path, params))")
  np.savez(path, **{_path_name(kp): np.asarray(v) for kp, v in jax.tree_util.tree_leaves_with_path(_trained(params))})


def load_projectors(path: str | os.PathLike, config: ModRWKVConfig) -> dict:
  """Reads `save_projectors` output as {"projectors": ..., ["forecast_head": ...]}, checking every name
  and shape against `config`."""
  path = os.fspath(path)
  with np.load(path) as f:
    stored = {k: f[k] for k in f.files}
  out = {}
  for kp, leaf in jax.tree_util.tree_leaves_with_path(_trained(abstract_params(config))):
    name = _path_name(kp)
    if name not in stored:
      raise KeyError(f"{path}: missing tensor {name!r}; was it saved for another ModRWKV config?")
    if stored[name].shape != leaf.shape:
      raise ValueError(f"{path}: tensor {name!r} has shape {stored[name].shape}; this config expects {leaf.shape}")
    node = out
    keys = name.split("/")
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = jnp.asarray(stored.pop(name))
  if stored:
    raise ValueError(f"{path}: unexpected tensors {sorted(stored)[:5]} for this config")
  return out


def load(config: ModRWKVConfig, rwkv_path: str | os.PathLike | None, encoder_paths: Mapping[str, str] | None = None,
         projector_path: str | os.PathLike | None = None, *, key: jax.Array | None = None, mesh=None) -> dict:
  """Assembles params from files, initialising only what no file provides.

  RWKV-7 from an official `.pth` (checked against config.rwkv, in its layout; None: initialised), each encoder from its
  HF snapshot folder (`load_hf`, checked against the configured encoder), projectors and the
  forecasting head from `save_projectors` output. Parts without a file (encoders not in
  `encoder_paths`, projectors without `projector_path`) are freshly initialised; nothing that is
  loaded is initialised first. With `mesh`, every leaf is placed on its sharding.
  """
  params = {"encoders": {}, "projectors": {}}
  if rwkv_path is not None:
    params["rwkv"] = rwkv7.load_pth(rwkv_path, config.rwkv, mesh=mesh)[1]
  for name, path in (encoder_paths or {}).items():
    m = config.modality(name)
    module = _encoder_module(m)
    # The configured compute dtype and layer layout apply to what the snapshot holds.
    opts = {k: getattr(m.encoder_config, k) for k in ("dtype", "scan_layers", "remat")
            if hasattr(m.encoder_config, k)}
    enc_config, enc_params = module.load_hf(path, mesh=mesh, **opts)
    if m.encoder_config is not None and enc_config != m.encoder_config:
      raise ValueError(f"{path}: the snapshot's {m.encoder} config {enc_config} differs from the configured one "
                       f"{m.encoder_config}")
    params["encoders"][name] = enc_params
  skip = (("rwkv",) if rwkv_path is not None else ()) + tuple(f"encoders/{n}" for n in params["encoders"])
  if projector_path is not None:
    skip += ("projectors",)
  fresh = _init_fresh(config, key if key is not None else jax.random.key(0), None, skip, mesh)
  params["encoders"].update(fresh["encoders"])
  if rwkv_path is None:
    params["rwkv"] = fresh["rwkv"]
  if projector_path is not None:
    params.update(load_projectors(projector_path, config))
  else:
    params.update({k: fresh[k] for k in TRAINED_PARTS if k in fresh})
  if mesh is not None:  # leaves already on their sharding stay where they are
    params = jax.device_put(params, sharding.logical_to_mesh(_like(param_logical_axes(config), params), mesh))
  return params
