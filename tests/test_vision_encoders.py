"""SigLIP / SigLIP2 / CLIP vision towers against transformers' PyTorch models.

References: `SiglipVisionModel`, `SiglipModel`, `Siglip2VisionModel` and `CLIPVisionModel` / `CLIPModel`
(transformers 5.x), built offline from tiny config objects with every parameter perturbed (so no
bias is zero and no LayerNorm is the identity), saved with `save_pretrained` and read back with our
torch-free `load_hf`, in both layer layouts (unrolled `layers_i`, and scanned: one `layers` stack).
Tolerance: relative RMS error < 1e-5 in float32 for every output compared (`last_hidden_state`, every
`hidden_states` entry, the pooler output); bfloat16 compute < 2e-2.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modrwkv_jax import sharding
from modrwkv_jax.data import image as im
from modrwkv_jax.models.encoders import clip, siglip, transformer
from modrwkv_jax.models.encoders.transformer import EncoderLayer, layer_params_from_hf, logical_axes

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64,
                 bos_token_id=None, eos_token_id=None, pad_token_id=None)

siglip_forward = jax.jit(siglip.forward_all, static_argnums=0)
clip_forward = jax.jit(clip.forward_all, static_argnums=0)


def rel_rms(x, ref) -> float:
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.sqrt(np.mean((x - ref) ** 2) / np.mean(ref ** 2)))


def perturb(model, seed: int):
  """Adds N(0, (0.5·std + 0.05)²) noise to every parameter: trained-like, nothing zero or one."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      std = float(p.float().std()) if p.numel() > 1 else 0.0
      p.add_(torch.randn(p.shape, generator=gen) * (0.5 * std + 0.05))
  return model.eval()


def nhwc(x):
  return jnp.asarray(x.float().numpy().transpose(0, 2, 3, 1))


LAYOUTS = pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])


def save(model, folder, **kwargs):
  model.save_pretrained(folder, **kwargs)
  return str(folder)


@pytest.fixture(scope="module")
def siglip_model(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.SiglipVisionConfig(**TINY, image_size=32, patch_size=8)
  model = perturb(transformers.SiglipVisionModel(config), 1)
  return model, save(model, tmp_path_factory.mktemp("siglip"))


@pytest.fixture(scope="module")
def siglip2_fixed_full(tmp_path_factory):
  """A two-tower SiglipModel with SigLIP2-style fixed resolution (model_type 'siglip', keys 'vision_model.')."""
  torch.manual_seed(1)
  config = transformers.SiglipConfig(vision_config=dict(TINY, image_size=24, patch_size=6), text_config=TINY_TEXT)
  model = perturb(transformers.SiglipModel(config), 2)
  return model, save(model, tmp_path_factory.mktemp("siglip_full"))


@pytest.fixture(scope="module")
def naflex_model(tmp_path_factory):
  torch.manual_seed(2)
  config = transformers.Siglip2VisionConfig(**TINY, num_patches=16, patch_size=4)
  model = perturb(transformers.Siglip2VisionModel(config), 3)
  return model, save(model, tmp_path_factory.mktemp("siglip2"))


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
  torch.manual_seed(3)
  config = transformers.CLIPVisionConfig(**dict(TINY, num_hidden_layers=3), image_size=30, patch_size=8)
  model = perturb(transformers.CLIPVisionModel(config), 4)
  return model, save(model, tmp_path_factory.mktemp("clip"))


@LAYOUTS
def test_siglip_matches_transformers(siglip_model, scan):
  model, folder = siglip_model
  config, params = siglip.load_hf(folder, with_head=True, scan_layers=scan)
  assert ("layers" in params["encoder"]) == scan and config.scan_layers == scan
  assert (config.hidden_size, config.num_layers, config.image_size, config.patch_size) == (32, 2, 32, 8)
  pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    ref = model(pixel_values=pixels, output_hidden_states=True)
  out = siglip_forward(config, params, nhwc(pixels))
  errors = {"last_hidden_state": rel_rms(out.last_hidden_state, ref.last_hidden_state),
            "pooler_output": rel_rms(out.pooler_output, ref.pooler_output)}
  errors.update({f"hidden_states[{i}]": rel_rms(a, b) for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states))})
  print(f"SigLIP ({'scanned' if scan else 'unrolled'}) rel-RMS vs SiglipVisionModel: {errors}")
  assert len(out.hidden_states) == len(ref.hidden_states) == 3
  assert max(errors.values()) < TOL, errors
  # forward = the ModRWKV features: last_hidden_state [B, (32/8)², 32], no head needed
  config_nohead, params_nohead = siglip.load_hf(folder, scan_layers=scan)
  assert "head" not in params_nohead and not config_nohead.use_head
  features, mask = siglip.encode(config_nohead, params_nohead, nhwc(pixels))
  assert features.shape == (3, 16, 32) and bool(mask.all())
  assert siglip.num_tokens(config_nohead, 32 * 32) == 16
  assert rel_rms(features, ref.last_hidden_state) < TOL


