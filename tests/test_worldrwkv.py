"""The authors' released ModRWKV checkpoints (WorldRWKV) read and written by modrwkv_jax.models.worldrwkv.

Checkpoints are synthetic, tiny, in the official layouts (key names of worldrwkv.py's notes) and written by
torch itself (`torch.save`, `safetensors.torch.save_file`). The reference is an independent PyTorch run of the
released model's forward: transformers' `SiglipVisionModel` (`last_hidden_state`), the adapter written here
after WorldRWKV's `VisualAdapter`, and the `rwkv` package (RWKV_V7_ON, "cpu fp32") for RWKV-7, loading the
very same .pth; the modality tokens enter it as extra rows of its (ln0-folded) embedding table, which is
what WorldRWKV's `forward(..., sign=...)` computes: ln0 over cat(sign, emb[tokens]).
Tolerances: logits relative RMS error < 1e-4 in fp32 (two fp32 implementations, tests/README.md); files
written and read back are compared exactly.
"""

import json
import os
import re

import jax
import ml_collections
import numpy as np
import pytest

from modrwkv_jax import tensor_files
from modrwkv_jax.models import modrwkv, rwkv7, worldrwkv
from modrwkv_jax.training import config as C
from helpers import check

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
F = torch.nn.functional

RWKV = rwkv7.RWKV7Config(vocab_size=97, n_layer=2, n_embd=128, head_size=64, dim_w=16, dim_a=8, dim_v=4, dim_g=12,
                         dim_ffn=256)
SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=16,
              patch_size=4)  # 16 tokens of 32 features
TEXT = [23, 86, 12, 5, 60, 24, 23, 40, 33, 71, 2]  # arbitrary ids < 97
TOL = 1e-4
BLOCK0_V = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


def random_rwkv7(config, seed):
  """A random RWKV-7 state dict (RWKV-LM names and shapes, docs/formats.md#rwkv-lm-pth) with trained-like scales, drawn here in
  NumPy: LayerNorms 1 ± 0.2, token-shift mixes in (0, 1), decays spread over their range, LoRA halves ~0.1,
  projections ~1/√fan_in. Block 0 has no v0/v1/v2, as WorldRWKV's trainer saves it."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, _, shape, _ in rwkv7.checkpoint_layout(config):
    leaf = name.rsplit(".", 1)[-1] if not name.endswith((".weight", ".bias")) else name.rsplit(".", 2)[-2]
    normal = rng.standard_normal(shape)
    if name.endswith("ln0.weight") or re.search(r"ln(1|2|_x|_out)\.weight$", name):
      value = 1 + 0.2 * normal
    elif name.endswith(".bias"):
      value = 0.1 * normal
    elif leaf.startswith("x_"):
      value = rng.uniform(0, 1, shape)
    elif leaf in ("w0", "a0", "v0", "k_k", "k_a", "r_k"):
      value = {"w0": rng.uniform(-4, 1, shape), "a0": 0.5 * normal, "v0": 0.7 + 0.3 * normal,
               "k_k": 0.7 + 0.1 * normal, "k_a": 1 + 0.1 * normal, "r_k": -0.04 + 0.1 * normal}[leaf]
    elif re.fullmatch(r"[wavg][12]", leaf):
      value = 0.1 * normal
    elif name == "emb.weight":
      value = normal
    else:  # [out, in] projections, the head
      value = normal / np.sqrt(shape[1])
    out[name] = torch.from_numpy(value.astype(np.float32))
  return out


def perturb(module, seed):
  """Trained-like weights: N(0, (0.5·std + 0.05)²) added to every parameter (no zero bias, no identity LN)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      std = float(p.std()) if p.numel() > 1 else 0.0
      p.add_(torch.randn(p.shape, generator=gen) * (0.5 * std + 0.05))
  return module.eval()


