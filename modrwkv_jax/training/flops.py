"""Model FLOPs of a training step, and MFU (model FLOPs utilisation).

Model FLOPs count the matrix products the model defines, 2 FLOPs per multiply-add, at the shapes the
step runs (padding included: the hardware computes it). Not counted: elementwise work (norms,
activations, gates, the softmax, the loss), gathers (the embedding lookup, the splice of modality
tokens), and recomputation (`remat`): MFU is about the model, not the implementation. The WKV-7
recurrence is counted by its definition (below), whichever implementation (scan, chunked, Pallas)
runs it. A convolution is counted over all its taps, those on zero padding included (XLA's own count
skips them: 1-2 % less for the causal WaveNet and the audio adapter at small lengths).

Every part's forward is split in two, because their backward differs:
  weight       products with a parameter operand (projections, convs, LoRA paths, the head): the
               activation gradient dX = dY·Wᵀ costs 1× forward, the weight gradient dW = Xᵀ·dY 1× more;
  interaction  products of two activations (attention scores and values, the WKV-7 recurrence):
               no weights, but both operands need a gradient: 2× forward, all activation gradient.
A training step (`step_flops`) runs every part forward. Backward through a part happens only where
autodiff needs it: the activation gradient (weight + 2·interaction) of every part between a trainable
part and the loss, and the weight gradient (1× weight) of trainable parts. A fully trained part
therefore costs 3× its forward; a frozen part downstream of a trainable one (phase I: RWKV-7 behind
trained projectors) ≈ 2×; a frozen part upstream of everything trainable (a frozen encoder) 1×.
The activation gradient of a trained part's own input is counted even when nothing before it trains
(the usual 6·N·tokens convention; one layer's dX, e.g. the patch embedding's, is overcounted).

Peak throughput (`peak_flops_per_device`) is a table of dense bf16 numbers from vendor specs; on the
CPU there is no spec, and `measure_cpu_matmul_flops` times a float32 matmul instead: MFU on CPU is
against the measured matmul throughput, an estimate.
"""

from __future__ import annotations

import math
import numbers
import re
import time
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from modrwkv_jax import peft
from modrwkv_jax.models import rwkv7
from modrwkv_jax.models.encoders import clip, siglip, timeseries, wavlm, whisper
from modrwkv_jax.models.projector import ProjectorConfig, conv_length


class PartFlops(NamedTuple):
  """Forward FLOPs of one part: `weight` (a parameter operand) and `interaction` (two activations)."""
  weight: float = 0.0
  interaction: float = 0.0

  @property
  def total(self) -> float:
    return self.weight + self.interaction

  def __add__(self, other: PartFlops) -> PartFlops:
    return PartFlops(self.weight + other.weight, self.interaction + other.interaction)

  def scale(self, factor: float) -> PartFlops:
    return PartFlops(self.weight * factor, self.interaction * factor)


def _dense(tokens: float, n_in: int, n_out: int) -> float:
  """A [tokens, in] @ [in, out] product: 2·tokens·in·out."""
  return 2.0 * tokens * n_in * n_out


# ---------------------------------------------------------------------------------------------
# RWKV-7.


def rwkv7_parts(config: rwkv7.RWKV7Config, tokens: int, *, head: bool = True) -> PartFlops:
  """RWKV-7 forward over `tokens` positions (B·T), split into weight and interaction FLOPs.

  Per token, with D = n_embd, N = head_size, F = dim_ffn, V = vocab_size:
    TimeMix        receptance, key, value, output: 4 · 2·D·D
                   decay LoRA D→dim_w→D, in-context-rate LoRA D→dim_a→D, gate LoRA D→dim_g→D:
                   2·(2·D·dim) each; value-residual LoRA D→dim_v→D in layers 1..L−1 only (layer 0 has
                   none; the scanned layout computes and discards one there, which is not model work)
    WKV-7          per head: aᵀS (N² multiply-adds), S += b (aᵀS)ᵀ (N²), S += k vᵀ (N²), the read
                   Sᵀr (N²): 4·N² multiply-adds = 8·N² FLOPs; H heads: 8·N·D. The decay diag(w)·S
                   (N² multiplies), the r·k bonus and the GroupNorm are elementwise, not counted.
    ChannelMix     key D→F, value F→D: 2 · 2·D·F
    head           2·D·V (with head=True)
  The embedding lookup is 0 FLOPs.
  """
  D, N, F, V = config.n_embd, config.head_size, config.dim_ffn, config.vocab_size
  lora = lambda dim: 2 * _dense(tokens, D, dim)  # D -> dim -> D
  weight = 0.0
  for layer in range(config.n_layer):
    weight += 4 * _dense(tokens, D, D)
    weight += lora(config.dim_w) + lora(config.dim_a) + lora(config.dim_g)
    if layer > 0:
      weight += lora(config.dim_v)
    weight += _dense(tokens, D, F) + _dense(tokens, F, D)
  if head:
    weight += _dense(tokens, D, V)
  interaction = config.n_layer * 8.0 * N * D * tokens
  return PartFlops(weight, interaction)