def test_siglip2_fixed_resolution_full_checkpoint(siglip2_fixed_full):
  """A full two-tower checkpoint: vision keys under 'vision_model.', the text tower is ignored."""
  model, folder = siglip2_fixed_full
  config, params = siglip.load_hf(folder)
  assert not config.naflex and config.image_size == 24
  pixels = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    ref = model.vision_model(pixel_values=pixels, output_hidden_states=True)
  out = siglip_forward(config, params, nhwc(pixels))
  err = rel_rms(out.last_hidden_state, ref.last_hidden_state)
  err_mid = rel_rms(out.hidden_states[1], ref.hidden_states[1])
  print(f"SigLIP2 fixed-res (full SiglipModel) rel-RMS: last {err:.3g}, hidden_states[1] {err_mid:.3g}")
  assert err < TOL and err_mid < TOL


# NaFlex spatial shapes (rows, cols) from a 4×4 position grid: upsampled, downsampled (antialiased),
# mixed, a single patch, and an image using every one of the 40 patch slots.
NAFLEX_SHAPES = [(5, 8), (3, 2), (4, 4), (2, 13), (1, 1), (4, 10)]


@LAYOUTS
def test_siglip2_naflex_matches_transformers(naflex_model, scan):
  model, folder = naflex_model
  config, params = siglip.load_hf(folder, with_head=True, scan_layers=scan)
  assert config.naflex and config.num_patches == 16
  L = 40
  shapes = torch.tensor(NAFLEX_SHAPES)
  pixels = torch.randn(len(shapes), L, config.patch_dim, generator=torch.Generator().manual_seed(2))
  mask = (torch.arange(L)[None] < (shapes[:, 0] * shapes[:, 1])[:, None]).long()
  with torch.no_grad():
    ref = model(pixel_values=pixels, pixel_attention_mask=mask, spatial_shapes=shapes, output_hidden_states=True)
  out = siglip_forward(config, params, jnp.asarray(pixels.numpy()), jnp.asarray(mask.numpy()),
                       jnp.asarray(shapes.numpy()))
  errors = {"last_hidden_state": rel_rms(out.last_hidden_state, ref.last_hidden_state),
            "embeddings": rel_rms(out.hidden_states[0], ref.hidden_states[0]),
            "pooler_output": rel_rms(out.pooler_output, ref.pooler_output)}
  print(f"SigLIP2 NaFlex ({'scanned' if scan else 'unrolled'}) rel-RMS vs Siglip2VisionModel: {errors}")
  assert max(errors.values()) < TOL, errors
  # The encoder interface: the patch mask comes back as the token mask; num_tokens counts the real
  # patches of an image of n = h·w·p² pixels (the data layer's measure).
  siglip.check_inputs(config, pixels.numpy(), mask.numpy(), shapes.numpy())
  token_mask = jax.jit(lambda m: siglip.encode(config, params, jnp.asarray(pixels.numpy()), m,  # features DCE'd
                                               spatial_shapes=jnp.asarray(shapes.numpy()))[1])(mask.numpy())
  np.testing.assert_array_equal(token_mask, mask.numpy().astype(bool))
  assert [siglip.num_tokens(config, h * w * 16) for h, w in NAFLEX_SHAPES] == list(mask.numpy().sum(1))


