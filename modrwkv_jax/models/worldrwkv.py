"""The authors' released ModRWKV checkpoints (WorldRWKV) in and out of our ModRWKV (docs/architecture.md, docs/formats.md).

`load_worldrwkv(path, encoder_hf)` reads the three on-disk forms WorldRWKV has used for a
SigLIP(2) vision model into (ModRWKVConfig, params), without torch and without running pickle code
(`tensor_files.read_pth` / `read_safetensors_dir`); `save_worldrwkv(config, params, path)` writes ours
in the form the released checkpoints have (and WorldRWKV's `infer/worldmodel.py` of that time
reads); `is_worldrwkv_checkpoint(path)` tells eval.py which loader to use.

What follows was read in the public source, Joluck/WorldRWKV (formerly JL-er/WorldRWKV), at the
commits named; "A", "B", "HF" name the three forms.

Released models and their form
  WorldRWKV/RWKV7-{0.4B,1.5B,3B}-siglip2 on the Hugging Face hub (model cards: "Model date: Feb, 2025";
  file `rwkv-0.pth`; `Worldinfer(model_path='.../rwkv-0', encoder_type='siglip',
  encoder_path='google/siglip2-base-patch16-384')`) are form A, written by the trainer of
  be6c6027f15aea3a884955a5bb2f2b4c4fa34a68 (2025-02-28) .. 35ab588998ffb335a355c8f4c4a256d55c36045f
  (2025-03-17). Model-card scores (VQAv2 / TextVQA / GQA / ScienceQA): 0.4B 72.04 / 38.75 / 55.52 / 43.32,
  3B 78.30 / 51.09 / 60.75 / 70.93. WorldRWKV/ModRWKV-0.4 is form HF (config.json below).

Form A: one `.pth` (35ab588, src/trainer.py `on_train_epoch_end`, world/model.py, world/world_load.py)
  `pl_module.state_dict()` of `RWKV(args, modality=WorldEncoder(...))`, so
    RWKV-7 keys at the top level, exactly docs/formats.md#rwkv-lm-pth's names, but no `blocks.0.att.v0/v1/v2`
      (src/rwkv7/Time_mix.py creates v0/v1/v2 only for layer_id != 0);
    modality.world_encoder.adapter.proj.0.{weight [m·D, C_enc], bias [m·D]}      nn.Linear
    modality.world_encoder.adapter.proj.2.{weight [D, m·D], bias [D]}            nn.Linear
    modality.world_encoder.adapter.pre_norm.{weight, bias} [D]                   nn.LayerNorm(D), eps 1e-5
    modality.world_encoder.model.<SiglipVisionTransformer names>  (embeddings.patch_embedding.*,
      embeddings.position_embedding.weight, encoder.layers.{i}.*, post_layernorm.*, head.*), written
      only when the encoder was trained (`'moda' in args.train_step`); the adapter only when trained
      ('adapter'). The released runs used `--train_step adapter rwkv`: RWKV-7 + adapter, no encoder.
  The adapter (world/encoder/siglip_encoder.py `VisualAdapter`): proj = Sequential(Linear(C_enc, hidden),
  ReLU, Linear(hidden, D)); forward `x = proj(x); return x + pre_norm(x)`: our vision adapter exactly
  (projector.py: h = W2·relu(W1 x + b1) + b2, out = h + LayerNorm(h)), no compressor. hidden =
  project_dim*2 (m = 2) from be6c602 to 99687e57ba8232740375de9eb69c9e1a83895a32 (2025-03-12; the
  released models), project_dim*4 (m = 4) from d1f6c8a489fb9dde2b5e91a2c6116b178597e5a9 (2025-07-01,
  "conv1d & adapter 4x"; the Conv1d(C_enc, C_enc, 3, stride 2, no bias) there is commented out).
  We read m from the tensor shapes. C_enc is hard-coded 768 (`self.encoder_dim = 768`).
  Encoder: `AutoModel.from_pretrained(encoder_path).vision_model` (the full SiglipModel's vision tower;
  encoder_type 'siglip', google/siglip2-base-patch16-384), its `last_hidden_state` (after post_layernorm,
  576 × 768, no pooling; the MAP head is computed and unused); pixels from `SiglipImageProcessor`
  (resize 384 × 384 bilinear, rescale 1/255, mean = std = 0.5). `WorldEncoder.load_checkpoint` loads
  the `modality.world_encoder.*` keys with `strict=False`, so the encoder weights of the file, when
  present, replace those of encoder_path.
  Language model (infer/rwkv/model.py `forward(idx, state, sign=...)`): x = cat(sign, emb[idx]) over
  time, then ln0 over all of it (the modality tokens go through ln0 too), then the blocks: our
  prefix layout. The 'sign' is prepended on the first forward call only.
  Prompt and decoding of the released models (README, eval/vqa2.py, eval/textvqa.py,
  eval/model_vqa_science.py, infer/rwkv/utils.py `PIPELINE.generate` at 35ab588):
    [576 image tokens] + tok("\\x16User: {question}\\x17Assistant:")   (`PROMPT` below)
  where {question} is the LLaVA eval file's "text" field as is (suffix "Answer the question using a
  single word or phrase." included); top_p = 0 (greedy), token 0 banned, stop at token 24 ("\\x17"),
  at most 500 new tokens; the answer's first character (a space) is cut (`output[1:]`). Training text
  (world/dataset.py `process_conversation_text`, data_type 'hf_img'): "\\x16" + "User: {human}\\x17" +
  "Assistant: {gpt}\\x17" + ... (one \\x16 at the start, no \\x16 before "Assistant:"; LLaVA's "<image>"
  is not removed). NB this differs from docs/architecture.md's "\\x16User: {q}\\x17\\x16Assistant:".

Form B: one `.pth` (a6c29be13b8e76fa8921eaa272a0a68ce72ed915, 2025-08-09 "reconstruction", world/model.py
  `ModRWKV` with `self.encoder`, `self.proj`, `self.llm`; through 642146d5f6e0760d1ee3e9fbeeea884fccf66dc7)
    llm.<the RWKV-7 names of form A>;  proj.mlp.0.*, proj.mlp.2.*, proj.pre_norm.*, and proj.conv.weight
    [C_enc, C_enc, 3] when `use_conv` (Conv1d stride 2, no bias: our compressor (3, 2));
    encoder.model.<SiglipVisionTransformer names> when trained. Adapter hidden = 4·D.
  Its prompt differs (infer/worldmodel.py `process_wr` at 642146d): "\\x16User:" + "<|image_pad|>"·576 +
  "{text}\\x17\\x16Assistant:" with the image tokens spliced at the pad tokens (id 65532 of the
  `wr_vocab_v20230424` vocabulary): our placeholder layout.

Form HF: a folder (WorldRWKV/ModRWKV-0.4). Its config.json (read on the hub page): "architectures":
  ["RWKV7VLForConditionalGeneration"], "text_config" {fla RWKV7 fields: hidden_size 1024,
  num_hidden_layers 24, head_dim 64, decay/a/v/gate_low_rank_dim 64/64/32/128, norm_first true, ...},
  "vision_config" {"encoder_path": "/home/rwkv/models/siglip"}, "proj_config" {"encoder_dim": 768,
  "project_dim": 1024}, "encoder_type": "siglip2". The model (wlm/modeling_rwkv7_wlm.py,
  wlm/configuration_wlm.py, wlm/projector/test.py at c47a62d8a58b3468d19262b0a9581ba19c8f47b7 and 642146d)
  is `RWKV7VLForConditionalGeneration{model: RWKV7VLModel{encoder, proj, llm: fla RWKV7Model}, lm_head}`;
  the weights of convert_from_rwkv7.py (c07d1a8933e652bdb9ffecfbc06158d40087f0e2) are one
  model.safetensors with
    model.llm.<fla RWKV7 names> (embeddings.weight, layers.{i}.{pre_norm (i = 0), attn_norm, ffn_norm,
      attn.{x_r..x_g, k_k, k_a, r_k, r_proj, k_proj, v_proj, o_proj, g_norm, w_lora/a_lora/v_lora/g_lora
      .lora.{0,2}}, ffn.*}, norm.*), lm_head.weight;
    model.proj.mlp.{0,2}.*, model.proj.pre_norm.*, [model.proj.conv.weight]   (VisualAdapter, as form B;
      proj_config without hidden_dim -> 4·D, without use_conv -> no conv);
    model.encoder.<...>: the converter copies form B's `encoder.*` (so `model.encoder.model.*`), while
      the modeling code of c47a62d names the tower `vision_model` (`model.encoder.vision_model.*`) and
      builds it with `AutoModel.from_config` (random weights unless the file holds them). Both prefixes
      are accepted; without either, `encoder_hf` supplies the tower.
  NOT verified against the hub: the safetensors header / index of WorldRWKV/ModRWKV-0.4 (not reachable
  from here), so these names come from the modeling code and the converter only; its chat template
  (tokenizer files) was not seen either. The HF-era prompt wraps the image as
  "<|vision_start|>" + "<|image_pad|>"·576 + "<|vision_end|>" (wlm/processing_wlm.py; ids 65530, 65532,
  65531 in RWKV7VLConfig).

Not expressible by our projector (refused with the reason): lg_train's "siglip2" `ModalityProjector`
(c07d1a8: pixel shuffle ×4 then Linear(12288, D, bias=False)) and "auto_siglip2" `VlProj` (Conv1d k6 s5,
GELU MLP, no LayerNorm residual); adapters with a hidden width that is not a multiple of D.

Params: {"rwkv": rwkv7 params, "encoders": {"image": siglip params}, "projectors": {"image": projector
params}}, the layout of `modrwkv.init_params` for a config with one fixed-resolution SigLIP image modality.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax import tensor_files
from modrwkv_jax.models import modrwkv, rwkv7
from modrwkv_jax.models import projector as proj
from modrwkv_jax.models.encoders import hf_snapshot, siglip, transformer

PROMPT = "\x16User: {question}\x17Assistant:"  # after the image tokens; released (form A) models
STOP_TOKEN = 24  # "\x17"
MAX_NEW_TOKENS = 500

PREFIX_A = "modality.world_encoder."
ADAPTER_A = {"fc1": "adapter.proj.0", "fc2": "adapter.proj.2", "norm": "adapter.pre_norm"}  # no conv in form A
ADAPTER_B = {"fc1": "mlp.0", "fc2": "mlp.2", "norm": "pre_norm", "conv": "conv"}
COMPRESSOR = (3, 2)  # VisualAdapter's Conv1d(C_enc, C_enc, kernel_size=3, stride=2, bias=False)


# ---------------------------------------------------------------------------------------------
# Telling the forms apart.

def _pth_form(keys) -> str | None:
  keys = list(keys)
  if any(k.startswith(PREFIX_A) for k in keys):
    return "A"
  if "llm.emb.weight" in keys and any(k.startswith("proj.") for k in keys):
    return "B"
  return None


def is_worldrwkv_checkpoint(path: str | os.PathLike) -> bool:
  """True for a WorldRWKV checkpoint: a `.pth` holding `modality.world_encoder.*` keys (form A) or
  `llm.*` + `proj.*` keys (form B), or a folder whose config.json has `encoder_type` or `proj_config`
  (form HF). False for anything else (an RWKV-7 `.pth`, our orbax checkpoints, a missing path, a file
  that is not a torch zip: the loader chosen next reports what is wrong with it)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
      return False
    try:
      config = tensor_files.read_json_object(file)
    except ValueError:
      return False
    return "encoder_type" in config or "proj_config" in config
  if not os.path.isfile(path):
    return False
  try:
    keys = tensor_files.read_pth(path).keys()  # parses the pickle; tensors stay memory-mapped
  except ValueError:
    return False
  return _pth_form(keys) is not None


