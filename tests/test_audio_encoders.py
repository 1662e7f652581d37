"""Whisper and WavLM encoders against transformers' PyTorch models (tiny random checkpoints, offline).

Reference: `transformers.models.whisper.modeling_whisper.WhisperEncoder`,
`WhisperForConditionalGeneration` (its `model.encoder`) and `WavLMModel` (feat_extract_norm "group"
with post-norm, and "layer" with do_stable_layer_norm), built from config objects with random
weights (plus noise so no path is near zero), saved with `save_pretrained`, read back with our
`load_hf` (no torch), in both layer layouts (unrolled `layers_i`, and scanned: one `layers` stack).
Tolerance: rel-RMS < 1e-5 in float32 over the frames the mask keeps, with and without padding.
Whisper's "real_length" mode is compared with the same torch modules run on each clip alone and
unpadded.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modrwkv_jax import sharding
from modrwkv_jax.data import audio
from modrwkv_jax.models.encoders import transformer, wavlm, whisper

TOL = 1e-5
LAYOUTS = pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])


def rel_rms(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.sqrt(np.mean((x - ref) ** 2)) / np.sqrt(np.mean(ref ** 2)))


def _perturb(model, scale, skip=()):
  """Adds Gaussian noise of std `scale` to every parameter (HF's init is 0.02-scale), in eval mode."""
  import torch
  torch.manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if not any(s in name for s in skip):
        p.add_(scale * torch.randn_like(p))
  return model.eval()


def _tones(seconds, rate=16000):
  return [(0.3 * np.sin(2 * np.pi * f * np.arange(int(rate * s)) / rate)).astype(np.float32)
          * np.linspace(0.2, 1.0, int(rate * s), dtype=np.float32) for f, s in zip((440.0, 1250.0, 3100.0), seconds)]


# ---------------------------------------------------------------------------------------------
# Whisper.

WHISPER_SIZES = dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                     decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, vocab_size=64,
                     max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                     decoder_start_token_id=1)


@pytest.fixture(scope="module")
def whisper_tiny(tmp_path_factory):
  """A tiny WhisperEncoder with the real 30 s window (1500 positions, 3000 mel frames), 80 bins."""
  import torch
  from transformers import WhisperConfig
  from transformers.models.whisper.modeling_whisper import WhisperEncoder

  torch.manual_seed(0)
  model = _perturb(WhisperEncoder(WhisperConfig(num_mel_bins=80, max_source_positions=1500, **WHISPER_SIZES)), 0.05,
                   skip=("embed_positions",))
  path = tmp_path_factory.mktemp("whisper_encoder")
  model.save_pretrained(path)
  config, params = whisper.load_hf(path)
  return model, config, params, path


_whisper_forward = jax.jit(whisper.forward, static_argnums=0, static_argnames="mode")