def test_siglip2_naflex_end_to_end_with_processor(naflex_model):
  """Our processor + encoder == HF Siglip2ImageProcessorPil + Siglip2VisionModel on drawn images."""
  from test_image_preprocessing import draw_scene
  model, folder = naflex_model
  config, params = siglip.load_hf(folder)
  images = [draw_scene(50, 30, 0), draw_scene(17, 61, 1).convert("L")]
  hf = transformers.Siglip2ImageProcessorPil(patch_size=4, max_num_patches=24, do_convert_rgb=True)(
      images, return_tensors="pt")
  batch = im.preprocess_batch(images, im.default_config("siglip2", patch_size=4, max_num_patches=24))
  with torch.no_grad():
    ref = model(**hf).last_hidden_state
  ours = siglip.forward(config, params, jnp.asarray(batch["pixel_values"]), jnp.asarray(batch["pixel_attention_mask"]),
                        jnp.asarray(batch["spatial_shapes"]))
  real = batch["pixel_attention_mask"]
  assert rel_rms(np.asarray(ours)[real], ref.numpy()[real]) < TOL


@LAYOUTS
def test_clip_matches_transformers(clip_model, scan):
  """CLIP: final layer incl. CLS before post-LN (ModRWKV), the penultimate layer (LLaVA), the pooler."""
  model, folder = clip_model
  config, params = clip.load_hf(folder, scan_layers=scan)
  assert (config.num_layers, config.image_size, config.num_positions, config.activation) == (3, 30, 10, "quick_gelu")
  pixels = torch.randn(2, 3, 30, 30, generator=torch.Generator().manual_seed(3))
  with torch.no_grad():
    ref = model(pixel_values=pixels, output_hidden_states=True)
  out = clip_forward(config, params, nhwc(pixels))
  errors = {"last_hidden_state": rel_rms(out.last_hidden_state, ref.last_hidden_state),
            "pooler_output": rel_rms(out.pooler_output, ref.pooler_output)}
  errors.update({f"hidden_states[{i}]": rel_rms(a, b) for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states))})
  print(f"CLIP ({'scanned' if scan else 'unrolled'}) rel-RMS vs CLIPVisionModel: {errors}")
  assert max(errors.values()) < TOL, errors
  features = clip.forward(config, params, nhwc(pixels))  # ModRWKV: [B, 1 + 9, C]
  assert features.shape == (2, 10, 32) and rel_rms(features, ref.last_hidden_state) < TOL
  llava, mask = clip.encode(config, params, nhwc(pixels), layer=-2, drop_cls=True)  # a scanned stack is sliced
  assert llava.shape == (2, 9, 32) and rel_rms(llava, ref.hidden_states[-2][:, 1:]) < TOL
  assert mask.shape == (2, 9) and clip.num_tokens(config, 30 * 30, layer=-2, drop_cls=True) == 9
  assert clip.num_tokens(config, 30 * 30) == 10


def test_clip_full_checkpoint(tmp_path):
  torch.manual_seed(4)
  config = transformers.CLIPConfig(vision_config=dict(TINY, image_size=16, patch_size=8), text_config=TINY_TEXT,
                                   projection_dim=8)
  model = perturb(transformers.CLIPModel(config), 5)
  cfg, params = clip.load_hf(save(model, tmp_path / "clip_full"))
  pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
  with torch.no_grad():
    ref = model.vision_model(pixel_values=pixels, output_hidden_states=True)
  err = rel_rms(clip.forward(cfg, params, nhwc(pixels)), ref.last_hidden_state)
  err_mid = rel_rms(clip.forward(cfg, params, nhwc(pixels), layer=1), ref.hidden_states[1])
  print(f"CLIP (full CLIPModel) rel-RMS: last {err:.3g}, hidden_states[1] {err_mid:.3g}")
  assert err < TOL and err_mid < TOL