class VisualAdapter(torch.nn.Module):
  """WorldRWKV's adapter (world/encoder/siglip_encoder.py, form A: `proj`; forms B/HF: `mlp`, optional conv)."""

  def __init__(self, encoder_dim, project_dim, hidden_dim, seq="proj", use_conv=False):
    super().__init__()
    self.seq = seq
    self.pre_norm = torch.nn.LayerNorm(project_dim)
    setattr(self, seq, torch.nn.Sequential(torch.nn.Linear(encoder_dim, hidden_dim), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden_dim, project_dim)))
    self.use_conv = use_conv
    if use_conv:
      self.conv = torch.nn.Conv1d(encoder_dim, encoder_dim, kernel_size=3, stride=2, bias=False)

  def forward(self, x):
    if self.use_conv:
      x = self.conv(x.permute(0, 2, 1)).permute(0, 2, 1)
    x = getattr(self, self.seq)(x)
    return x + self.pre_norm(x)


def fla_name(name):
  """RWKV-LM name -> RWKV7VLForConditionalGeneration name and whether it is transposed, after WorldRWKV's
  convert_from_rwkv7.py `translate_into_fla` (emb/head/ln_out fixed names; att -> attn with r/k/v/o_proj and
  g_norm; w/a/v/g 0,1,2 -> *_lora.lora.2.bias, .0.weight (T), .2.weight (T)), then 'model.' -> 'model.llm.'."""
  fixed = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.norm.weight",
           "ln_out.bias": "model.norm.bias", "head.weight": "lm_head.weight"}
  if name in fixed:
    out, transposed = fixed[name], False
  else:
    parts = name.split(".")
    parts[0] = "model.layers"
    parts[2] = {"att": "attn", "ffn": "ffn", "ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}[parts[2]]
    transposed = False
    if len(parts[3]) == 2 and parts[3][0] in "wvag" and parts[3][1] in "012":
      kind, num = parts[3]
      parts[3] = f"{kind}_lora.lora." + {"0": "2.bias", "1": "0.weight", "2": "2.weight"}[num]
      transposed = num in "12"
    elif parts[2] == "attn":
      parts[3] = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "ln_x": "g_norm",
                  "output": "o_proj"}.get(parts[3], parts[3])
    out = ".".join(parts)
  return out.replace("model.", "model.llm.", 1), transposed


def reference_logits(pth, sign, text):
  """The `rwkv` package on the WorldRWKV .pth `pth`, with `sign` float[L, D] prefixed: logits [L + T, V]."""
  from rwkv.model import RWKV as Package
  model = Package(model=str(pth)[:-4], strategy="cpu fp32")
  z = model.z
  V = z["head.weight"].shape[1]
  # The package folds ln0 into its embedding table; the modality rows get the same ln0.
  rows = F.layer_norm(sign.float(), (sign.shape[-1],), z["blocks.0.ln0.weight"], z["blocks.0.ln0.bias"])
  z["emb.weight"] = torch.cat([z["emb.weight"], rows])
  model.z = z  # (a TorchScript module hands out a copy of its attribute)
  logits, _ = model.forward(list(range(V, V + sign.shape[0])) + text, None, full_output=True)
  return logits.numpy()


forward = jax.jit(modrwkv.forward, static_argnums=0)