# ---------------------------------------------------------------------------------------------
# Splitting a file into its three parts, with the file's own names kept for error messages.

class _Parts:
  """rwkv: RWKV-LM state dict (official names); rwkv_names: official name -> name in the file;
  adapter: {"fc1.weight", ...} arrays; adapter_prefix: the file's prefix of the adapter names;
  adapter_names: {"fc1": "adapter.proj.0", ...}; encoder: SiglipVisionTransformer names -> arrays
  (empty when the file has no encoder); encoder_prefix: the file's prefix of those."""

  def __init__(self):
    self.rwkv, self.rwkv_names, self.adapter, self.encoder = {}, {}, {}, {}
    self.adapter_prefix, self.adapter_names, self.encoder_prefix = "", ADAPTER_A, ""


def _take_adapter(parts: _Parts, tensors: dict, prefix: str, names: Mapping[str, str]):
  parts.adapter_prefix, parts.adapter_names = prefix, names
  for ours, theirs in names.items():
    for leaf in ("weight", "bias"):
      key = f"{prefix}{theirs}.{leaf}"
      if key in tensors:
        parts.adapter[f"{ours}.{leaf}"] = tensors.pop(key)


def _take_encoder(parts: _Parts, tensors: dict, prefixes: tuple[str, ...]):
  for prefix in prefixes:
    found = {k[len(prefix):]: k for k in tensors if k.startswith(prefix)}
    if found:
      parts.encoder_prefix = prefix
      parts.encoder = {short: tensors.pop(full) for short, full in found.items()}
      return


