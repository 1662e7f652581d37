"""The trainer's reporting (training/metrics.py) and FLOPs count (training/flops.py).

References: the metrics file is read back with `json` and TensorBoard's event files are parsed here
byte by byte (TFRecord framing with our own CRC-32C, records decoded with tensorboardX's `Event`
proto), not with the writer's code. FLOPs are checked against closed forms worked out by hand, and
against XLA's own count (`compiled.cost_analysis()["flops"]`) of the jitted forward, which counts
every matmul and also the elementwise work we leave out: our count must be at most XLA's and within
the stated fraction of it (shapes chosen so matmuls dominate, as they do at real sizes).
"""

import json
import math
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from modrwkv_jax import peft
from modrwkv_jax.models import modrwkv, rwkv7
from modrwkv_jax.models import projector as proj
from modrwkv_jax.models.encoders import siglip
from modrwkv_jax.ops.wkv7 import wkv7_reference
from modrwkv_jax.training import flops
from modrwkv_jax.training.metrics import MetricsWriter, Progress, Throughput, read_metrics

# ---------------------------------------------------------------------------------------------
# MetricsWriter.


def test_rows_round_trip_and_are_flushed_at_every_write(tmp_path):
  with MetricsWriter(tmp_path, tensorboard=False) as writer:
    writer.write(1, {"loss": 2.5, "tokens": 4096, "lr": np.float32(0.5), "grad_norm": jnp.float32(0.25)})
    assert read_metrics(tmp_path / "metrics.jsonl") == [  # read while the writer is still open
        {"step": 1, "loss": 2.5, "tokens": 4096, "lr": 0.5, "grad_norm": 0.25}]
    writer.write(2, {"loss": 2.25})
    assert [row["step"] for row in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[1]) == {"step": 2, "loss": 2.25}
  assert isinstance(json.loads(lines[0])["tokens"], int)


def test_nonfinite_values_are_null_and_named(tmp_path):
  with MetricsWriter(tmp_path, tensorboard=False) as writer:
    writer.write(7, {"loss": float("nan"), "grad_norm": np.inf, "lr": 1e-3})
  line = (tmp_path / "metrics.jsonl").read_text().strip()
  # Standard JSON: no NaN / Infinity tokens anywhere (parse_constant is called only for those).
  row = json.loads(line, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
  assert row == {"step": 7, "loss": None, "grad_norm": None, "lr": 1e-3, "nonfinite": ["loss", "grad_norm"]}


def test_bad_metrics_are_refused(tmp_path):
  with MetricsWriter(tmp_path, tensorboard=False) as writer:
    with pytest.raises(ValueError, match="'step' is set by the writer"):
      writer.write(1, {"step": 3})
    with pytest.raises(ValueError, match="one number"):
      writer.write(1, {"loss": np.ones(3)})


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
  with MetricsWriter(tmp_path, tensorboard=False) as writer:
    for step in range(1, 6):
      writer.write(step, {"loss": 1.0 / step})
  with MetricsWriter(tmp_path, tensorboard=False, resume_step=3) as writer:
    assert [row["step"] for row in read_metrics(writer.path)] == [1, 2, 3]
    writer.write(4, {"loss": 0.0})
  assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
      (1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.0)]
  assert not os.path.exists(tmp_path / "metrics.jsonl.tmp")