@LAYOUTS
def test_whisper_paper_mode_matches_transformers(whisper_tiny, scan):
  import torch
  model, config, params, path = whisper_tiny
  if scan:
    config, params = whisper.load_hf(path, scan_layers=True)
    assert "layers" in params["encoder"] and config.scan_layers
  assert config.n_frames == 3000 and config.d_model == 32 and config.activation == "gelu"
  feats, mel_mask = audio.whisper_features(_tones((1.3, 2.0)))
  with torch.no_grad():
    want = model(torch.from_numpy(feats.transpose(0, 2, 1).copy())).last_hidden_state.numpy()
  got, out_mask = _whisper_forward(config, params, jnp.asarray(feats), jnp.asarray(mel_mask))
  got, out_mask = np.asarray(got), np.asarray(out_mask)
  assert got.shape == (2, 1500, 32)
  # ModRWKV's cut: sum(mel_mask)//2 + 1 frames (130 -> 66, 200 -> 101).
  np.testing.assert_array_equal(out_mask.sum(1), mel_mask.sum(1) // 2 + 1)
  assert list(mel_mask.sum(1)) == [130, 200]
  err_all, err_kept = rel_rms(got, want), rel_rms(got[out_mask], want[out_mask])
  print(f"whisper paper mode ({'scanned' if scan else 'unrolled'}) vs HF WhisperEncoder: rel-RMS {err_all:.2e} "
        f"(all 1500 frames), {err_kept:.2e} (kept)")
  assert err_all < TOL and err_kept < TOL
  # The encoder interface: encode = forward; num_tokens(n mel frames) = the frames the mask keeps.
  assert [whisper.num_tokens(config, n) for n in mel_mask.sum(1)] == list(out_mask.sum(1))
  # No mask: every frame kept.
  _, all_kept = _whisper_forward(config, params, jnp.asarray(feats))
  assert bool(np.asarray(all_kept).all())


def _torch_whisper_alone(model, feats):
  """The HF encoder's modules on one unpadded clip float[T, n_mels] (HF's forward insists on 3000 frames)."""
  import torch
  import torch.nn.functional as F
  with torch.no_grad():
    x = torch.from_numpy(feats.T.copy())[None]
    x = F.gelu(model.conv2(F.gelu(model.conv1(x)))).permute(0, 2, 1)
    x = x + model.embed_positions.weight[: x.shape[1]]
    for layer in model.layers:
      x = layer(x, None)
    return model.layer_norm(x)[0].numpy()


def test_whisper_real_length_mode_equals_each_clip_alone(whisper_tiny):
  model, config, params, _ = whisper_tiny
  feats, mel_mask = audio.whisper_features(_tones((0.37, 0.6, 0.55)), pad_to_chunk=False)
  lengths = mel_mask.sum(1)
  assert list(lengths) == [37, 60, 55] and feats.shape[1] == 62
  whisper.check_inputs(config, feats, mel_mask, mode="real_length")
  got, out_mask = _whisper_forward(config, params, jnp.asarray(feats), jnp.asarray(mel_mask), mode="real_length")
  got, out_mask = np.asarray(got), np.asarray(out_mask)
  assert got.shape == (3, 31, 32)
  np.testing.assert_array_equal(out_mask.sum(1), (lengths + 1) // 2)
  assert [whisper.num_tokens(config, n, mode="real_length") for n in lengths] == list(out_mask.sum(1))
  for b, n in enumerate(lengths):
    want = _torch_whisper_alone(model, feats[b, :n])
    err = rel_rms(got[b][out_mask[b]], want)
    print(f"whisper real_length clip {b} ({n} frames, padded to {feats.shape[1]}) vs torch alone: rel-RMS {err:.2e}")
    assert err < TOL, (b, err)


def test_whisper_full_checkpoint_128_bins(tmp_path):
  """A WhisperForConditionalGeneration snapshot (large-v3 layout: 128 bins): the encoder under model.encoder."""
  import torch
  from transformers import WhisperConfig, WhisperForConditionalGeneration

  torch.manual_seed(0)
  full = _perturb(WhisperForConditionalGeneration(WhisperConfig(num_mel_bins=128, max_source_positions=8,
                                                                **WHISPER_SIZES)), 0.05, skip=("embed_positions",))
  full.save_pretrained(tmp_path)
  config, params = whisper.load_hf(tmp_path)
  assert config.num_mel_bins == 128 and config.n_frames == 16
  feats = np.random.RandomState(0).randn(2, 16, 128).astype(np.float32)
  with torch.no_grad():
    want = full.model.encoder(torch.from_numpy(feats.transpose(0, 2, 1).copy())).last_hidden_state.numpy()
  got, _ = _whisper_forward(config, params, jnp.asarray(feats))
  err = rel_rms(got, want)
  print(f"whisper WhisperForConditionalGeneration(128 bins).model.encoder vs ours: rel-RMS {err:.2e}")
  assert err < TOL
  # bfloat16 compute (params stay float32): rel-RMS < 2e-2 against the float32 torch output.
  got16, _ = _whisper_forward(dataclasses.replace(config, dtype="bfloat16"), params, jnp.asarray(feats))
  err16 = rel_rms(np.asarray(got16, np.float32), want)
  print(f"whisper bfloat16 compute vs HF float32: rel-RMS {err16:.2e}")
  assert got16.dtype == jnp.bfloat16 and err16 < 2e-2
  axes = whisper.param_logical_axes(config)
  assert axes["encoder"]["layers_0"]["self_attn"]["k_proj"]["kernel"] == jax.sharding.PartitionSpec(
      "enc_embed", "enc_qkv")
  assert "bias" not in params["encoder"]["layers_0"]["self_attn"]["k_proj"]


def test_whisper_bad_inputs_and_snapshots(whisper_tiny, tmp_path):
  from safetensors.numpy import load_file, save_file

  model, config, params, _ = whisper_tiny
  with pytest.raises(ValueError, match=r"features have 62 frames; this encoder takes exactly 3000"):
    whisper.forward(config, params, jnp.zeros((1, 62, 80)))
  with pytest.raises(ValueError, match=r"n_mels=80\] \(time-major"):
    whisper.forward(config, params, jnp.zeros((1, 80, 3000)))
  with pytest.raises(ValueError, match="expected 1 to 3000"):
    whisper.forward(config, params, jnp.zeros((1, 3002, 80)), mode="real_length")
  with pytest.raises(ValueError, match="unknown mode"):
    whisper.forward(config, params, jnp.zeros((1, 3000, 80)), mode="fast")
  # Values are checked at the boundary (check_inputs on numpy), not inside the jitted forward.
  mel_mask = np.zeros((2, 3000), bool)
  mel_mask[0, :100] = True
  with pytest.raises(ValueError, match="clip 1 has no real mel frame"):
    whisper.check_inputs(config, np.zeros((2, 3000, 80), np.float32), mel_mask)
  mel_mask[1, 5:9] = True
  with pytest.raises(ValueError, match=r"mel_mask\[1\] is not a prefix"):
    whisper.check_inputs(config, np.zeros((2, 3000, 80), np.float32), mel_mask)
  feats = np.zeros((1, 62, 80), np.float32)
  feats[0, 7, 3] = np.inf
  with pytest.raises(ValueError, match=r"clip 0 has a non-finite mel value \(NaN or inf\) at frame 7"):
    whisper.check_inputs(config, feats, mode="real_length")
  # A snapshot with a tensor missing, and one of another architecture.
  src = tmp_path / "src"
  model.save_pretrained(src)
  tensors = load_file(os.path.join(src, "model.safetensors"))
  del tensors["layers.1.fc2.bias"]
  broken = tmp_path / "broken"
  broken.mkdir()
  save_file(tensors, os.path.join(broken, "model.safetensors"))
  (broken / "config.json").write_text((src / "config.json").read_text())
  with pytest.raises(KeyError, match=r"broken: missing tensor 'layers.1.fc2.bias'"):
    whisper.load_hf(broken)
  (broken / "config.json").write_text('{"model_type": "wavlm"}')
  with pytest.raises(ValueError, match="model_type is 'wavlm'; expected 'whisper'"):
    whisper.load_hf(broken)


# ---------------------------------------------------------------------------------------------
# WavLM.

WAVLM_VARIANTS = {"group": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),
                  "layer": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)}