def test_bf16_and_sharded_checkpoints(siglip_model, tmp_path):
  """A bfloat16 save loads exactly (compared with the bf16-rounded torch model in fp32); a sharded
  save (several safetensors + index) loads the same params; bf16 compute stays within 2e-2."""
  model, folder = siglip_model
  _, params32 = siglip.load_hf(folder)
  sharded = save(model, tmp_path / "sharded", max_shard_size="20KB")
  assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
  _, params_sharded = siglip.load_hf(sharded)
  jax.tree.map(np.testing.assert_array_equal, params_sharded, params32)

  bf16_model = transformers.SiglipVisionModel.from_pretrained(folder, dtype=torch.bfloat16)
  bf16_folder = save(bf16_model, tmp_path / "bf16")
  header = open(f"{bf16_folder}/model.safetensors", "rb").read(2000)
  assert b'"BF16"' in header
  config, params = siglip.load_hf(bf16_folder)
  pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
  with torch.no_grad():
    ref = bf16_model.float()(pixel_values=pixels).last_hidden_state
  err = rel_rms(siglip_forward(config, params, nhwc(pixels)).last_hidden_state, ref)
  config_bf16 = config.replace(dtype="bfloat16")
  out_bf16 = siglip_forward(config_bf16, params, nhwc(pixels)).last_hidden_state
  err_bf16 = rel_rms(out_bf16.astype(jnp.float32), ref)
  print(f"bf16 checkpoint: fp32 compute rel-RMS {err:.3g}; bf16 compute rel-RMS {err_bf16:.3g}")
  assert out_bf16.dtype == jnp.bfloat16
  assert err < TOL and err_bf16 < 2e-2


def test_shared_encoder_layer_whisper_names():
  """EncoderLayer with Whisper's names and no k_proj bias == WhisperEncoderLayer (exact erf GELU, eps 1e-5)."""
  from transformers.models.whisper.modeling_whisper import WhisperConfig, WhisperEncoderLayer
  from modrwkv_jax.models.encoders.transformer import WHISPER_LAYER_NAMES
  torch.manual_seed(5)
  whisper_config = WhisperConfig(d_model=32, encoder_attention_heads=4, encoder_ffn_dim=64)
  whisper_config._attn_implementation = "eager"
  layer = perturb(WhisperEncoderLayer(whisper_config), 6)
  sd = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
  params = layer_params_from_hf(lambda name, shape: sd[name], "", 32, 64, WHISPER_LAYER_NAMES, key_bias=False)
  assert "bias" not in params["self_attn"]["k_proj"]
  x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(6))
  with torch.no_grad():
    ref = layer(x, attention_mask=None)
  ref = ref[0] if isinstance(ref, tuple) else ref
  ours = EncoderLayer(4, 64, "gelu", eps=1e-5, key_bias=False).apply({"params": params}, jnp.asarray(x.numpy()))
  assert rel_rms(ours, ref) < TOL
  layer_axes = logical_axes(EncoderLayer(4, 64), jnp.zeros((1, 3, 32)))
  assert layer_axes["self_attn"]["q_proj"]["kernel"] == jax.sharding.PartitionSpec("enc_embed", "enc_qkv")
  assert layer_axes["self_attn"]["out_proj"]["kernel"] == jax.sharding.PartitionSpec("enc_qkv", "enc_embed")
  assert layer_axes["mlp"]["fc2"]["kernel"] == jax.sharding.PartitionSpec("enc_mlp", "enc_embed")


TINY_CONFIGS = {
    "siglip": (siglip, siglip.SiglipConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                                           patch_size=4, image_size=8, use_head=True)),
    "siglip2-naflex": (siglip, siglip.SiglipConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                                                   patch_size=4, image_size=None, naflex=True, num_patches=4)),
    "clip": (clip, clip.CLIPConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, patch_size=4,
                                   image_size=8)),
}