def _unexpected(tensors: Mapping, source: str, form: str):
  if tensors:
    names = sorted(tensors)
    raise ValueError(f"{source}: unexpected keys {names[:6]}{' ...' if len(names) > 6 else ''} for a WorldRWKV "
                     f"form-{form} SigLIP checkpoint (another encoder's adapter, or a projector our vision adapter "
                     "cannot express; see modrwkv_jax/models/worldrwkv.py)")


def _split_pth(tensors: dict, source: str) -> _Parts:
  form = _pth_form(tensors)
  if form is None:
    raise ValueError(f"{source}: not a WorldRWKV checkpoint: no 'modality.world_encoder.*' keys (form A) and no "
                     "'llm.*' + 'proj.*' keys (form B); a plain RWKV-7 .pth loads with rwkv7.load_pth")
  parts = _Parts()
  if form == "A":
    parts.rwkv = {k: tensors.pop(k) for k in list(tensors) if not k.startswith("modality.")}
    parts.rwkv_names = {k: k for k in parts.rwkv}
    _take_adapter(parts, tensors, PREFIX_A, ADAPTER_A)
    _take_encoder(parts, tensors, (PREFIX_A + "model.",))
  else:
    if "proj.proj.weight" in tensors:
      raise ValueError(f"{source}: key 'proj.proj.weight' {tuple(tensors['proj.proj.weight'].shape)}: the pixel-"
                       "shuffle ModalityProjector of WorldRWKV's lg_train; our projector cannot express it")
    for k in [k for k in tensors if k.startswith("llm.")]:
      parts.rwkv[k[len("llm."):]] = tensors.pop(k)
    parts.rwkv_names = {k: "llm." + k for k in parts.rwkv}
    _take_adapter(parts, tensors, "proj.", ADAPTER_B)
    _take_encoder(parts, tensors, ("encoder.model.", "encoder.vision_model."))
  _unexpected(tensors, source, form)
  return parts


