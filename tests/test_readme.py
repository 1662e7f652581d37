"""README.md's Python examples run as written, so the README cannot drift from the code.

Every ```python block of README.md is extracted and executed, top to bottom, in a fresh namespace, in a
temporary working directory, in one subprocess with 8 simulated CPU devices (the sharding example
builds a data × fsdp × tensor = 1 × 4 × 2 mesh). Nothing in a block is rewritten. What a block needs
from outside is provided as a stand-in, small enough for a 2-core CPU:

  * Files a block names (a downloaded checkpoint, a snapshot folder, an image, an audio clip) exist at
    the path the block uses, as tiny random models of the same kind and format: RWKV-7 `.pth` files
    written by `rwkv7.save_pth` (1 layer × 64; the vocabulary is the full 65536 where a block tokenizes
    text, 512 in the file the presets stand for), SigLIP, Whisper (80 mel bins, the 30 s window) and
    WavLM snapshot folders saved by `transformers` with a preprocessor_config.json, a WorldRWKV `.pth`
    written by `worldrwkv.save_worldrwkv`. The loaders read every size from the files, so the README's
    "0.4B" loads as the tiny model.
  * Presets a block names (`rwkv7.preset("0.4B")`, `siglip.preset("siglip2-base-patch16-384")`) are
    replaced, in the subprocess and before any block runs, by the sizes of stand-in files: every RWKV-7
    preset is the config of `weights/rwkv7-world-0.4b.pth` and every fixed-resolution SigLIP preset
    that of the SigLIP snapshot, so a block that builds from a preset and then loads those files agrees
    with them. (That file's vocabulary is small because initialising vocabulary-sized matrices sharded
    over 8 simulated devices costs about a minute of CPU at 65536.)

Conventions a README block may use (both are visible to the reader of the README):

  * A block whose first line is `# continues the example above` runs in the namespace of the block
    before it (for an example cut in two by prose), instead of a fresh one.
  * A block fenced as ```python no-run is not executed. Use it only for what cannot run on a CPU with
    stand-ins at all, and say why in the prose; every other block must run. No block uses it today.

Tracebacks name README.md and its line numbers. Cost: about 80 s of CPU on 2 cores (the stand-ins are built
once, importing torch for the transformers snapshots; then one subprocess runs every block, most of it
compiling); a loaded machine stretches the wall time.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
CONTINUES = "# continues the example above"
FENCE = re.compile(r"^```(\S*)(.*)$")

# The stand-in files, at the paths the README's blocks name.
RWKV_PTH = "weights/rwkv7-g1-0.4b.pth"  # read with the World tokenizer: the full vocabulary
RWKV_PRESET_PTH = "weights/rwkv7-world-0.4b.pth"  # the presets' sizes; a small vocabulary (module docstring)
SIGLIP_DIRS = ("weights/siglip2-base-patch16-384", "ckpt/siglip2")
WORLDRWKV_PTH = "weights/RWKV7-0.4B-siglip2/rwkv-0.pth"
WHISPER_DIR = "whisper-medium"
WAVLM_DIR = "wavlm-large"
IMAGES = ("cat.jpg", "dog.png")
AUDIO = "clip.flac"


def python_blocks(text: str) -> list[dict]:
  """Every fenced code block whose info string starts with `python`: {line, code, run, continues}.

  `line` is the README line of the block's first code line."""
  blocks, lines, i = [], text.splitlines(), 0
  while i < len(lines):
    m = FENCE.match(lines[i])
    if not m or not m.group(1):
      i += 1
      continue
    lang, rest = m.group(1), m.group(2).split()
    start, j = i + 1, i + 1
    while j < len(lines) and not lines[j].startswith("```"):
      j += 1
    if j == len(lines):
      raise ValueError(f"README.md:{i + 1}: code fence ```{lang} is never closed")
    if lang == "python":
      code = "\n".join(lines[start:j]) + "\n"
      blocks.append({"line": start + 1, "code": code, "run": "no-run" not in rest,
                     "continues": code.lstrip().startswith(CONTINUES)})
    i = j + 1
  return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Stand-ins (built in the pytest process; torch and transformers only for the snapshot folders).

