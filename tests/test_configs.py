"""Experiment configs (configs/*.py) and the config machinery of modrwkv_jax.training.config.

Evidence that every config file loads, passes the schema and builds its library objects with no file
present; that the paper recipes carry docs/architecture.md's numbers (written here as literals, not read back from
configs/common.py); that the RWKV-7 presets hold exactly the parameters the layer shapes of
models/rwkv7.py imply (a closed form, checked with jax.eval_shape: nothing is compiled or allocated);
and how overrides, `diff`, `check_files` and `pipeline_config` behave. Runs in seconds.
"""

import glob
import json
import math
import os

import jax
import ml_collections
import pytest

from modrwkv_jax.models import modrwkv, rwkv7
from modrwkv_jax.training import config as C

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
HELPERS = {"common.py"}  # shared code, no get_config()
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")) if os.path.basename(p) not in HELPERS)


def _load(name: str) -> ml_collections.ConfigDict:
  return C.load_config_file(os.path.join(CONFIG_DIR, name))


def _with_root(config):
  """A copy whose {root} paths resolve (pipeline_config needs data.root; no file is opened)."""
  if not config.data.root:
    config = C.apply_overrides(config, ["data.root=/datasets"])
  return config


# ---------------------------------------------------------------------------------------------
# Every config file.


def test_the_expected_config_files_exist():
  names = {os.path.basename(p) for p in CONFIG_FILES}
  expected = {"tiny.py", "demo.py", "clip_0.4b_phase1.py", "asr_wavlm_0.4b.py", "asr_whisper_0.4b.py",
              "timeseries_wavenet.py", "bone_phase2.py", "lora_phase2.py"}
  expected |= {f"modrwkv_{s}_siglip2_phase{p}.py" for s in ("0.4b", "1.5b", "3b") for p in (1, 2)}
  assert expected <= names, f"missing config files: {sorted(expected - names)}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_config_loads_builds_and_round_trips(path, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # configs find their siblings from any working directory
  config = C.load_config_file(path)  # runs check_schema
  with open(path, encoding="utf-8") as f:
    source = f.read()
  assert source.lstrip().startswith('"""'), f"{path}: needs a module docstring (what, data, phase, files, command)"
  assert config.name, f"{path}: config.name is empty"
  model = C.model_config(config)
  peft = C.peft_config(config)
  assert isinstance(model, modrwkv.ModRWKVConfig)
  assert (peft is None) == (not config.model.peft.method)
  for group in config.train.trainable:
    assert group in C.PART_GROUPS, f"{path}: train.trainable names {group!r}; groups are {C.PART_GROUPS}"
  # The resolved config the trainer writes next to its checkpoints reads back into the same objects.
  text = C.to_json(config)
  again = ml_collections.ConfigDict(json.loads(text))
  C.check_schema(again, source=f"{path} (json)")
  assert C.to_json(again) == text
  assert C.model_config(again) == model
  assert C.peft_config(again) == peft
  # The data settings build without any file present.
  pipe = C.pipeline_config(_with_root(config), model, batch_size=2)
  assert len(pipe.sources) == len(config.data.sources)
  for name, _ in model.modalities:
    assert getattr(pipe, name) is not None, f"{path}: modality {name} has no pipeline settings"


# ---------------------------------------------------------------------------------------------
# The paper recipes (docs/architecture.md), as literal numbers.