def _hf_llm_name(official: str) -> tuple[str, bool]:
  """The fla name under RWKV7VLForConditionalGeneration (`model.llm.` instead of fla's `model.`)."""
  name, transposed = rwkv7._hf_name(official)
  return ("model.llm." + name[len("model."):] if name.startswith("model.") else name), transposed


def _split_hf(tensors: dict, source: str) -> _Parts:
  if "model.proj.proj.weight" in tensors:
    raise ValueError(f"{source}: key 'model.proj.proj.weight': the pixel-shuffle ModalityProjector; our projector "
                     "cannot express it")
  parts = _Parts()
  n_layer = rwkv7._layer_count(tensors, r"model\.llm\.layers\.(\d+)\.", source)
  rows = rwkv7.checkpoint_layout(rwkv7.RWKV7Config(n_layer=n_layer))  # names depend on n_layer only
  for official in [row[0] for row in rows] + list(rwkv7._BLOCK0_UNUSED):
    name, transposed = _hf_llm_name(official)
    parts.rwkv_names[official] = name
    if name in tensors:
      array = tensors.pop(name)
      parts.rwkv[official] = array.T if transposed else array
  _take_adapter(parts, tensors, "model.proj.", ADAPTER_B)
  _take_encoder(parts, tensors, ("model.encoder.vision_model.", "model.encoder.model."))
  _unexpected(tensors, source, "HF")
  return parts


# ---------------------------------------------------------------------------------------------
# Building our params.

def _in_file_names(error: ValueError, names: Mapping[str, str]) -> ValueError:
  """The rwkv7 loader's error with each quoted RWKV-LM name followed by the file's name for it."""
  def sub(m):
    official = m.group(1)
    theirs = names.get(official)
    return m.group(0) if theirs in (None, official) else f"'{theirs}' (RWKV-LM name '{official}')"
  return ValueError(re.sub(r"'([^']+)'", sub, str(error)))