def _tiny_rwkv_config(vocab_size: int):
  from modrwkv_jax.models import rwkv7
  return rwkv7.RWKV7Config(vocab_size=vocab_size, n_layer=1, n_embd=64, head_size=32, dim_w=8, dim_a=8, dim_v=8,
                           dim_g=8, dim_ffn=128)


def _perturb(model, scale: float = 0.05, seed: int = 0):
  """Random, non-trivial weights (fresh HF models have zero biases and unit norms)."""
  import torch
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(scale * torch.randn(p.shape, generator=generator))
  return model


def _siglip_snapshot(folder: pathlib.Path) -> None:
  import transformers
  config = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8)
  _perturb(transformers.SiglipVisionModel(config)).save_pretrained(folder)
  (folder / "preprocessor_config.json").write_text(json.dumps({
      "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
      "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
      "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))


def _whisper_snapshot(folder: pathlib.Path) -> None:
  import transformers
  from transformers.models.whisper.modeling_whisper import WhisperEncoder
  config = transformers.WhisperConfig(num_mel_bins=80, max_source_positions=1500, d_model=32, encoder_layers=2,
                                      encoder_attention_heads=4, encoder_ffn_dim=64, decoder_layers=1,
                                      decoder_attention_heads=4, decoder_ffn_dim=64, vocab_size=64)
  _perturb(WhisperEncoder(config)).save_pretrained(folder)
  transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)


def _wavlm_snapshot(folder: pathlib.Path) -> None:
  import transformers
  config = transformers.WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                                    num_buckets=32, max_bucket_distance=40, feat_extract_norm="layer",
                                    do_stable_layer_norm=True, conv_bias=True)  # the wavlm-large layout
  _perturb(transformers.WavLMModel(config)).save_pretrained(folder)
  transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                        return_attention_mask=True).save_pretrained(folder)


def build_stand_ins(root: pathlib.Path) -> None:
  """Every file the README's Python blocks read, tiny, under `root` (their working directory)."""
  import shutil

  import jax
  import PIL.Image
  import soundfile

  from modrwkv_jax.models import modrwkv, projector, rwkv7, worldrwkv
  from modrwkv_jax.models.encoders import siglip

  (root / "weights").mkdir()
  rwkv_config = _tiny_rwkv_config(65536)
  rwkv_params = rwkv7.init_params(rwkv_config, jax.random.key(0))
  rwkv7.save_pth(rwkv_config, rwkv_params, root / RWKV_PTH)
  small = _tiny_rwkv_config(512)
  rwkv7.save_pth(small, rwkv7.init_params(small, jax.random.key(2)), root / RWKV_PRESET_PTH)

  first = root / SIGLIP_DIRS[0]
  _siglip_snapshot(first)
  for other in SIGLIP_DIRS[1:]:
    shutil.copytree(first, root / other)
  _whisper_snapshot(root / WHISPER_DIR)
  _wavlm_snapshot(root / WAVLM_DIR)

  # A released-form WorldRWKV checkpoint: RWKV-7 + the vision adapter (m = 2), no encoder weights.
  vision, _ = siglip.load_hf(first)
  config = modrwkv.ModRWKVConfig(rwkv_config, (("image", modrwkv.ModalityConfig(
      "siglip", vision, projector.ProjectorConfig("vision", vision.hidden_size, rwkv_config.n_embd, hidden_mult=2))),))
  params = modrwkv.init_params(config, jax.random.key(1), rwkv_params=rwkv_params)
  (root / WORLDRWKV_PTH).parent.mkdir(parents=True, exist_ok=True)
  worldrwkv.save_worldrwkv(config, params, root / WORLDRWKV_PTH)

  rng = np.random.default_rng(0)
  for name in IMAGES:
    PIL.Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(root / name)
  t = np.arange(22050) / 22050  # one second at 22.05 kHz: read_audio resamples it to 16 kHz
  soundfile.write(root / AUDIO, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22050)


# ---------------------------------------------------------------------------------------------
# The runner (the subprocess: `python tests/test_readme.py BLOCKS.json RESULTS.json`, cwd = the stand-ins).