def _specs(tree):
  return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_every_parameter_resolves_to_a_sharding(name):
  """Every leaf of param_logical_axes uses the encoder vocabulary of modrwkv_jax.sharding and resolves
  with logical_to_mesh (which raises on a name without a rule or a name used twice), in both layouts."""
  module, config = TINY_CONFIGS[name]
  for scan in (False, True):
    cfg = config.replace(scan_layers=scan)
    axes = module.param_logical_axes(cfg)
    shardings = sharding.logical_to_mesh(axes, sharding.make_mesh())
    shapes = [x.shape for x in jax.tree.leaves(jax.eval_shape(lambda c=cfg: module.init_params(c, jax.random.key(0))))]
    assert len(_specs(axes)) == len(shapes) == len(jax.tree.leaves(shardings))
    for spec, shape in zip(_specs(axes), shapes):
      assert len(spec) == len(shape), (spec, shape)
      assert set(spec) <= sharding.rule_names() | {None}, spec
    if scan:
      assert all(spec[0] == "layers" for spec in _specs(axes["encoder"]["layers"]))
  assert axes["encoder"]["layers"]["self_attn"]["q_proj"]["kernel"] == jax.sharding.PartitionSpec(
      "layers", "enc_embed", "enc_qkv")


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_load_builds_params_without_init_and_places_them(kind, siglip_model, clip_model, monkeypatch):
  """load_hf builds params from the file alone (the random initialiser is patched to raise), in the
  layout asked for; with a mesh every leaf carries its NamedSharding. stack/unstack_layers convert the
  unrolled layout into the scanned one and back, exactly."""
  module, folder = (siglip, siglip_model[1]) if kind == "siglip" else (clip, clip_model[1])
  _, unrolled = module.load_hf(folder)

  def refuse(*args, **kwargs):
    raise AssertionError("load_hf ran the random initialiser")

  monkeypatch.setattr(module, "init_params", refuse)
  monkeypatch.setattr(module, "_init_boxed", refuse)
  mesh = sharding.make_mesh()
  config, scanned = module.load_hf(folder, scan_layers=True, mesh=mesh)
  want = sharding.logical_to_mesh(module.param_logical_axes(config), mesh)
  for leaf, named in zip(jax.tree.leaves(scanned), jax.tree.leaves(want)):
    assert leaf.sharding == named
  assert "layers_0" not in scanned["encoder"] and scanned["encoder"]["layers"]["mlp"]["fc1"]["kernel"].shape[0] == \
      config.num_layers
  jax.tree.map(np.testing.assert_array_equal, transformer.stack_layers(unrolled), scanned)
  jax.tree.map(np.testing.assert_array_equal, transformer.unstack_layers(scanned), unrolled)


# ---------------------------------------------------------------------------------------------
# Bad inputs: errors name the file, key or shape.


def _copy(folder, tmp_path, name):
  target = tmp_path / name
  shutil.copytree(folder, target)
  return target


def _edit_tensors(folder, edit):
  from safetensors.numpy import load_file, save_file
  file = folder / "model.safetensors"
  tensors = load_file(file)
  edit(tensors)
  save_file(tensors, file, metadata={"format": "pt"})