def _rwkv_params(parts: _Parts, source: str, dtype: str, param_dtype, scan_layers: bool):
  try:
    return rwkv7.params_from_state_dict(parts.rwkv, None, source=source, param_dtype=param_dtype, dtype=dtype,
                                        scan_layers=scan_layers)
  except ValueError as e:
    raise _in_file_names(e, parts.rwkv_names) from None


def _adapter_params(parts: _Parts, source: str, D: int) -> tuple[proj.ProjectorConfig, dict]:
  """The projector config and params (numpy float32) of the file's VisualAdapter."""
  def take(ours: str, shape: tuple | None = None, what: str = "") -> np.ndarray:
    module, leaf = ours.split(".")
    key = f"{parts.adapter_prefix}{parts.adapter_names[module]}.{leaf}"
    if ours not in parts.adapter:
      raise ValueError(f"{source}: missing key '{key}'{f' (expected shape {shape})' if shape else ''}: the "
                       "vision adapter (WorldRWKV saves it only when it was trained: --train_step adapter)")
    array = parts.adapter[ours]
    if shape is not None and tuple(array.shape) != tuple(shape):
      raise ValueError(f"{source}: key '{key}' has shape {tuple(array.shape)}; expected {tuple(shape)}{what}")
    return rwkv7._to_float32(array)

  w1 = take("fc1.weight")
  if w1.ndim != 2:
    raise ValueError(f"{source}: key '{parts.adapter_prefix}{parts.adapter_names['fc1']}.weight' has shape "
                     f"{w1.shape}; expected [hidden, C_enc] (a Linear weight)")
  hidden, c_enc = w1.shape
  if hidden % D:
    raise ValueError(f"{source}: key '{parts.adapter_prefix}{parts.adapter_names['fc1']}.weight' has shape "
                     f"{w1.shape}: hidden width {hidden} is not a multiple of the RWKV-7 width D={D}; our vision "
                     "adapter (projector.py) has hidden = m·D with an integer m")
  m = hidden // D
  params = {
      "fc1": {"kernel": np.ascontiguousarray(w1.T), "bias": take("fc1.bias", (hidden,))},
      "fc2": {"kernel": np.ascontiguousarray(take("fc2.weight", (D, hidden), f" for D={D}, hidden={hidden}").T),
              "bias": take("fc2.bias", (D,), f" for D={D}")},
      "norm": {"scale": take("norm.weight", (D,), f" for D={D}"), "bias": take("norm.bias", (D,), f" for D={D}")},
  }
  compressor = None
  if "conv.weight" in parts.adapter:
    conv = take("conv.weight", (c_enc, c_enc, COMPRESSOR[0]),
                f": VisualAdapter's Conv1d(C_enc={c_enc}, C_enc, kernel_size=3, stride=2, bias=False)")
    params["compressor"] = {"kernel": np.ascontiguousarray(conv.transpose(2, 1, 0))}  # [out, in, k] -> [k, in, out]
    compressor = COMPRESSOR
  return proj.ProjectorConfig("vision", c_enc, D, compressor, m), params


def _siglip_config_from_tensors(encoder: Mapping[str, np.ndarray], source: str, prefix: str) -> siglip.SiglipConfig:
  """The fixed-resolution SigLIP config of a vision tower stored without its config.json: sizes from the shapes,
  the head count from the preset with those sizes (a count no shape holds)."""
  name = "embeddings.patch_embedding.weight"
  if name not in encoder or encoder[name].ndim != 4:
    raise ValueError(f"{source}: the encoder weights under '{prefix}' have no 4-D '{prefix}{name}'; not a "
                     "fixed-resolution SigLIP tower")
  D, _, p, _ = encoder[name].shape
  positions = encoder.get("embeddings.position_embedding.weight")
  layers = rwkv7._layer_count(encoder, r"encoder\.layers\.(\d+)\.", f"{source} ({prefix})")
  fc1 = encoder.get("encoder.layers.0.mlp.fc1.weight")
  if positions is None or fc1 is None:
    raise ValueError(f"{source}: the encoder weights under '{prefix}' lack the position embedding or the MLP")
  image_size = math.isqrt(positions.shape[0]) * p
  for preset in siglip.PRESETS.values():
    if (not preset.naflex and (preset.hidden_size, preset.intermediate_size, preset.num_layers, preset.patch_size,
                               preset.image_size) == (D, fc1.shape[0], layers, p, image_size)):
      return preset
  raise ValueError(f"{source}: the encoder weights (width {D}, MLP {fc1.shape[0]}, {layers} layers, patch {p}, "
                   f"{image_size} px) match no SigLIP preset, so the head count is unknown; pass encoder_hf=<the "
                   "encoder's HF snapshot folder> (its config.json gives num_attention_heads)")