def test_a_half_written_last_row_is_dropped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_bytes(b'{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # a run killed mid-write
  assert read_metrics(path) == [{"step": 1, "loss": 2.0}]
  with MetricsWriter(tmp_path, tensorboard=False) as writer:
    writer.write(2, {"loss": 1.5})
  assert read_metrics(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
  path.write_bytes(b'{"step": 1}\nnot json\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object"):
    read_metrics(path)


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  with MetricsWriter(workdir, enabled=False) as writer:
    writer.write(1, {"loss": 1.0})
  assert not workdir.exists()


def _crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  """TFRecord's mask: rotate right by 15 and add 0xa282ead8 (mod 2³²)."""
  crc = _crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_events(path) -> list:
  """TFRecords: uint64 length, uint32 masked crc of the length, data, uint32 masked crc of the data."""
  data, events, pos = path.read_bytes(), [], 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    record = data[pos + 12:pos + 12 + length]
    (record_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
    assert length_crc == _masked_crc(header) and record_crc == _masked_crc(record), f"bad CRC at byte {pos}"
    events.append(event_pb2.Event.FromString(record))
    pos += 16 + length
  return events


def test_tensorboard_scalars_are_real_event_files(tmp_path):
  assert _crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
  with MetricsWriter(tmp_path) as writer:
    writer.write(10, {"loss": 2.5, "tokens": 4096})
    writer.write(20, {"loss": 1.25})
  files = sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert len(files) == 1
  scalars = [(v.tag, v.simple_value, e.step) for e in _read_events(files[0]) for v in e.summary.value]
  assert scalars == [("loss", 2.5, 10), ("tokens", 4096.0, 10), ("loss", 1.25, 20)]


# ---------------------------------------------------------------------------------------------
# Progress and throughput.


def test_progress_moves_to_absolute_steps_from_the_resumed_one():
  with Progress(100, initial=40, process_index=0) as bar:
    assert bar.step == 40
    bar.update(45, loss=1.5, tokens_per_sec=12345.0)
    bar.update(50, loss=1.25)
    assert bar.step == 50
  with Progress(100, process_index=1) as hidden:  # only process 0 shows a bar
    hidden.update(10, loss=1.0)
    assert hidden.step == 0


def test_throughput_measures_between_marks_after_the_compile_step():
  now = [100.0]
  rates = Throughput(clock=lambda: now[0])
  now[0] += 30.0  # the first step: mostly compilation
  rates.reset(1, tokens=1000)  # the caller marks the end of the compile step
  now[0] += 2.0
  assert rates.mark(11, tokens=11000) == {"step_time": 0.2, "tokens_per_sec": 5000.0, "steps_per_sec": 5.0}
  now[0] += 4.0
  assert rates.mark(21, tokens=21000)["step_time"] == pytest.approx(0.4)
  assert Throughput(clock=lambda: 0.0).mark(5, tokens=10) is None  # no interval yet


# ---------------------------------------------------------------------------------------------
# FLOPs: closed forms.

TINY = rwkv7.RWKV7Config(vocab_size=128, n_layer=1, n_embd=64, head_size=16, dim_w=8, dim_a=8, dim_v=4, dim_g=8,
                         dim_ffn=256)


def test_rwkv7_single_layer_closed_form():
  # Per token, D = 64, N = 16, F = 256, V = 128, one layer (layer 0: no value-residual LoRA):
  projections = 4 * 2 * 64 * 64  # receptance, key, value, output      32768
  loras = 3 * 2 * (2 * 64 * 8)  # decay, in-context rate, gate LoRAs      6144
  ffn = 2 * 2 * 64 * 256  # key, value                                   65536
  head = 2 * 64 * 128  #                                                 16384
  wkv = 8 * 16 * 64  # 4·N² multiply-adds per head, 4 heads              8192
  assert projections + loras + ffn + head + wkv == 129024
  assert flops.rwkv7_forward_flops(TINY, 10) == 10 * 129024
  assert flops.rwkv7_parts(TINY, 10) == (10 * (129024 - wkv), 10 * wkv)
  # A second layer adds a layer with the value-residual LoRA (2·2·64·4 = 1024 per token).
  two = TINY.replace(n_layer=2)
  assert flops.rwkv7_forward_flops(two, 1) == 129024 + (129024 - head) + 1024


def test_projector_closed_form():
  vision = proj.ProjectorConfig("vision", in_features=16, out_features=32, compressor=(2, 2), hidden_mult=2)
  # L = 10 -> compressor (k2, s2) -> 5 tokens: conv 2·5·2·16·16, fc1 16 -> 64, fc2 64 -> 32.
  assert flops.projector_forward_flops(vision, 3, 10) == 3 * (2 * 5 * 2 * 16 * 16 + 2 * 5 * 16 * 64 + 2 * 5 * 64 * 32)
  audio = proj.ProjectorConfig("audio", in_features=16, out_features=32)
  # L = 10 -> Conv1d(k3, s2, pad 2) -> ⌊(10 + 4 − 3)/2⌋ + 1 = 6 tokens: conv 16 -> 64, fc1 64 -> 64, fc2 64 -> 32.
  assert flops.projector_forward_flops(audio, 1, 10) == 2 * 6 * 3 * 16 * 64 + 2 * 6 * 64 * 64 + 2 * 6 * 64 * 32


# ---------------------------------------------------------------------------------------------
# FLOPs against XLA's count.


def _xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list of dicts in older jax versions
  return float(cost["flops"])


def _check_ratio(name, ours, xla, low, high=1.0):
  ratio = ours / xla
  print(f"\n{name}: ours {ours:.4g} / XLA {xla:.4g} = {ratio:.4f} (expected in [{low}, {high}])")
  assert low <= ratio <= high, f"{name}: ours / XLA = {ratio:.4f} outside [{low}, {high}]"


def test_rwkv7_forward_against_xla():
  # XLA counts a while loop's body once, not once per iteration, so the WKV-7 scan is compared at
  # T = 1 (one iteration): B = 64 rows of one token each count every matmul exactly once.
  # Measured on jax 0.10.2: ratio 0.979; the rest is elementwise (norms, sigmoids, token shift).
  cfg = rwkv7.RWKV7Config(vocab_size=128, n_layer=2, n_embd=256, head_size=16, dim_w=16, dim_a=16, dim_v=16,
                          dim_g=32, dim_ffn=1024, wkv_impl="reference")
  params = jax.eval_shape(lambda: rwkv7.init_params(cfg, jax.random.key(0)))
  tokens = jax.ShapeDtypeStruct((64, 1), jnp.int32)
  xla = _xla_flops(lambda p, t: rwkv7.forward(cfg, p, t)[0], params, tokens)
  _check_ratio("RWKV-7 forward", flops.rwkv7_forward_flops(cfg, 64), xla, 0.95)


def test_wkv7_step_against_xla():
  # One recurrence step per head: XLA counts the two N×N contractions (aᵀS, Sᵀr: 4·N²), and
  # elementwise the decay (N²), b·(aᵀS) and k·vᵀ with their additions (4·N²) and the exp (N):
  # ≈ 9·N² + O(N); we count the four multiply-add products, 8·N², so ours / XLA ≈ 8/9 = 0.89.
  B, H, N = 8, 4, 32
  x = jax.ShapeDtypeStruct((B, 1, H, N), jnp.float32)
  state = jax.ShapeDtypeStruct((B, H, N, N), jnp.float32)
  xla = _xla_flops(wkv7_reference, x, x, x, x, x, x, state)
  _, interaction = flops.rwkv7_parts(rwkv7.RWKV7Config(n_layer=1, n_embd=H * N, head_size=N), B)
  _check_ratio("WKV-7 step", interaction, xla, 0.85, 0.9)


def test_siglip_forward_against_xla():
  # Measured on jax 0.10.2: 0.979 (LayerNorms, GELU-tanh, softmax, position add are elementwise).
  cfg = siglip.SiglipConfig(hidden_size=128, intermediate_size=512, num_layers=2, num_heads=4, patch_size=8,
                            image_size=64)
  params = jax.eval_shape(lambda: siglip.init_params(cfg, jax.random.key(0)))
  pixels = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  xla = _xla_flops(lambda p, x: siglip.forward(cfg, p, x), params, pixels)
  modality = modrwkv.ModalityConfig("siglip", cfg, proj.ProjectorConfig("vision", 128, 64))
  _check_ratio("SigLIP forward", flops.encoder_forward_flops(modality, 2), xla, 0.95)


# ---------------------------------------------------------------------------------------------
# FLOPs of a training step: which parts run backward.

SIGLIP = siglip.SiglipConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, patch_size=8,
                             image_size=32)
VISION = proj.ProjectorConfig("vision", 32, 64, None, 2)
MODEL = modrwkv.ModRWKVConfig(TINY.replace(n_layer=2), (
    ("image", modrwkv.ModalityConfig("siglip", SIGLIP, VISION, train_encoder=True)),))
BATCH = {"B": 2, "T": 40, "image": (1, None)}  # 2 rows of 40 positions, one 32×32 image each


def _parts():
  rwkv = flops.rwkv7_parts(MODEL.rwkv, 2 * 40)
  enc = flops.encoder_forward_flops(MODEL.modality("image"), 2)
  projector = flops.projector_forward_flops(VISION, 2, SIGLIP.num_positions)
  return rwkv, enc, projector


def test_phase_one_trains_projectors_through_a_frozen_rwkv():
  rwkv, enc, projector = _parts()
  got = flops.step_flops(MODEL, BATCH, {"projectors": True, "encoders": {"image": False}})
  assert got["forward"] == enc + projector + rwkv.total
  # RWKV-7: activation gradient only (its matmuls once, its WKV twice); projector: 2× forward.
  assert got["backward"] == rwkv.weight + 2 * rwkv.interaction + 2 * projector
  assert got["total"] == got["forward"] + got["backward"]


def test_full_training_is_three_forwards_and_a_frozen_encoder_runs_forward_only():
  rwkv, enc, projector = _parts()
  full = flops.step_flops(MODEL, BATCH, {"rwkv": True, "projectors": True})
  assert full["total"] == pytest.approx(enc + 3 * projector + 3 * rwkv.total, rel=1e-12)
  text_only = flops.step_flops(MODEL, {"B": 2, "T": 40}, {"rwkv": True, "projectors": True})
  assert full["forward"] - text_only["forward"] == pytest.approx(enc + projector, rel=1e-12)
  assert full["backward"] - text_only["backward"] == pytest.approx(2 * projector, rel=1e-12)
  everything = flops.step_flops(MODEL, BATCH, {"rwkv": True, "projectors": True, "encoders": {"image": True}})
  assert everything["total"] == pytest.approx(3 * (enc + projector + rwkv.total), rel=1e-12)


def test_label_capacity_counts_the_head_at_its_positions_only():
  """head_T (train.label_capacity): the 2·D·V head runs at B·head_T positions, forward and both gradients."""
  full = flops.step_flops(MODEL, BATCH, {"rwkv": True, "projectors": True})
  capped = flops.step_flops(MODEL, dict(BATCH, head_T=10), {"rwkv": True, "projectors": True})
  head_per_position = 2 * MODEL.rwkv.n_embd * MODEL.rwkv.vocab_size
  assert full["total"] - capped["total"] == pytest.approx(3 * head_per_position * 2 * (40 - 10), rel=1e-12)
  assert flops.step_flops(MODEL, dict(BATCH, head_T=400), {"rwkv": True})["total"] == pytest.approx(
      flops.step_flops(MODEL, BATCH, {"rwkv": True})["total"], rel=1e-12)  # capped at T
  with pytest.raises(ValueError, match="head_T"):
    flops.step_flops(MODEL, dict(BATCH, head_T=0), {"rwkv": True})


def test_peft_adds_the_adapters_small_gradients():
  rwkv, enc, projector = _parts()
  bone = peft.PeftConfig(method="bone", r=8)
  got = flops.step_flops(MODEL, BATCH, {"peft": True}, peft_config=bone)
  # Bone on the 6 default targets per layer: 2·r·out per token each (forward, activation and weight
  # gradient alike); outs: 4 × D (att) + F (ffn key) + D (ffn value) = 4·64 + 256 + 64 = 576.
  adapter = 2 * 40 * 2 * 2 * 8 * 576  # B·T tokens × 2 layers × 2·r·Σout
  assert got["forward"] == pytest.approx(enc + projector + rwkv.total + adapter, rel=1e-12)
  assert got["backward"] == pytest.approx(rwkv.weight + 2 * rwkv.interaction + 2 * adapter, rel=1e-12)
  lora = flops.adapter_flops(MODEL.rwkv, peft.PeftConfig(method="lora", r=8), 1)
  assert lora["weight_grad"] == 2 * 2 * 8 * (4 * (64 + 64) + (64 + 256) + (256 + 64))


def test_step_arguments_are_checked():
  frozen = modrwkv.ModRWKVConfig(MODEL.rwkv, (("image", modrwkv.ModalityConfig("siglip", SIGLIP, VISION)),))
  with pytest.raises(ValueError, match="train_encoder is False"):
    flops.step_flops(frozen, BATCH, {"encoders": {"image": True}})
  with pytest.raises(ValueError, match="'audio', which is not a configured modality"):
    flops.step_flops(MODEL, {"B": 1, "T": 8, "audio": (1, 100)}, {})
  with pytest.raises(ValueError, match="unknown trainable keys"):
    flops.step_flops(MODEL, BATCH, {"adapters": True})


# ---------------------------------------------------------------------------------------------
# Peaks and MFU.


class _Device:
  def __init__(self, platform, device_kind):
    self.platform, self.device_kind = platform, device_kind


def test_peak_table_and_mfu():
  assert flops.peak_flops_per_device(_Device("gpu", "NVIDIA H100 80GB HBM3")) == 989e12
  assert flops.peak_flops_per_device(_Device("gpu", "NVIDIA A100-SXM4-40GB")) == 312e12
  assert flops.peak_flops_per_device(_Device("tpu", "TPU v5 lite")) == 197e12
  assert flops.peak_flops_per_device(_Device("tpu", "TPU v5p")) == 459e12
  assert flops.peak_flops_per_device(_Device("gpu", "Some Future GPU")) is None
  assert flops.peak_flops_per_device(jax.devices("cpu")[0]) is None
  assert flops.mfu(4e15, 2.0, 4, 1e15) == 0.5
  assert flops.mfu(4e15, 2.0, 4, None) is None
  measured = flops.measure_cpu_matmul_flops(size=64, repeats=2)
  assert math.isfinite(measured) and measured > 0