VISION_RECIPES = {  # file: (RWKV-7 preset, phase)
    "modrwkv_0.4b_siglip2_phase1.py": ("0.4B", 1), "modrwkv_0.4b_siglip2_phase2.py": ("0.4B", 2),
    "modrwkv_1.5b_siglip2_phase1.py": ("1.5B", 1), "modrwkv_1.5b_siglip2_phase2.py": ("1.5B", 2),
    "modrwkv_3b_siglip2_phase1.py": ("2.9B", 1), "modrwkv_3b_siglip2_phase2.py": ("2.9B", 2),
    "clip_0.4b_phase1.py": ("0.4B", 1), "bone_phase2.py": ("0.4B", 2), "lora_phase2.py": ("0.4B", 2),
}
# docs/architecture.md: Phase I: adapter only, LLaVA-CC3M-595K (595,375 records), batch 256, lr 1e-3.
# Phase II: adapter + all RWKV parameters, LLaVA-665K (665,298 records), batch 128, lr 2e-5.
PHASE = {1: dict(records=595_375, batch=256, lr=1e-3, trainable=("adapter",),
                 data="LLaVA-CC3M-Pretrain-595K/chat.json"),
         2: dict(records=665_298, batch=128, lr=2e-5, trainable=("adapter", "rwkv"),
                 data="LLaVA-Instruct/llava_v1_5_mix665k.json")}


@pytest.mark.parametrize("name", sorted(VISION_RECIPES))
def test_vision_recipe_has_the_paper_numbers(name):
  preset, phase = VISION_RECIPES[name]
  want = PHASE[phase]
  c = _load(name)
  assert c.optim.lr == want["lr"]
  assert c.train.batch_size == want["batch"] and c.train.grad_accum == 1
  assert c.train.steps == math.ceil(want["records"] / want["batch"])  # one epoch
  assert c.train.steps == {1: 2326, 2: 5198}[phase]
  assert (c.optim.b1, c.optim.b2, c.optim.eps) == (0.9, 0.99, 1e-8)
  assert c.optim.weight_decay == 0.0 and c.optim.clip == 1.0
  assert c.optim.warmup == 100 and c.optim.schedule == "cosine" and c.optim.end_lr_ratio == 0.0
  assert c.data.max_length == 2048 and c.model.max_length == 2048 and c.data.truncate
  assert c.data.layout == "prefix"
  if name.startswith(("bone", "lora")):  # PEFT replaces full RWKV-7 training
    assert tuple(c.train.trainable) == ("adapter", "peft")
    assert (c.model.peft.method, c.model.peft.r) == ({"bone": "bone", "lora": "lora"}[name.split("_")[0]], 64)
    if name.startswith("lora"):
      assert c.model.peft.alpha == 128
  else:
    assert tuple(c.train.trainable) == want["trainable"] and c.model.peft.method is None
  (source,) = c.data.sources
  assert source["kind"] == "llava" and source["path"] == "{root}/" + want["data"]
  assert source["options"]["root"] == "{root}/" + want["data"].split("/")[0]  # images relative to that folder
  model = C.model_config(c)
  assert model.rwkv == rwkv7.preset(preset, dtype="bfloat16", scan_layers=True, remat="block")
  image = model.modality("image")
  assert not image.train_encoder
  assert image.projector.kind == "vision" and image.projector.compressor is None
  assert image.projector.hidden_mult == 2  # docs/architecture.md: m = 2 in the paper runs
  assert c.init.rwkv_pth and c.init.encoder_hf.image
  assert c.init.from_checkpoint is None  # phase II: --config.init.from_checkpoint=runs/<phase 1>/checkpoints
  # Encoder features per image (docs/architecture.md): SigLIP2 576 × 768, CLIP (final layer incl. CLS) 577 × 1024.
  tokens, width = (577, 1024) if name.startswith("clip") else (576, 768)
  assert modrwkv.num_tokens(model, "image", 0) == tokens
  assert image.projector.in_features == width


def test_siglip2_pipeline_feeds_384_px_images():
  c = _with_root(_load("modrwkv_0.4b_siglip2_phase1.py"))
  pipe = C.pipeline_config(c, C.model_config(c), batch_size=2)
  assert pipe.image.fixed_size == (384, 384)  # docs/architecture.md#encoders: resize 384 × 384, mean = std = 0.5
  assert pipe.image.processor.image_mean == pipe.image.processor.image_std == (0.5, 0.5, 0.5)