def _encoder(parts: _Parts, source: str, encoder_hf, dtype: str, param_dtype, scan_layers: bool):
  """(SiglipConfig, params): the file's tower (config from encoder_hf's config.json, or from the shapes), else
  the tower of the snapshot `encoder_hf`."""
  hf_config = None
  if encoder_hf is not None:
    encoder_hf = os.fspath(encoder_hf)
    raw = hf_snapshot.read_config(encoder_hf)
    hf_config = siglip.config_from_hf(raw, os.path.join(encoder_hf, "config.json"), dtype=dtype)
    if hf_config.naflex:
      raise ValueError(f"{encoder_hf}: a NaFlex SigLIP2 snapshot (model_type {raw.get('model_type')!r}); WorldRWKV "
                       "runs the fixed-resolution tower (google/siglip2-base-patch16-384, model_type 'siglip')")
  if parts.encoder:
    config = hf_config or _siglip_config_from_tensors(parts.encoder, source, parts.encoder_prefix)
    config = config.replace(dtype=dtype, scan_layers=scan_layers, use_head=False)
    used = set()

    def take(name, shape=None):
      key = parts.encoder_prefix + name
      if name not in parts.encoder:
        raise ValueError(f"{source}: missing key '{key}' (expected shape {shape}) of the SigLIP vision tower")
      array = parts.encoder[name]
      if shape is not None and tuple(array.shape) != tuple(shape):
        raise ValueError(f"{source}: key '{key}' has shape {tuple(array.shape)}; expected {tuple(shape)} for the "
                         f"SigLIP config {config}")
      used.add(name)
      return rwkv7._to_float32(array)

    params = siglip.params_from_hf(config, take)
    left = sorted(n for n in parts.encoder if n not in used and not n.startswith("head.") and "position_ids" not in n)
    if left:
      raise ValueError(f"{source}: unexpected encoder keys {[parts.encoder_prefix + n for n in left[:5]]}")
    return config, hf_snapshot.to_device(params, param_dtype)
  if encoder_hf is None:
    raise ValueError(f"{source}: holds no encoder weights (WorldRWKV writes them only when the encoder was trained); "
                     "pass encoder_hf=<a local snapshot of google/siglip2-base-patch16-384>, e.g. "
                     "weights/siglip2-base-patch16-384")
  return siglip.load_hf(encoder_hf, dtype=dtype, scan_layers=scan_layers, param_dtype=param_dtype)


def _assemble(parts: _Parts, source: str, encoder_hf, dtype, param_dtype, scan_layers, max_length):
  rwkv_config, rwkv_params = _rwkv_params(parts, source, dtype, param_dtype, scan_layers)
  projector, proj_params = _adapter_params(parts, source, rwkv_config.n_embd)
  enc_config, enc_params = _encoder(parts, source, encoder_hf, dtype, param_dtype, scan_layers)
  if enc_config.hidden_size != projector.in_features:
    raise ValueError(f"{source}: the adapter takes {projector.in_features} encoder features; the SigLIP tower "
                     f"({encoder_hf if not parts.encoder else source}) gives {enc_config.hidden_size}")
  modality = modrwkv.ModalityConfig("siglip", enc_config, projector)
  config = modrwkv.ModRWKVConfig(rwkv_config, (("image", modality),), max_length)
  params = {"rwkv": rwkv_params, "encoders": {"image": enc_params},
            "projectors": {"image": jax.tree.map(lambda x: jnp.asarray(x, param_dtype), proj_params)}}
  return config, params