def test_unknown_model_type(siglip_model, tmp_path):
  folder = _copy(siglip_model[1], tmp_path, "bert")
  config = json.loads((folder / "config.json").read_text())
  (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
  with pytest.raises(ValueError, match=r"bert/config.json: model_type 'bert' is not a SigLIP"):
    siglip.load_hf(folder)
  with pytest.raises(ValueError, match=r"config.json: model_type 'siglip_vision_model' is not a CLIP"):
    clip.load_hf(siglip_model[1])


def test_missing_and_misshaped_tensors(siglip_model, clip_model, tmp_path):
  missing = _copy(siglip_model[1], tmp_path, "missing")
  _edit_tensors(missing, lambda t: t.pop("encoder.layers.1.mlp.fc2.weight"))
  with pytest.raises(KeyError, match=r"missing: missing tensor 'encoder.layers.1.mlp.fc2.weight'"):
    siglip.load_hf(missing)
  bad = _copy(clip_model[1], tmp_path, "misshaped")
  _edit_tensors(bad, lambda t: t.update({"encoder.layers.0.self_attn.q_proj.weight": np.zeros((32, 16), np.float32)}))
  with pytest.raises(ValueError, match=r"misshaped: tensor 'encoder.layers.0.self_attn.q_proj.weight' has shape "
                                       r"\(32, 16\); expected \(32, 32\)"):
    clip.load_hf(bad)
  extra = _copy(siglip_model[1], tmp_path, "extra")  # config says 2 layers, checkpoint has a third
  _edit_tensors(extra, lambda t: t.update({"encoder.layers.2.layer_norm1.weight": np.ones(32, np.float32)}))
  with pytest.raises(ValueError, match=r"extra: 1 unexpected tensors.*encoder.layers.2"):
    siglip.load_hf(extra)
  nohead = _copy(siglip_model[1], tmp_path, "nohead")
  _edit_tensors(nohead, lambda t: [t.pop(k) for k in list(t) if k.startswith("head.")])
  with pytest.raises(KeyError, match=r"nohead: with_head=True but the checkpoint has no attention-pooling head"):
    siglip.load_hf(nohead, with_head=True)


def test_wrong_pixel_tensors(siglip_model, naflex_model, clip_model):
  """Shapes are checked by forward (statically); values by check_inputs, on numpy inputs at the boundary."""
  config, params = siglip.load_hf(siglip_model[1])
  with pytest.raises(ValueError, match=r"pixels have shape \(1, 24, 24, 3\); this checkpoint expects float\[B, 32, 32, 3\]"):
    siglip.forward(config, params, jnp.zeros((1, 24, 24, 3)))
  with pytest.raises(ValueError, match=r"\(1, 3, 32, 32\), which looks channels-first"):
    siglip.forward(config, params, jnp.zeros((1, 3, 32, 32)))
  config, params = clip.load_hf(clip_model[1])
  with pytest.raises(ValueError, match=r"clip.forward: pixels have shape \(2, 32, 32, 3\)"):
    clip.forward(config, params, jnp.zeros((2, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"layer=4 is outside the 4 hidden states"):
    clip.forward(config, params, jnp.zeros((1, 30, 30, 3)), layer=4)
  config, params = siglip.load_hf(naflex_model[1])
  with pytest.raises(ValueError, match=r"NaFlex pixels have shape \(1, 8, 47\); expected patchified float\[B, L, 48\]"):
    siglip.forward(config, params, jnp.zeros((1, 8, 47)), jnp.ones((1, 8)), jnp.array([[2, 4]]))
  with pytest.raises(ValueError, match=r"needs spatial_shapes"):
    siglip.forward(config, params, jnp.zeros((1, 8, 48)))
  with pytest.raises(ValueError, match=r"check_inputs: spatial_shapes\[0\] = \(3, 4\) must be positive with h·w <= 8"):
    siglip.check_inputs(config, np.zeros((1, 8, 48)), np.ones((1, 8)), np.array([[3, 4]]))
  mask = np.ones((2, 8), bool)
  mask[1, 6:] = False
  with pytest.raises(ValueError, match=r"pixel_attention_mask\[1\] has 6 real patches, not the first h·w = 4"):
    siglip.check_inputs(config, np.zeros((2, 8, 48)), mask, np.array([[2, 4], [2, 2]]))
  siglip.check_inputs(config, np.zeros((2, 8, 48)), np.arange(8)[None] < np.array([[8], [4]]), np.array([[2, 4], [2, 2]]))
  config, _ = clip.load_hf(clip_model[1])
  bad = np.zeros((2, 30, 30, 3), np.float32)
  bad[1, 3, 4, 0] = np.nan
  with pytest.raises(ValueError, match=r"clip.check_inputs: image 1 holds NaN or inf"):
    clip.check_inputs(config, bad)