def test_clip_pipeline_feeds_336_px_images():
  c = _with_root(_load("clip_0.4b_phase1.py"))
  pipe = C.pipeline_config(c, C.model_config(c), batch_size=2)
  assert pipe.image.fixed_size == (336, 336)


@pytest.mark.parametrize("name,encoder,width", [("asr_whisper_0.4b.py", "whisper", 1024),
                                                ("asr_wavlm_0.4b.py", "wavlm", 1024)])
def test_audio_recipe(name, encoder, width):
  c = _load(name)
  # docs/architecture.md audio: lr 1e-4 (phase I), batch 32; one epoch of LibriSpeech 960 h (281,241 utterances).
  assert c.optim.lr == 1e-4 and c.train.batch_size == 32
  assert c.train.steps == math.ceil(281_241 / 32) == 8789
  assert tuple(c.train.trainable) == ("adapter",)
  assert (c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay, c.optim.clip) == (0.9, 0.99, 1e-8, 0.0, 1.0)
  model = C.model_config(c)
  audio = model.modality("audio")
  assert audio.encoder == encoder and not audio.train_encoder and audio.projector.kind == "audio"
  assert audio.projector.in_features == width
  if encoder == "whisper":  # Whisper medium, 80 mel bins, 30 s chunks
    e = audio.encoder_config
    assert (e.d_model, e.encoder_layers, e.encoder_attention_heads, e.encoder_ffn_dim, e.max_source_positions,
            e.num_mel_bins) == (1024, 24, 16, 4096, 1500, 80)
    assert (c.data.audio.frontend, c.data.audio.feature_size, c.data.audio.chunk_length) == ("whisper", 80, 30)
    assert c.data.audio.pad_to_chunk
  else:  # microsoft/wavlm-large
    e = audio.encoder_config
    assert (e.hidden_size, e.num_hidden_layers, e.num_attention_heads, e.intermediate_size) == (1024, 24, 16, 4096)
    assert e.feat_extract_norm == "layer" and e.do_stable_layer_norm and not e.conv_bias
    assert c.data.audio.frontend == "wav2vec2"
  # 30 s of 16 kHz audio: 1500 encoder frames at 50 Hz, then the adapter's stride-2 conv (pad 2, k 3): 751
  # tokens, about 25 per second (docs/architecture.md).
  assert modrwkv.pipeline_num_tokens(model, "audio")(30 * 16000) == 751


def test_timeseries_recipe():
  c = _load("timeseries_wavenet.py")
  model = C.model_config(c)
  series = model.modality("series")
  assert series.encoder == "wavenet" and series.train_encoder and "encoder" in c.train.trainable
  assert series.projector.kind == "series" and series.projector.hidden_mult == 4  # docs/architecture.md: m = 4
  assert model.forecast_horizon == 96
  (source,) = c.data.sources
  assert source["kind"] == "series" and source["path"] == "{root}/timeseries/ETTh1.csv"
  assert (source["options"]["context"], source["options"]["horizon"]) == (720, 96)  # lookback 720, horizon 96
  assert (c.data.series.length, c.data.series.horizon) == (720, 96)
  assert modrwkv.num_tokens(model, "series", 720) == 720


def test_demo_builds_offline_and_is_small():
  c = _load("demo.py")
  assert c.data.builder == "demo" and all(s["path"].startswith("{cache}/demo/") for s in c.data.sources)
  assert (c.train.batch_size, c.train.steps) == (16, 520)
  # Digits alone for the first 120 steps (reading images), then the mixture.
  assert [(n, [s["path"] for s in sources]) for n, sources in C.curriculum(c)] == [(120, ["{cache}/demo/digits/{split}.json"])]
  model = C.model_config(c)
  assert (model.rwkv.n_layer, model.rwkv.n_embd, model.rwkv.head_size) == (6, 128, 32)
  assert [name for name, _ in model.modalities] == ["image", "audio", "series"]
  assert modrwkv.num_tokens(model, "image", 0) == 8  # 16 patches, compressor (2, 2)
  assert modrwkv.num_tokens(model, "audio", 200) == 9  # 2 s: 200 mel frames, 100 encoder frames, compressor (8, 6)
  assert modrwkv.num_tokens(model, "series", 48) == 12  # 48 months, compressor (4, 4)
  assert dict(model.modalities)["audio"].train_encoder is False  # Whisper-base stays frozen (the paper)
  pipe = C.pipeline_config(c, model, batch_size=16)  # {cache} needs no data.root
  assert pipe.image.fixed_size == (32, 32)