def our_logits(config, params, pixels, text):
  """Our forward on one image (channels-last) prefixed to `text`."""
  L = modrwkv.num_tokens(config, "image", 0)
  T = L + len(text)
  batch = {"tokens": np.array([[0] * L + text], np.int32),
           "image": np.asarray(pixels.numpy().transpose(0, 2, 3, 1))[:, None],
           "image_pos": np.array([list(range(L)) + [-1] * len(text)], np.int32), "mask": np.ones((1, T), bool)}
  return np.asarray(forward(config, params, batch)[0][0])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A tiny ModRWKV in WorldRWKV's form A (the released checkpoints'), its encoder snapshot and its reference."""
  tmp = tmp_path_factory.mktemp("worldrwkv")
  torch.manual_seed(0)
  encoder = perturb(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SIGLIP)), 1)
  encoder.save_pretrained(tmp / "siglip")
  D = RWKV.n_embd
  adapter = perturb(VisualAdapter(SIGLIP["hidden_size"], D, 2 * D), 2)  # m = 2, the released models'
  rwkv_sd = random_rwkv7(RWKV, 3)
  sd = dict(rwkv_sd)
  sd.update({f"modality.world_encoder.adapter.{k}": v.detach().clone() for k, v in adapter.state_dict().items()})
  torch.save(sd, tmp / "rwkv-0.pth")
  pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
  with torch.no_grad():
    sign = adapter(encoder(pixel_values=pixels).last_hidden_state)[0]
  ref = reference_logits(tmp / "rwkv-0.pth", sign, TEXT)
  return dict(tmp=tmp, encoder=encoder, adapter=adapter, rwkv_sd=rwkv_sd, sd=sd, path=tmp / "rwkv-0.pth",
              encoder_hf=str(tmp / "siglip"), pixels=pixels, ref=ref)


@pytest.fixture(scope="module")
def loaded(world):
  return worldrwkv.load_worldrwkv(world["path"], encoder_hf=world["encoder_hf"])


def test_form_a_logits_match_the_released_model(world, loaded):
  config, params = loaded
  image = config.modality("image")
  assert config.rwkv == RWKV
  assert (image.encoder, image.projector.kind, image.projector.hidden_mult, image.projector.compressor) == \
      ("siglip", "vision", 2, None)
  assert modrwkv.num_tokens(config, "image", 0) == 16
  got = our_logits(config, params, world["pixels"], TEXT)
  assert got.shape == world["ref"].shape == (16 + len(TEXT), RWKV.vocab_size)
  check("form A (rwkv-0.pth + encoder_hf) logits vs rwkv package + transformers SigLIP + torch adapter",
        got, world["ref"], TOL)


def test_encoder_weights_in_the_file_are_used(world, tmp_path):
  """A file written with the encoder trained ('moda') carries the tower: it replaces encoder_hf's weights
  (WorldRWKV: load_state_dict(strict=False) over encoder_path); encoder_hf gives only config.json."""
  tuned = perturb(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SIGLIP)), 5)
  sd = dict(world["sd"])
  sd.update({f"modality.world_encoder.model.{k}": v.detach().clone() for k, v in tuned.state_dict().items()})
  path = tmp_path / "rwkv-0.pth"
  torch.save(sd, path)
  with torch.no_grad():
    sign = world["adapter"](tuned(pixel_values=world["pixels"]).last_hidden_state)[0]
  ref = reference_logits(path, sign, TEXT)
  config, params = worldrwkv.load_worldrwkv(path, encoder_hf=world["encoder_hf"])
  check("form A with the encoder in the file", our_logits(config, params, world["pixels"], TEXT), ref, TOL)
  # Without a snapshot the tiny tower matches no SigLIP preset: its head count is unknown.
  with pytest.raises(ValueError, match=r"rwkv-0\.pth.*no SigLIP preset.*encoder_hf"):
    worldrwkv.load_worldrwkv(path)


@pytest.fixture(scope="module")
def hf_folder(world):
  """WorldRWKV/ModRWKV-0.4's form: config.json + one model.safetensors (model.llm.*, lm_head.weight, model.proj.*,
  model.encoder.vision_model.*), here with the adapter of the Jul-2025+ code: hidden 4·D and the stride-2 conv."""
  from safetensors.torch import save_file
  folder = world["tmp"] / "ModRWKV-hf"
  folder.mkdir()
  D, C_enc = RWKV.n_embd, SIGLIP["hidden_size"]
  adapter = perturb(VisualAdapter(C_enc, D, 4 * D, seq="mlp", use_conv=True), 6)
  tensors = {}
  for name, value in world["rwkv_sd"].items():
    hf, transposed = fla_name(name)
    value = value.t() if transposed else value
    tensors[hf] = value.reshape(-1).clone() if name.endswith(("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0",
                                                              "a0", "v0", "k_k", "k_a", "ffn.x_k")) \
        else value.contiguous().clone()
  tensors.update({f"model.proj.{k}": v.detach().clone() for k, v in adapter.state_dict().items()})
  tensors.update({f"model.encoder.vision_model.{k}": v.detach().clone()
                  for k, v in world["encoder"].state_dict().items()})
  save_file(tensors, str(folder / "model.safetensors"))
  config = {"architectures": ["RWKV7VLForConditionalGeneration"], "encoder_type": "siglip2",
            "text_config": {"hidden_size": D, "num_hidden_layers": RWKV.n_layer, "model_type": "rwkv7_vl"},
            "vision_config": {"encoder_path": "/home/rwkv/models/siglip"},
            "proj_config": {"encoder_dim": C_enc, "project_dim": D, "use_conv": True}}
  (folder / "config.json").write_text(json.dumps(config))
  with torch.no_grad():
    sign = adapter(world["encoder"](pixel_values=world["pixels"]).last_hidden_state)[0]
  ref = reference_logits(world["path"], sign, TEXT)  # the same RWKV-7 weights, RWKV-LM names
  return dict(path=str(folder), tensors=tensors, config=config, ref=ref)


def test_hf_folder_logits_match(world, hf_folder):
  # The tower's weights are in model.safetensors; the tiny tower matches no SigLIP preset, so a snapshot's
  # config.json gives its head count.
  config, params = worldrwkv.load_worldrwkv(hf_folder["path"], encoder_hf=world["encoder_hf"])
  image = config.modality("image")
  assert config.rwkv == RWKV and image.projector.hidden_mult == 4 and image.projector.compressor == (3, 2)
  assert modrwkv.num_tokens(config, "image", 0) == 7  # ⌊(16 − 3)/2⌋ + 1
  check("HF folder (RWKV7VLForConditionalGeneration names) logits", our_logits(config, params, world["pixels"], TEXT),
        hf_folder["ref"], TOL)
  assert worldrwkv.is_worldrwkv_checkpoint(hf_folder["path"])


def test_form_b_reads_as_form_a(world, loaded, tmp_path):
  """Form B (Aug-2025 trainer: llm.*, proj.mlp.*, proj.pre_norm.*) holds the same modules under other names."""
  sd = {f"llm.{k}": v for k, v in world["rwkv_sd"].items()}
  sd.update({f"proj.{k.replace('proj.', 'mlp.', 1)}": v.detach().clone()
             for k, v in world["adapter"].state_dict().items()})
  path = tmp_path / "rwkv-b.pth"
  torch.save(sd, path)
  assert worldrwkv.is_worldrwkv_checkpoint(path)
  config, params = worldrwkv.load_worldrwkv(path, encoder_hf=world["encoder_hf"])
  assert config == loaded[0]
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded[1])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_save_then_load_is_exact(world, loaded, tmp_path, scan):
  config, params = loaded
  if scan:
    config, params = worldrwkv.load_worldrwkv(world["path"], encoder_hf=world["encoder_hf"], scan_layers=True)
  path = tmp_path / "ours.pth"
  worldrwkv.save_worldrwkv(config, params, path, with_encoder=scan)  # scanned: the tower is written too
  # The file is a plain torch state dict with the released checkpoints' key names (+ block 0's unused v0/v1/v2).
  saved = torch.load(path, weights_only=True)
  tower = {k for k in saved if k.startswith("modality.world_encoder.model.")}
  assert bool(tower) == scan
  assert set(saved) - tower == set(world["sd"]) | set(BLOCK0_V)
  for k, v in world["sd"].items():
    assert saved[k].shape == v.shape, k
  again_config, again = worldrwkv.load_worldrwkv(path, encoder_hf=world["encoder_hf"], scan_layers=scan)
  assert again_config == config
  assert jax.tree.structure(again) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_save_with_encoder_round_trips_the_tower(world, loaded, tmp_path):
  config, params = loaded
  path = tmp_path / "moda.pth"
  worldrwkv.save_worldrwkv(config, params, path, with_encoder=True)
  saved = tensor_files.read_pth(path)
  tower = {k[len("modality.world_encoder.model."):]: v for k, v in saved.items()
           if k.startswith("modality.world_encoder.model.")}
  reference = {k: v.numpy() for k, v in world["encoder"].state_dict().items() if not k.startswith("head.")}
  assert set(tower) == set(reference)  # the HF SiglipVisionTransformer names (the unused MAP head left out)
  for k, v in reference.items():
    np.testing.assert_array_equal(tower[k], v, err_msg=k)
  # Read back with a snapshot that holds other weights: the file's tower wins, bit for bit.
  other = tmp_path / "other-siglip"
  perturb(transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SIGLIP)), 9).save_pretrained(other)
  _, again = worldrwkv.load_worldrwkv(path, encoder_hf=other)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Errors name the file and the key.


def _write(tmp_path, sd, name="bad.pth"):
  path = tmp_path / name
  tensor_files.write_pth({k: np.asarray(v, np.float32) for k, v in sd.items()}, path)
  return str(path)


def _numpy(world):
  return {k: v.detach().numpy() for k, v in world["sd"].items()}


@pytest.mark.parametrize("key", ["modality.world_encoder.adapter.pre_norm.bias", "blocks.1.att.w1"])
def test_missing_key_names_file_and_key(world, tmp_path, key):
  sd = _numpy(world)
  del sd[key]
  path = _write(tmp_path, sd)
  with pytest.raises(ValueError, match=re.escape(f"{path}: missing key '{key}'")):
    worldrwkv.load_worldrwkv(path, encoder_hf=world["encoder_hf"])


@pytest.mark.parametrize("key", ["modality.world_encoder.adapter.proj.2.weight", "blocks.1.att.w1",
                                 "modality.world_encoder.adapter.pre_norm.weight"])
def test_misshaped_key_names_file_and_key(world, tmp_path, key):
  sd = _numpy(world)
  sd[key] = np.zeros((sd[key].shape[0] + 1, *sd[key].shape[1:]), np.float32)
  path = _write(tmp_path, sd)
  with pytest.raises(ValueError, match=re.escape(f"{path}: key '{key}' has shape")):
    worldrwkv.load_worldrwkv(path, encoder_hf=world["encoder_hf"])


def test_hf_errors_use_the_folder_s_names(world, hf_folder, tmp_path):
  from safetensors.numpy import save_file
  folder = tmp_path / "broken-hf"
  folder.mkdir()
  tensors = {k: v.numpy() for k, v in hf_folder["tensors"].items()}
  del tensors["model.llm.layers.1.attn.w_lora.lora.0.weight"]
  save_file(tensors, str(folder / "model.safetensors"))
  (folder / "config.json").write_text(json.dumps(hf_folder["config"]))
  with pytest.raises(ValueError, match=r"broken-hf: missing key 'model\.llm\.layers\.1\.attn\.w_lora\.lora\.0\.weight' "
                                       r"\(RWKV-LM name 'blocks\.1\.att\.w1'\)"):
    worldrwkv.load_worldrwkv(folder)
  # proj_config that contradicts the weights is refused.
  tensors = {k: v.numpy() for k, v in hf_folder["tensors"].items()}
  save_file(tensors, str(folder / "model.safetensors"))
  (folder / "config.json").write_text(json.dumps({**hf_folder["config"], "proj_config": {"project_dim": 128}}))
  with pytest.raises(ValueError, match=r"proj_config disagrees.*use_conv=False \(the weights hold True\)"):
    worldrwkv.load_worldrwkv(folder, encoder_hf=world["encoder_hf"])


def test_other_adapters_and_missing_encoder_are_refused(world, tmp_path):
  sd = _numpy(world)
  path = _write(tmp_path, sd, "no-encoder.pth")
  with pytest.raises(ValueError, match=r"no-encoder\.pth: holds no encoder weights.*encoder_hf="):
    worldrwkv.load_worldrwkv(path)
  odd = dict(sd)  # a hidden width our adapter cannot express (not a multiple of D)
  odd["modality.world_encoder.adapter.proj.0.weight"] = np.zeros((200, 32), np.float32)
  path = _write(tmp_path, odd, "odd.pth")
  with pytest.raises(ValueError, match=r"odd\.pth: key 'modality\.world_encoder\.adapter\.proj\.0\.weight'.*not a "
                                       r"multiple of the RWKV-7 width D=128"):
    worldrwkv.load_worldrwkv(path, encoder_hf=world["encoder_hf"])
  extra = dict(sd)
  extra["modality.world_encoder.adapter.proj.4.weight"] = np.zeros((4, 4), np.float32)
  path = _write(tmp_path, extra, "extra.pth")
  with pytest.raises(ValueError, match=r"extra\.pth: unexpected keys \['modality\.world_encoder\.adapter\.proj\.4"):
    worldrwkv.load_worldrwkv(path, encoder_hf=world["encoder_hf"])


def test_is_worldrwkv_checkpoint(world, tmp_path):
  assert worldrwkv.is_worldrwkv_checkpoint(world["path"])
  plain = tmp_path / "rwkv7.pth"
  torch.save(world["rwkv_sd"], plain)  # an RWKV-7 .pth: not WorldRWKV
  assert not worldrwkv.is_worldrwkv_checkpoint(plain)
  assert not worldrwkv.is_worldrwkv_checkpoint(world["encoder_hf"])  # an HF folder without encoder_type
  assert not worldrwkv.is_worldrwkv_checkpoint(tmp_path / "nothing-here")
  text = tmp_path / "notes.txt"
  text.write_text("not a checkpoint")
  assert not worldrwkv.is_worldrwkv_checkpoint(text)
  with pytest.raises(ValueError, match=r"rwkv7\.pth: not a WorldRWKV checkpoint"):
    worldrwkv.load_worldrwkv(plain)


# ---------------------------------------------------------------------------------------------
# configs/released: the released architecture per preset.

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "released")
RELEASED = {"modrwkv_0.4b_siglip2.py": "0.4B", "modrwkv_1.5b_siglip2.py": "1.5B", "modrwkv_3b_siglip2.py": "2.9B"}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_configs_describe_the_released_models(name, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # configs find their siblings from any working directory
  path = os.path.join(CONFIG_DIR, name)
  c = C.load_config_file(path)
  with open(path, encoding="utf-8") as f:
    assert f.read().lstrip().startswith('"""')
  model = C.model_config(c)
  preset = rwkv7.preset(RELEASED[name])
  assert all(getattr(model.rwkv, f) == getattr(preset, f) for f in rwkv7._SIZE_FIELDS)
  image = model.modality("image")
  assert image.encoder == "siglip" and not image.train_encoder and not image.encoder_config.naflex
  assert (image.encoder_config.image_size, image.encoder_config.patch_size, image.encoder_config.hidden_size) == \
      (384, 16, 768)
  assert image.projector == type(image.projector)("vision", 768, preset.n_embd, None, 2)
  assert modrwkv.num_tokens(model, "image", 0) == 576
  assert c.init.encoder_hf.image == "weights/siglip2-base-patch16-384"
  assert c.data.image.size == 384 and c.data.layout == "prefix"
  again = ml_collections.ConfigDict(json.loads(C.to_json(c)))  # the resolved config eval.py writes reads back
  C.check_schema(again, source=f"{path} (json)")
  assert C.model_config(again) == model