@pytest.fixture(scope="module", params=sorted(WAVLM_VARIANTS))
def wavlm_tiny(request, tmp_path_factory):
  """A tiny WavLMModel (the real conv strides, 16 channels, 2 layers) of each variant, saved and loaded."""
  import torch
  from transformers import WavLMConfig, WavLMModel

  hf_config = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                          num_buckets=32, max_bucket_distance=40, **WAVLM_VARIANTS[request.param])
  torch.manual_seed(0)
  model = _perturb(WavLMModel(hf_config), 0.1, skip=("masked_spec_embed",))
  path = tmp_path_factory.mktemp(f"wavlm_{request.param}")
  model.save_pretrained(path)
  config, params = wavlm.load_hf(path)
  return request.param, model, path, config, params


_wavlm_forward = jax.jit(wavlm.forward, static_argnums=0)


def _wavlm_batch():
  """Two clips of 1.0 s and 0.56 s, normalised and padded by our wav2vec2 front end."""
  rs = np.random.RandomState(0)
  clips = [rs.randn(16000).astype(np.float32) * 0.1 + _tones((1.0,))[0], _tones((0.56,))[0]]
  return audio.wav2vec2_inputs(clips)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # inside torch's MHA
@LAYOUTS
def test_wavlm_matches_transformers(wavlm_tiny, scan):
  """Unrolled: with and without a mask; scanned (the relative position bias computed once and given to
  every scanned layer, as HF hands layer 0's bias on): the masked batch, pre-norm (layer) variant only
  (the scan does not depend on what is inside a layer)."""
  import torch
  variant, model, path, config, params = wavlm_tiny
  if scan and variant == "group":
    pytest.skip("the scanned stack is checked on the layer-norm variant")
  if scan:
    config, params = wavlm.load_hf(path, scan_layers=True)
    assert "layers" in params and "layers_0" not in params
  values, mask = _wavlm_batch()
  wavlm.check_inputs(config, values, mask)
  for use_mask in (True,) if scan else (False, True):
    with torch.no_grad():
      want = model(torch.from_numpy(values), attention_mask=torch.from_numpy(mask.astype(np.int64)) if use_mask
                   else None).last_hidden_state.numpy()
    got, frame_mask = _wavlm_forward(config, params, jnp.asarray(values), jnp.asarray(mask) if use_mask else None)
    got, frame_mask = np.asarray(got), np.asarray(frame_mask)
    assert got.shape == want.shape == (2, 49, 32)
    expected_frames = [49, 49] if not use_mask else [49, 27]  # (n - 400) // 320 + 1 for n = 16000, 8960
    assert list(frame_mask.sum(1)) == expected_frames
    err = rel_rms(got[frame_mask], want[frame_mask])
    print(f"wavlm {variant}-norm ({'scanned' if scan else 'unrolled'}) vs HF WavLMModel, mask={use_mask}: "
          f"rel-RMS {err:.2e}")
    assert err < TOL, (variant, use_mask, err)
  assert [wavlm.num_tokens(config, n) for n in mask.sum(1)] == list(frame_mask.sum(1)) == [49, 27]