# ---------------------------------------------------------------------------------------------
# RWKV-7 parameter counts: a closed form from the layer shapes of models/rwkv7.py.


def rwkv7_param_count(cfg: rwkv7.RWKV7Config) -> int:
  """Parameters of an RWKV-7 model, from its shapes (docs/formats.md#rwkv-lm-pth):

    top:        emb V·D + head V·D + ln0, ln_out 2·2·D
    per layer:  r, k, v, o 4·D²; ffn key + value 2·D·F;
                LoRA pairs (D·r + r·D) for w, a, g: 2·D·(dw + da + dg);
                vectors 18·D: x_r x_w x_k x_v x_a x_g (6), w0 a0 k_k k_a (4), r_k [H, N] (1), ln_x (2),
                ffn.x_k (1), ln1, ln2 (4)
    value residual (v0 [D], v1 [D, dv], v2 [dv, D]): D·(2·dv + 1) in layers 1..L−1 — and in layer 0
                too in the scanned layout, whose stacked block 0 holds the (unused) value-residual params.
  """
  L, D, F, V = cfg.n_layer, cfg.n_embd, cfg.dim_ffn, cfg.vocab_size
  per_layer = 4 * D * D + 2 * D * F + 2 * D * (cfg.dim_w + cfg.dim_a + cfg.dim_g) + 18 * D
  value_residual = D * (2 * cfg.dim_v + 1)
  return 2 * V * D + 4 * D + L * per_layer + (L if cfg.scan_layers else L - 1) * value_residual


def _counted(cfg: rwkv7.RWKV7Config) -> int:
  shapes = jax.eval_shape(lambda k: rwkv7.init_params(cfg, k), jax.random.key(0))  # shapes only
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


# The official checkpoints' sizes (unrolled layout = the .pth's tensors).
PRESET_PARAMS = {"0.4B": 450_767_872, "1.5B": 1_527_404_544, "2.9B": 2_947_735_040}


@pytest.mark.parametrize("name", sorted(PRESET_PARAMS))
def test_rwkv7_preset_param_count(name):
  cfg = rwkv7.preset(name)
  assert rwkv7_param_count(cfg) == PRESET_PARAMS[name]
  counted = _counted(cfg)
  assert counted == PRESET_PARAMS[name], f"{name}: init_params holds {counted:,}; closed form {PRESET_PARAMS[name]:,}"


def test_rwkv7_scanned_layout_adds_block0_value_residual():
  cfg = rwkv7.preset("0.4B", scan_layers=True)
  D, dv = cfg.n_embd, cfg.dim_v
  assert _counted(cfg) == rwkv7_param_count(cfg) == PRESET_PARAMS["0.4B"] + D * (2 * dv + 1)


# ---------------------------------------------------------------------------------------------
# Overrides, diff, files, pipelines.


def test_apply_overrides_parses_and_checks():
  base = _load("tiny.py")
  changed = C.apply_overrides(base, ["train.steps=2", "mesh.fsdp=2", "optim.lr=3e-4",
                                     "init.encoder_hf.image=/tmp/x"])
  assert changed.train.steps == 2 and isinstance(changed.train.steps, int)
  assert changed.mesh.fsdp == 2
  assert changed.optim.lr == 3e-4 and isinstance(changed.optim.lr, float)
  assert changed.init.encoder_hf.image == "/tmp/x"  # a free subtree takes new keys (a bare string)
  assert base.train.steps == 6 and "image" not in base.init.encoder_hf  # the input is not modified
  assert set(C.diff(base, changed)) == {"train.steps", "mesh.fsdp", "optim.lr", "init.encoder_hf"}
  assert C.diff(base, changed)["train.steps"] == (6, 2)
  C.check_schema(changed)