def rwkv7_forward_flops(config: rwkv7.RWKV7Config, tokens: int) -> float:
  """Forward FLOPs of RWKV-7 (head included) over `tokens` = B·T positions; see `rwkv7_parts`."""
  return rwkv7_parts(config, tokens).total


# ---------------------------------------------------------------------------------------------
# Encoders.


def _transformer_layers(items: int, length: int, width: int, mlp_dim: int, n_layers: int) -> PartFlops:
  """n_layers pre-LN blocks (transformer.EncoderLayer) over `items` sequences of `length` tokens.

  Per layer and sequence: q, k, v, out projections 4 · 2·L·C²; scores q kᵀ 2·L²·C and values
  weights·v 2·L²·C (the full L×L matrix, as computed: a causal mask does not halve it); MLP
  2 · 2·L·C·F.
  """
  tokens = items * length
  weight = 4 * _dense(tokens, width, width) + 2 * _dense(tokens, width, mlp_dim)
  interaction = 2 * 2.0 * items * length * length * width
  return PartFlops(weight, interaction).scale(n_layers)


def _conv(items: int, out_length: int, kernel: int, c_in_per_group: int, c_out: int) -> float:
  """A Conv1d: 2·out_length·kernel·(C_in/groups)·C_out per item."""
  return 2.0 * items * out_length * kernel * c_in_per_group * c_out


def _required(input_length, what: str) -> int:
  if input_length is None or int(input_length) <= 0:
    raise ValueError(f"encoder FLOPs: the input length ({what}) must be a positive int; got {input_length!r}")
  return int(input_length)


def _siglip(cfg: siglip.SiglipConfig, items: int, input_length) -> tuple[PartFlops, int]:
  """Patch embedding [p·p·3 → C] per patch; NaFlex also resizes the S×S position table to each grid, an
  [L, S²] @ [S², C] product per image. The pooling head (use_head) is not part of the features: 0."""
  C = cfg.hidden_size
  length = _required(input_length, "NaFlex patches") if cfg.naflex else cfg.num_positions
  embed = _dense(items * length, cfg.patch_dim, C)
  if cfg.naflex:
    embed += _dense(items * length, cfg.num_positions, C)
  layers = _transformer_layers(items, length, C, cfg.intermediate_size, cfg.num_layers)
  return PartFlops(embed) + layers, length


def _clip(cfg: clip.CLIPConfig, items: int, options: Mapping) -> tuple[PartFlops, int]:
  """Patch embedding (no bias) per patch, then the layers up to the one `encoder_options` asks for
  (layer=-1: all; -2: all but the last) over 1 + P tokens; drop_cls drops a row afterwards."""
  C, P = cfg.hidden_size, cfg.num_patches
  layer = options.get("layer", -1)
  depth = layer + cfg.num_layers + 1 if layer < 0 else layer  # HF hidden_states indexing, as clip.forward
  if not 0 <= depth <= cfg.num_layers:
    raise ValueError(f"encoder FLOPs: clip layer={layer} is outside the {cfg.num_layers + 1} hidden states")
  embed = _dense(items * P, cfg.patch_size * cfg.patch_size * cfg.num_channels, C)
  layers = _transformer_layers(items, 1 + P, C, cfg.intermediate_size, depth)
  return PartFlops(embed) + layers, P + (0 if options.get("drop_cls", False) else 1)