def use_stand_in_presets() -> None:
  """Every RWKV-7 preset becomes the tiny stand-in `.pth`'s sizes, every fixed-resolution SigLIP preset the
  tiny snapshot's (module docstring)."""
  from modrwkv_jax import tensor_files
  from modrwkv_jax.models import rwkv7
  from modrwkv_jax.models.encoders import hf_snapshot, siglip

  tiny_rwkv = rwkv7.config_from_state_dict(tensor_files.read_pth(RWKV_PRESET_PTH), RWKV_PRESET_PTH)
  for name in rwkv7.PRESETS:
    rwkv7.PRESETS[name] = tiny_rwkv
  tiny_siglip = siglip.config_from_hf(hf_snapshot.read_config(SIGLIP_DIRS[0]))
  for name, preset in siglip.PRESETS.items():
    if not preset.naflex:
      siglip.PRESETS[name] = tiny_siglip


def run_blocks(blocks: list[dict]) -> list[dict]:
  """Executes the blocks in order; returns {line, ok, seconds, output, error} per block."""
  results, namespace, previous_ok = [], None, True
  for block in blocks:
    result = {"line": block["line"], "ok": False, "seconds": 0.0, "output": "", "error": ""}
    results.append(result)
    if not block["run"]:
      result.update(ok=True, output="(no-run)")
      continue
    if block["continues"]:
      if namespace is None or not previous_ok:
        result["error"] = "the block it continues did not run"
        previous_ok = False
        continue
    else:
      namespace = {"__name__": "__readme__"}
    # Leading newlines put the code at its README line numbers in tracebacks.
    code = compile("\n" * (block["line"] - 1) + block["code"], str(README), "exec")
    out = io.StringIO()
    start = time.perf_counter()
    try:
      with contextlib.redirect_stdout(out):
        exec(code, namespace)
      result["ok"] = True
    except BaseException:  # noqa: BLE001 - report whatever the block raised, with its README lines
      result["error"] = traceback.format_exc()
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["output"] = out.getvalue()[-2000:]
    previous_ok = result["ok"]
  return results


def _main(blocks_file: str, results_file: str) -> None:
  use_stand_in_presets()
  with open(blocks_file, encoding="utf-8") as f:
    blocks = json.load(f)
  results = run_blocks(blocks)
  with open(results_file, "w", encoding="utf-8") as f:
    json.dump(results, f)


# ---------------------------------------------------------------------------------------------
# The tests.

@pytest.fixture(scope="module")
def results(tmp_path_factory):
  root = tmp_path_factory.mktemp("readme")
  build_stand_ins(root)
  blocks_file, results_file = root / "_blocks.json", root / "_results.json"
  blocks_file.write_text(json.dumps(BLOCKS))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip(),
             PYTHONPATH=os.pathsep.join([str(README.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
  proc = subprocess.run([sys.executable, __file__, str(blocks_file), str(results_file)], cwd=root, env=env,
                        capture_output=True, text=True, timeout=600)
  if proc.returncode or not results_file.exists():
    raise RuntimeError(f"the README runner failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                       f"{proc.stderr[-6000:]}")
  by_line = {r["line"]: r for r in json.loads(results_file.read_text())}
  print("\nREADME blocks: " + ", ".join(f"line {r['line']} {r['seconds']:.1f} s" for r in by_line.values()))
  return by_line


def test_readme_has_python_examples():
  """The extraction itself: the README's examples are found."""
  assert len(BLOCKS) >= 8, f"found only {len(BLOCKS)} ```python blocks in {README}"
  assert not BLOCKS[0]["continues"], f"README.md:{BLOCKS[0]['line']}: the first block cannot continue another"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b['line']}" for b in BLOCKS])
def test_readme_block_runs(block, results):
  if not block["run"]:
    pytest.skip(f"README.md:{block['line']} is fenced ```python no-run")
  result = results[block["line"]]
  assert result["ok"], (f"README.md:{block['line']}: the example fails as written\n{result['error']}\n"
                        f"--- its output ---\n{result['output']}")


if __name__ == "__main__":
  _main(*sys.argv[1:])