def test_wavlm_padded_clip_versus_clip_alone(wavlm_tiny):
  """Layer-norm variant: padding-exact. Group-norm variant: its first GroupNorm averages over the padded
  row (as in transformers and fairseq), so a padded clip's features differ from the clip alone."""
  variant, model, _, config, params = wavlm_tiny
  values, mask = _wavlm_batch()
  batched, frame_mask = _wavlm_forward(config, params, jnp.asarray(values), jnp.asarray(mask))
  n = int(mask[1].sum())
  alone, _ = _wavlm_forward(config, params, jnp.asarray(values[1:, :n]))
  err = rel_rms(np.asarray(batched)[1][np.asarray(frame_mask)[1]], np.asarray(alone)[0])
  print(f"wavlm {variant}-norm: padded clip vs the clip alone: rel-RMS {err:.2e}")
  if variant == "layer":
    assert err < TOL
  else:
    assert err > 1e-3
    exact, _ = jax.jit(wavlm.forward, static_argnums=0, static_argnames="exact_padding")(
        config, params, jnp.asarray(values), jnp.asarray(mask), exact_padding=True)
    err = rel_rms(np.asarray(exact)[1][np.asarray(frame_mask)[1]], np.asarray(alone)[0])
    print(f"wavlm group-norm with exact_padding=True: padded clip vs the clip alone: rel-RMS {err:.2e}")
    assert err < TOL


def test_wavlm_alternative_checkpoint_layouts(wavlm_tiny, tmp_path):
  """`wavlm.` prefix + old weight_g/weight_v names (safetensors), and a pytorch_model.bin-only folder."""
  import torch
  from safetensors.numpy import save_file

  variant, model, path, config, params = wavlm_tiny
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  renamed = {"wavlm." + k.replace("parametrizations.weight.original0", "weight_g")
             .replace("parametrizations.weight.original1", "weight_v"): v for k, v in sd.items()}
  renamed["lm_head.weight"] = np.zeros((5, 32), np.float32)  # a task head outside the wavlm. prefix
  alt = tmp_path / "ctc"
  alt.mkdir()
  save_file(renamed, os.path.join(alt, "model.safetensors"))
  (alt / "config.json").write_text((path / "config.json").read_text())
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
  (bin_dir / "config.json").write_text((path / "config.json").read_text())
  for folder in (alt, bin_dir):
    other_config, other = wavlm.load_hf(folder)
    assert other_config == config
    jax.tree.map(np.testing.assert_array_equal, other, params)
  # Every loaded parameter has logical axis names (same tree as the params).
  axes = wavlm.param_logical_axes(config)
  assert jax.tree.structure(params) == jax.tree.structure(
      axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def test_load_builds_params_without_init_and_places_them(wavlm_tiny, whisper_tiny, monkeypatch):
  """load_hf builds params from the file alone (the random initialiser patched to raise), in the layout
  asked for; with a mesh every leaf carries its NamedSharding; stack/unstack_layers convert exactly."""
  variant, _, wavlm_path, _, wavlm_params = wavlm_tiny
  _, _, whisper_params, whisper_path = whisper_tiny

  def refuse(*args, **kwargs):
    raise AssertionError("load_hf ran the random initialiser")

  mesh = sharding.make_mesh()
  for module, path, unrolled in ((wavlm, wavlm_path, wavlm_params), (whisper, whisper_path, whisper_params)):
    monkeypatch.setattr(module, "init_params", refuse)
    monkeypatch.setattr(module, "_init_boxed", refuse)
    config, scanned = module.load_hf(path, scan_layers=True, mesh=mesh)
    want = sharding.logical_to_mesh(module.param_logical_axes(config), mesh)
    for leaf, named in zip(jax.tree.leaves(scanned), jax.tree.leaves(want)):
      assert leaf.sharding == named
    jax.tree.map(np.testing.assert_array_equal, transformer.stack_layers(unrolled), scanned)
    jax.tree.map(np.testing.assert_array_equal, transformer.unstack_layers(scanned), unrolled)


TINY_WAVLM = wavlm.WavLMConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                               conv_dim=(8,) * 7, num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
                               num_buckets=8, max_bucket_distance=16)