def load_worldrwkv(path: str | os.PathLike, encoder_hf: str | os.PathLike | None = None, *, dtype: str = "float32",
                   param_dtype=jnp.float32, scan_layers: bool = False,
                   max_length: int = 4096) -> tuple[modrwkv.ModRWKVConfig, dict]:
  """Reads a WorldRWKV ModRWKV checkpoint (a form-A/B `.pth` or a form-HF folder; module docstring).

  Args:
    path: the `.pth` file (e.g. WorldRWKV/RWKV7-0.4B-siglip2's rwkv-0.pth) or the HF folder.
    encoder_hf: a local HF snapshot of the vision tower (google/siglip2-base-patch16-384). Needed when the
      checkpoint holds no encoder weights (the released .pth files); when it does, only the snapshot's
      config.json is read, and the checkpoint's weights are used.
    dtype: compute dtype of RWKV-7 and the encoder ("float32", "bfloat16").
    param_dtype: dtype of the returned params (fp32 / bf16 / fp16 files are widened exactly first).
    scan_layers: the stacked layer layout for RWKV-7 and the encoder.
    max_length: ModRWKVConfig.max_length.
  Every size comes from tensor shapes (RWKV-7: docs/formats.md#rwkv-lm-pth; adapter: m = hidden / D; compressor from a
  `conv` weight); nothing is initialised at random; a missing, mis-shaped or unexpected tensor is a
  ValueError naming the file and the file's key.
  Returns:
    (ModRWKVConfig with one "image" modality: fixed-resolution SigLIP + vision adapter, params).
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    config_file = os.path.join(path, "config.json")
    hf = tensor_files.read_json_object(config_file)
    if "encoder_type" not in hf and "proj_config" not in hf:
      raise ValueError(f"{config_file}: no 'encoder_type' / 'proj_config'; not a WorldRWKV "
                       "RWKV7VLForConditionalGeneration folder")
    encoder_type = hf.get("encoder_type")
    if encoder_type not in (None, "siglip", "siglip2"):
      raise ValueError(f"{config_file}: encoder_type {encoder_type!r}; this loader reads SigLIP vision models only")
    parts = _split_hf(dict(tensor_files.read_safetensors_dir(path)), path)
    config, params = _assemble(parts, path, encoder_hf, dtype, param_dtype, scan_layers, max_length)
    _check_proj_config(hf.get("proj_config"), config.modality("image").projector, config_file)
    return config, params
  parts = _split_pth(dict(tensor_files.read_pth(path)), path)
  return _assemble(parts, path, encoder_hf, dtype, param_dtype, scan_layers, max_length)


def _check_proj_config(pc, projector: proj.ProjectorConfig, source: str) -> None:
  """config.json's proj_config (ProjConfig: encoder_dim, project_dim, hidden_dim = None -> 4·project_dim,
  use_conv) agrees with the adapter the tensors hold."""
  if pc is None:
    return
  if not isinstance(pc, Mapping):
    raise ValueError(f"{source}: 'proj_config' is a {type(pc).__name__}; expected an object")
  hidden = projector.hidden_mult * projector.out_features
  found = {"encoder_dim": projector.in_features, "project_dim": projector.out_features,
           "hidden_dim": hidden, "use_conv": projector.compressor is not None}
  stated = {"hidden_dim": 4 * pc.get("project_dim", projector.out_features), "use_conv": False}
  stated.update({k: v for k, v in pc.items() if k in found and v is not None})
  diff = [f"{k}={stated[k]!r} (the weights hold {found[k]!r})" for k in found if k in stated and stated[k] != found[k]]
  if diff:
    raise ValueError(f"{source}: proj_config disagrees with the adapter weights: {', '.join(diff)}")


# ---------------------------------------------------------------------------------------------
# Writing ours in form A.

def _siglip_state_dict(config: siglip.SiglipConfig, params: Mapping, dtype) -> dict[str, np.ndarray]:
  """Our SigLIP params -> the HF SiglipVisionTransformer tensors, the exact inverse of `siglip.params_from_hf`,
  derived from it: each HF tensor is replaced by the indices of its elements, so the params built from them
  say where every element of ours came from."""
  config = config.replace(scan_layers=False, use_head=False)
  shapes, offset = [], 0

  def take(name, shape=None):
    nonlocal offset
    n = math.prod(shape)
    shapes.append((name, tuple(shape), offset))
    offset += n
    return np.arange(offset - n, offset, dtype=np.int64).reshape(shape)

  index_tree = siglip.params_from_hf(config, take)
  values = transformer.unstack_layers({k: v for k, v in params.items() if k != "head"})
  if jax.tree.structure(index_tree) != jax.tree.structure(values):
    raise ValueError(f"save_worldrwkv: the image encoder params do not have the SigLIP layout of {config}")
  flat = np.empty(offset, np.float32)
  count = np.zeros(offset, np.int64)
  for index, value in zip(jax.tree.leaves(index_tree), jax.tree.leaves(values)):
    flat[index.ravel()] = np.asarray(jax.device_get(value), np.float32).ravel()
    count[index.ravel()] += 1
  assert (count == 1).all(), "siglip.params_from_hf must use every element of every tensor exactly once"
  return {name: flat[start:start + math.prod(shape)].reshape(shape).astype(dtype) for name, shape, start in shapes}


def _image_modality(config: modrwkv.ModRWKVConfig) -> modrwkv.ModalityConfig:
  """The one modality form A can hold, checked: a fixed-resolution SigLIP image encoder, a vision adapter,
  no compressor."""
  names = [n for n, _ in config.modalities]
  if names != ["image"] or config.forecast_horizon:
    raise ValueError(f"save_worldrwkv: form A holds one image modality and no forecasting head; this config has "
                     f"modalities {names} and forecast_horizon={config.forecast_horizon}")
  m = config.modality("image")
  if m.encoder != "siglip" or m.encoder_config.naflex:
    naflex = " (NaFlex)" if m.encoder == "siglip" else ""
    raise ValueError(f"save_worldrwkv: the image encoder is {m.encoder!r}{naflex}; WorldRWKV's form A runs a "
                     "fixed-resolution SigLIP tower")
  if m.projector.kind != "vision" or m.projector.compressor is not None:
    raise ValueError(f"save_worldrwkv: the image projector is {m.projector}; form A's VisualAdapter has no "
                     "compressor (its Conv1d exists from form B on only)")
  return m


def save_worldrwkv(config: modrwkv.ModRWKVConfig, params: Mapping, path: str | os.PathLike, *, dtype=np.float32,
                   with_encoder: bool | None = None) -> None:
  """Writes a ModRWKV model as a form-A WorldRWKV `.pth` (the released checkpoints' form).

  Keys: the RWKV-7 state dict of `rwkv7.save_pth` (adapters merged; block 0's unused v0/v1/v2 included as
  RWKV-LM writes them: WorldRWKV's loaders ignore or overwrite them), the vision adapter as
  `modality.world_encoder.adapter.{proj.0, proj.2, pre_norm}.*` and, with `with_encoder` (default: when the
  image encoder is trained, `train_encoder`), the SigLIP tower as `modality.world_encoder.model.*` (HF names;
  WorldRWKV loads them over encoder_path's with strict=False).
  WorldRWKV's code builds the adapter with a fixed hidden width: project_dim·2 in the commits of the
  released models (Feb–Jun 2025), ·4 from 2025-07-01: write m = 2 (`hidden_mult`) for the former, 4 for
  the latter; its C_enc is hard-coded 768. `load_worldrwkv(path, encoder_hf)` reads the file back exactly.
  """
  m = _image_modality(config)
  dtype = np.dtype(dtype)
  sd = rwkv7.state_dict_from_params(config.rwkv, params["rwkv"], dtype)
  p = jax.device_get(params["projectors"]["image"])
  f32 = lambda x: np.asarray(x, np.float32)
  adapter = {"adapter.proj.0.weight": f32(p["fc1"]["kernel"]).T, "adapter.proj.0.bias": f32(p["fc1"]["bias"]),
             "adapter.proj.2.weight": f32(p["fc2"]["kernel"]).T, "adapter.proj.2.bias": f32(p["fc2"]["bias"]),
             "adapter.pre_norm.weight": f32(p["norm"]["scale"]), "adapter.pre_norm.bias": f32(p["norm"]["bias"])}
  sd.update({PREFIX_A + k: np.ascontiguousarray(v).astype(dtype) for k, v in adapter.items()})
  if m.train_encoder if with_encoder is None else with_encoder:
    tower = _siglip_state_dict(m.encoder_config, params["encoders"]["image"], dtype)
    sd.update({f"{PREFIX_A}model.{k}": v for k, v in tower.items()})
  tensor_files.write_pth(sd, path)