def test_apply_overrides_lr_as_int_becomes_float():
  assert C.apply_overrides(_load("tiny.py"), ["optim.lr=1"]).optim.lr == 1.0


def test_unknown_key_names_the_closest():
  with pytest.raises(KeyError, match=r"train\.steps"):
    C.apply_overrides(_load("tiny.py"), ["train.stpes=2"])


def test_wrong_type_is_refused():
  with pytest.raises(ValueError, match="train.steps"):
    C.apply_overrides(_load("tiny.py"), ["train.steps='abc'"])


def test_unknown_key_in_a_config_file_is_refused(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text("from modrwkv_jax.training.config import base_config\n"
                  "def get_config():\n  c = base_config()\n  c.train.stpes = 3\n  return c\n")
  with pytest.raises(KeyError, match=r"train\.stpes.*train\.steps"):
    C.load_config_file(str(path))


def test_check_files_names_the_missing_weight(tmp_path):
  missing = str(tmp_path / "nope.pth")
  config = C.apply_overrides(_load("modrwkv_0.4b_siglip2_phase1.py"), [f"init.rwkv_pth={missing}"])
  with pytest.raises(FileNotFoundError) as err:
    C.check_files(config)
  assert "init.rwkv_pth" in str(err.value) and missing in str(err.value)


def test_check_files_passes_when_the_files_exist(tmp_path):
  pth, snapshot = tmp_path / "rwkv.pth", tmp_path / "siglip2"
  pth.write_bytes(b"")
  snapshot.mkdir()
  config = C.apply_overrides(_load("modrwkv_0.4b_siglip2_phase2.py"),
                             [f"init.rwkv_pth={pth}", f"init.encoder_hf.image={snapshot}"])
  C.check_files(config)


def test_pipeline_config_of_tiny_builds():
  c = _load("tiny.py")
  pipe = C.pipeline_config(c, C.model_config(c), batch_size=8)
  assert [s.kind for s in pipe.sources] == ["llava", "audio", "series"]
  assert pipe.sources[0].path == os.path.join(c.data.cache_dir, "tiny", "shapes_vqa", "{split}.json")
  assert pipe.batch_size == 8 and pipe.max_length == 128
  assert pipe.image is not None and pipe.audio is not None and pipe.series is not None


def test_root_paths_need_data_root():
  c = _load("modrwkv_0.4b_siglip2_phase1.py")
  assert c.data.root == ""
  with pytest.raises(ValueError, match=r"data\.root"):
    C.pipeline_config(c, C.model_config(c), batch_size=2)
  c = C.apply_overrides(c, ["data.root=/datasets"])
  (source,) = C.pipeline_config(c, C.model_config(c), batch_size=2).sources
  assert source.path == "/datasets/LLaVA-CC3M-Pretrain-595K/chat.json"
  assert source.options["root"] == "/datasets/LLaVA-CC3M-Pretrain-595K"


def test_check_values_names_the_key_before_anything_compiles():
  for path in CONFIG_FILES:
    C.check_values(C.load_config_file(path))
  config = _load("tiny.py")
  for key, bad in (("log_every", 0), ("steps", -1), ("checkpoint_every", -5), ("keep_checkpoints", 0),
                   ("max_skipped_in_a_row", 0), ("label_capacity", -1)):
    with pytest.raises(ValueError, match=rf"train\.{key}={bad}: must be an integer >= "):
      C.check_values(C.apply_overrides(config, [f"train.{key}={bad}"]))
  for key in ("checkpoint_every", "eval_every", "label_capacity"):  # 0 means something for these
    C.check_values(C.apply_overrides(config, [f"train.{key}=0"]))