TINY_WHISPER = whisper.WhisperConfig(num_mel_bins=8, d_model=16, encoder_layers=2, encoder_attention_heads=2,
                                     encoder_ffn_dim=32, max_source_positions=8)


@pytest.mark.parametrize("module,config", [(wavlm, TINY_WAVLM), (wavlm, dataclasses.replace(
    TINY_WAVLM, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)), (whisper, TINY_WHISPER)],
                         ids=["wavlm-group", "wavlm-layer", "whisper"])
def test_every_parameter_resolves_to_a_sharding(module, config):
  """Every leaf of param_logical_axes uses the encoder vocabulary of modrwkv_jax.sharding and resolves
  with logical_to_mesh (which raises on a name without a rule or a name used twice), in both layouts."""
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  for scan in (False, True):
    cfg = dataclasses.replace(config, scan_layers=scan)
    axes = module.param_logical_axes(cfg)
    shardings = sharding.logical_to_mesh(axes, sharding.make_mesh())
    shapes = [x.shape for x in jax.tree.leaves(jax.eval_shape(lambda c=cfg: module.init_params(c, jax.random.key(0))))]
    specs = jax.tree.leaves(axes, is_leaf=is_spec)
    assert len(specs) == len(shapes) == len(jax.tree.leaves(shardings))
    for spec, shape in zip(specs, shapes):
      assert len(spec) == len(shape) and set(spec) <= sharding.rule_names() | {None}, (spec, shape)
    if scan:
      stack = axes["layers"] if module is wavlm else axes["encoder"]["layers"]
      assert all(spec[0] == "layers" for spec in jax.tree.leaves(stack, is_leaf=is_spec))


def test_wavlm_relative_position_buckets_match_transformers():
  import torch
  from transformers.models.wavlm.modeling_wavlm import WavLMAttention

  attention = WavLMAttention(32, 4, num_buckets=320, max_distance=800)
  T = 3000  # 60 s at 50 Hz
  rel = torch.arange(T)[None, :] - torch.arange(T)[:, None]
  want = attention._relative_positions_bucket(rel).numpy()
  np.testing.assert_array_equal(wavlm.relative_position_buckets(T, 320, 800), want)


def test_wavlm_bad_inputs():
  """Shapes are checked by forward (statically); values by check_inputs, on numpy inputs at the boundary."""
  config = TINY_WAVLM
  params = {}  # the checks run before the parameters are touched
  assert config.receptive_field == 400
  with pytest.raises(ValueError, match=r"399 samples is shorter than one frame \(400 samples, 25 ms"):
    wavlm.forward(config, params, jnp.zeros((1, 399)))
  with pytest.raises(ValueError, match=r"float\[B, N\]"):
    wavlm.forward(config, params, jnp.zeros((1, 1000, 1)))
  mask = np.ones((2, 1000), bool)
  mask[1, 300:] = False
  with pytest.raises(ValueError, match="clip 1 has 300 real samples, shorter than one frame"):
    wavlm.check_inputs(config, np.zeros((2, 1000), np.float32), mask)
  assert wavlm.num_tokens(config, 300) == 0 and wavlm.num_tokens(config, 400) == 1
  mask[1, 300:] = True
  mask[1, 500:510] = False
  with pytest.raises(ValueError, match=r"mask\[1\] is not a prefix"):
    wavlm.check_inputs(config, np.zeros((2, 1000), np.float32), mask)
  values = np.zeros((1, 1000), np.float32)
  values[0, 650] = np.nan
  with pytest.raises(ValueError, match=r"clip 0 has a non-finite sample \(NaN or inf\) at index 650"):
    wavlm.check_inputs(config, values)
  with pytest.raises(ValueError, match="model_type is 'whisper'"):
    wavlm.WavLMConfig.from_hf({"model_type": "whisper"})