def _whisper(cfg: whisper.WhisperConfig, items: int, input_length) -> tuple[PartFlops, int]:
  """conv1 (n_mels → C, k3, stride 1) over T frames, conv2 (C → C, k3, stride 2) over T' = ⌈T/2⌉,
  the layers over T'. input_length = T mel frames (None: the 30 s window, 2·max_source_positions)."""
  T = cfg.n_frames if input_length is None else _required(input_length, "mel frames")
  C = cfg.d_model
  T2 = conv_length(T, 3, 2, 1)
  convs = _conv(items, T, 3, cfg.num_mel_bins, C) + _conv(items, T2, 3, C, C)
  layers = _transformer_layers(items, T2, C, cfg.encoder_ffn_dim, cfg.encoder_layers)
  return PartFlops(convs) + layers, T2


def _wavlm(cfg: wavlm.WavLMConfig, items: int, input_length) -> tuple[PartFlops, int]:
  """Feature-extractor convs over the waveform, the projection conv_dim[-1] → C, the grouped
  positional conv (K taps, C/G inputs per output, T + 1 outputs for even K before the last is dropped),
  and per layer: q, k, v, out 4·2·T·C², the gate Linear(N → 8) per head 2·T·C·8, scores and values
  2·2·T²·C, MLP 2·2·T·C·F. The gate × relative-bias product (T²·H multiplies, no sum) is elementwise."""
  n = _required(input_length, "samples")
  convs, c_in = 0.0, 1
  for c_out, k, s in zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride):
    n = conv_length(n, k, s)
    convs += _conv(items, n, k, c_in, c_out)
    c_in = c_out
  T, C, K, G = n, cfg.hidden_size, cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups
  weight = convs + _dense(items * T, cfg.conv_dim[-1], C)
  weight += _conv(items, conv_length(T, K, 1, K // 2), K, C // G, C)
  gates = cfg.num_hidden_layers * _dense(items * T, C, 8)
  layers = _transformer_layers(items, T, C, cfg.intermediate_size, cfg.num_hidden_layers)
  return PartFlops(weight + gates) + layers, T


def _wavenet(cfg: timeseries.WaveNetConfig, items: int, input_length) -> tuple[PartFlops, int]:
  """Input embedding V → R, then per block the dilated conv R → 2R (K taps), residual R → R and skip
  R → S (1×1), then the output 1×1 convs S → C → C; every conv over all L steps."""
  L = _required(input_length, "series steps")
  R, S, C, K = cfg.residual_channels, cfg.skip_channels, cfg.out_channels, cfg.kernel_size
  tokens = items * L
  block = K * _dense(tokens, R, 2 * R) + _dense(tokens, R, R) + _dense(tokens, R, S)
  blocks = cfg.num_stacks * len(cfg.dilations)
  weight = _dense(tokens, cfg.in_channels, R) + blocks * block + _dense(tokens, S, C) + _dense(tokens, C, C)
  return PartFlops(weight), L


def _timer(cfg: timeseries.TimerConfig, items: int, input_length) -> tuple[PartFlops, int]:
  """Patch embedding P·V → C over N = ⌈L/P⌉ patches, then the causal layers over N tokens."""
  L = _required(input_length, "series steps")
  N = -(-L // cfg.patch_len)
  embed = _dense(items * N, cfg.patch_len * cfg.in_channels, cfg.width)
  return PartFlops(embed) + _transformer_layers(items, N, cfg.width, cfg.mlp_dim, cfg.num_layers), N


def encoder_parts(modality_config, items: int, input_length: int | None = None) -> tuple[PartFlops, int]:
  """Forward FLOPs of one modality's encoder over `items` items, and its output length per item.

  Args:
    modality_config: modrwkv.ModalityConfig (its `encoder` kind, `encoder_config`, `encoder_options`).
    items: N, the items encoded in one call (B · items per row).
    input_length: the item's length along the encoder input's sequence axis, padding included:
      siglip NaFlex patches, whisper mel frames (None: the 30 s window), wavlm samples, series
      steps; fixed-resolution siglip and clip ignore it (the patch count follows from image_size).
  Returns:
    (PartFlops, L): L the encoder's output tokens per item (padding included), the projector's input.
  """
  kind, cfg = modality_config.encoder, modality_config.encoder_config
  options = dict(modality_config.encoder_options)
  if kind == "siglip":
    return _siglip(cfg, items, input_length)
  if kind == "clip":
    return _clip(cfg, items, options)
  if kind == "whisper":
    return _whisper(cfg, items, input_length)
  if kind == "wavlm":
    return _wavlm(cfg, items, input_length)
  if kind == "wavenet":
    return _wavenet(cfg, items, input_length)
  if kind == "timer":
    return _timer(cfg, items, input_length)
  raise ValueError(f"encoder FLOPs: unknown encoder kind {kind!r}; known: siglip, clip, whisper, wavlm, "
                   "wavenet, timer")


def encoder_forward_flops(modality_config, items: int, input_length: int | None = None) -> float:
  """Forward FLOPs of one modality's encoder over `items` items of `input_length`; see `encoder_parts`."""
  return encoder_parts(modality_config, items, input_length)[0].total


# ---------------------------------------------------------------------------------------------
# Projectors.


def projector_forward_flops(projector_config: ProjectorConfig, items: int, encoder_length: int) -> float:
  """Forward FLOPs of the compressor + adapter over `items` items of `encoder_length` encoder tokens.

  With C = in_features, D = out_features, m = hidden_mult and L' the compressed length
  ⌊(L − k)/s⌋ + 1 (L without a compressor):
    compressor   Conv1d C → C, k taps: 2·L'·k·C²
    vision       fc1 C → m·D, fc2 m·D → D over L' tokens (the LayerNorm is elementwise)
    audio        Conv1d C → 2D (k3, stride 2, pad 2) over L'' = ⌊(L' + 1)/2⌋ + 1, fc1 2D → 2D, fc2 2D → D
    series       fc1 C → m·C, fc2 m·C → D over L'
  """
  cfg = projector_config
  C, D, m = cfg.in_features, cfg.out_features, cfg.hidden_mult
  L, flops = int(encoder_length), 0.0
  if cfg.compressor is not None:
    k, s = cfg.compressor
    L = conv_length(L, k, s)
    flops += _conv(items, L, k, C, C)
  tokens = items * L
  if cfg.kind == "vision":
    flops += _dense(tokens, C, m * D) + _dense(tokens, m * D, D)
  elif cfg.kind == "audio":
    L2 = conv_length(L, 3, 2, 2) if L > 0 else 0
    flops += _conv(items, L2, 3, C, 2 * D) + _dense(items * L2, 2 * D, 2 * D) + _dense(items * L2, 2 * D, D)
  else:
    flops += _dense(tokens, C, m * C) + _dense(tokens, m * C, D)
  return flops


# ---------------------------------------------------------------------------------------------
# PEFT adapters on RWKV-7.


def _adapter_targets(config: rwkv7.RWKV7Config, peft_config) -> list[tuple[int, int]]:
  """(in, out) of every RWKV-7 projection `peft_config.targets` selects (att receptance/key/value/
  output, ffn key/value, head). A pattern is tried on the module's path as the RWKV-7 tree names it
  ("blocks_3/att/key"; "blocks/att/key" when scanned) and as the ModRWKV tree does ("rwkv/...")."""
  D, F, V = config.n_embd, config.dim_ffn, config.vocab_size
  shapes = {"att/receptance": (D, D), "att/key": (D, D), "att/value": (D, D), "att/output": (D, D),
            "ffn/key": (D, F), "ffn/value": (F, D)}

  def selected(path: str) -> bool:
    return any(re.search(p, name) for p in peft_config.targets for name in (path, f"rwkv/{path}"))

  targets = []
  for layer in range(config.n_layer):
    block = "blocks" if config.scan_layers else f"blocks_{layer}"
    targets += [shape for name, shape in shapes.items() if selected(f"{block}/{name}")]
  if selected("head"):
    targets.append((D, V))
  return targets


def adapter_flops(config: rwkv7.RWKV7Config, peft_config, tokens: int) -> dict[str, float]:
  """FLOPs the adapters add to RWKV-7 over `tokens` positions; per target kernel [in, out], rank r:

    bone   forward (Σ shards) @ D: 2·r·out per token (the shard sum is additions, not counted);
           activation gradient dY·Dᵀ and weight gradient shardsᵀ·dY: 2·r·out per token each.
    lora   forward x·a then ·b: 2·r·(in + out) per token; activation and weight gradient the same each.
    bat    the forward builds the merged kernel once per call: (I + D_i)ᵀ K_ji over every r×r block,
           2·in·out·r; no per-token forward work beyond the base matmul. Its weight gradient needs
           the dense dK' = Xᵀ·dY, 2·in·out per token (as much as training the kernel), plus 2·in·out·r
           to map dK' to dD. No extra activation gradient.
  Returns {"forward", "activation_grad", "weight_grad"}.
  """
  r = peft_config.r
  out = {"forward": 0.0, "activation_grad": 0.0, "weight_grad": 0.0}
  for n_in, n_out in _adapter_targets(config, peft_config):
    if peft_config.method == "bat":
      merge = 2.0 * n_in * n_out * r
      out["forward"] += merge
      out["weight_grad"] += _dense(tokens, n_in, n_out) + merge
      continue
    if peft_config.method == "bone":
      adapter = _dense(tokens, r, n_out)
    else:  # lora
      adapter = _dense(tokens, n_in, r) + _dense(tokens, r, n_out)
    for key in out:  # forward, activation gradient and weight gradient cost the same
      out[key] += adapter
  return out


# ---------------------------------------------------------------------------------------------
# A training step.


def _check_step_args(config, batch_shape: Mapping, trainable: Mapping) -> None:
  configured = [name for name, _ in config.modalities]
  for key in ("B", "T"):
    if not isinstance(batch_shape.get(key), numbers.Integral) or batch_shape[key] <= 0:
      raise ValueError(f"step_flops: batch_shape[{key!r}] must be a positive int; got {batch_shape.get(key)!r}")
  head_t = batch_shape.get("head_T")
  if head_t is not None and (not isinstance(head_t, numbers.Integral) or head_t <= 0):
    raise ValueError(f"step_flops: batch_shape['head_T'] must be a positive int or None; got {head_t!r}")
  for key, value in batch_shape.items():
    if key in ("B", "T", "head_T"):
      continue
    if key not in configured:
      raise ValueError(f"step_flops: batch_shape has {key!r}, which is not a configured modality "
                       f"({configured or 'none'}); its keys are 'B', 'T', 'head_T' and modality names")
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
      raise ValueError(f"step_flops: batch_shape[{key!r}] must be (items per row, input length); got {value!r}")
  unknown = sorted(set(trainable) - {"rwkv", "encoders", "projectors", "peft"})
  if unknown:
    raise ValueError(f"step_flops: unknown trainable keys {unknown}; expected 'rwkv', 'encoders', 'projectors', "
                     "'peft'")
  for name, trains in dict(trainable.get("encoders", {})).items():
    if name not in configured:
      raise ValueError(f"step_flops: trainable['encoders'] names {name!r}, not a configured modality {configured}")
    if trains and not config.modality(name).train_encoder:
      raise ValueError(f"step_flops: trainable['encoders'][{name!r}] is True, but ModalityConfig.train_encoder is "
                       "False: modrwkv stops the gradient at that encoder's output, so it cannot train")


def step_flops(config, batch_shape: Mapping, trainable: Mapping, *, peft_config=None) -> dict[str, float]:
  """Model FLOPs of one training step (forward and backward) on one batch.

  Args:
    config: modrwkv.ModRWKVConfig.
    batch_shape: {"B": rows, "T": positions per row, <modality>: (items per row, input length)} for
      each modality the batch holds (input length as in `encoder_parts`; None where it is ignored);
      optional "head_T": the positions per row the vocabulary head runs at (`train.label_capacity`;
      default T).
    trainable: {"rwkv": bool, "encoders": {modality: bool}, "projectors": bool, "peft": bool}; a
      missing key is False. "projectors" also covers the forecasting head.
    peft_config: the adapters on RWKV-7 (peft.PeftConfig). None with trainable["peft"] True means
      Bone with r = 64 on the default targets (PeftConfig()).
  Returns:
    {"forward": ..., "backward": ..., "total": ...} in FLOPs per step (2 per multiply-add).

  The parts run in the order encoder → projector → RWKV-7 → loss; a part needs its activation
  gradient when it, or any part before it, trains (module docstring). Example, phase I (projectors
  only): every part forward, RWKV-7's activation gradient (its weight FLOPs + 2× its WKV FLOPs), the
  projectors' 2× forward; the frozen encoders nothing more.
  """
  _check_step_args(config, batch_shape, trainable)
  B, T = int(batch_shape["B"]), int(batch_shape["T"])
  train_rwkv = bool(trainable.get("rwkv", False))
  train_proj = bool(trainable.get("projectors", False))
  train_peft = bool(trainable.get("peft", False))
  train_enc = {name: bool(v) for name, v in dict(trainable.get("encoders", {})).items()}
  if peft_config is None and train_peft:
    peft_config = peft.PeftConfig()

  forward = backward = 0.0

  def run(part: PartFlops, trains: bool, needs_grad: bool):
    """Adds one part: its forward, its activation gradient when needed, its weight gradient when trained."""
    nonlocal forward, backward
    forward += part.total
    if needs_grad or trains:
      backward += part.weight + 2 * part.interaction
    if trains:
      backward += part.weight

  upstream_trains = False  # does anything before RWKV-7 train?
  for name, m in config.modalities:
    if name not in batch_shape:
      continue
    per_row, input_length = batch_shape[name]
    items = B * int(per_row)
    enc, enc_length = encoder_parts(m, items, input_length)
    enc_trains = train_enc.get(name, False)
    run(enc, enc_trains, False)
    run(PartFlops(projector_forward_flops(m.projector, items, enc_length)), train_proj, enc_trains)
    upstream_trains |= enc_trains or train_proj
  if config.forecast_horizon:
    run(PartFlops(_dense(B, config.rwkv.n_embd, config.forecast_horizon)), train_proj, False)

  rwkv_needs_grad = upstream_trains or train_peft
  head_T = min(T, int(batch_shape.get("head_T") or T))
  head = PartFlops(_dense(B * head_T, config.rwkv.n_embd, config.rwkv.vocab_size))
  run(rwkv7_parts(config.rwkv, B * T, head=False) + head, train_rwkv, rwkv_needs_grad)
  if peft_config is not None:
    extra = adapter_flops(config.rwkv, peft_config, B * T)
    forward += extra["forward"]
    if rwkv_needs_grad or train_rwkv:
      backward += extra["activation_grad"]
    if train_peft:
      backward += extra["weight_grad"]
  return {"forward": forward, "backward": backward, "total": forward + backward}


# ---------------------------------------------------------------------------------------------
# Peak throughput and MFU.

# device_kind substring (lower case) -> dense bf16 peak FLOP/s per chip, from vendor specs (no sparsity).
# Order matters: the first match wins, so specific names precede the names they contain.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h200", 989e12),  # H200 SXM
    ("h100", 989e12),  # H100 SXM
    ("a100", 312e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),  # v5e reports "TPU v5 lite"
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v6 lite", 918e12),  # v6e (Trillium)
    ("tpu v6e", 918e12),
)


def peak_flops_per_device(device) -> float | None:
  """Dense bf16 peak FLOP/s of one device from vendor specs (H100/H200 SXM 989e12, A100 312e12, TPU v4
  275e12, v5e 197e12, v5p 459e12, v6e 918e12), by `device.device_kind`; None on the CPU or for a device
  not in the table (then pass the trainer a peak, or use `measure_cpu_matmul_flops` on the CPU)."""
  if device.platform == "cpu":
    return None
  kind = device.device_kind.lower()
  return next((peak for name, peak in PEAK_BF16_FLOPS if name in kind), None)


def measure_cpu_matmul_flops(size: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of a jitted float32 [size, size] @ [size, size] matmul on the default device, best of
  `repeats` (after one compile-and-warm-up run). The trainer's stand-in for the CPU's peak: MFU on CPU
  is against the measured matmul throughput, an estimate."""
  x = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda a, b: a @ b)
  matmul(x, x).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(x, x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def mfu(flops_per_step: float, step_time: float, n_devices: int, peak: float | None) -> float | None:
  """Model FLOPs utilisation: flops_per_step / step_time / (n_devices · peak), a fraction in [0, 1]
  for a sane measurement; None when the peak is unknown or the step time is not positive."""
  if peak is None or peak <= 0 or step_time is None or step_time <= 0 or n_devices <= 0:
    return None
  return flops_per_step / step_time / (n_devices * peak)
