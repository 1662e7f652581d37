"""`make demo` in miniature, end to end: data -> train.py -> checkpoint -> eval.py --task demo -> report.

The same entry points `make demo` runs (the data builder, train.py's and eval.py's `main`, the report
writer), in this process so that nothing is imported or compiled twice, on configs/demo.py with small
overrides: a few records per split, two steps of a 1-layer RWKV-7, and in place of Whisper-base a tiny random
`transformers` Whisper converted by CTranslate2's own `TransformersConverter` (the file format the demo
reads from PyPI). Evidence: every stage writes its files; the report's metrics are exactly what the
predictions file implies (recomputed here from the rows, agreeing with eval.py's own metrics.json, and
following the rows when they are rewritten).
"""

import importlib.util
import json
import os
import time

import numpy as np
import pytest

from modrwkv_jax import demo
from modrwkv_jax.data import demo as demo_data
from modrwkv_jax.evaluation import metrics as eval_metrics
from modrwkv_jax.training import config as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo.py")
SIZES = dict(shapes=(6, 2, 4), questions=2, digits=(6, 2, 4), spoken=(6, 2, 3), trimodal=(8, 2, 4))
# A Whisper small enough to compile in seconds, with Whisper-base's 80 mel bins; 100 positions = the
# demo's 2-s window (200 mel frames).
WHISPER = dict(num_mel_bins=80, max_source_positions=100, d_model=32, encoder_layers=1, encoder_attention_heads=2,
               encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=64,
               max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
TINY = ["model.rwkv.n_layer=1", "model.rwkv.n_embd=32", "model.rwkv.head_size=16", "model.rwkv.dim_w=8",
        "model.rwkv.dim_a=8", "model.rwkv.dim_v=8", "model.rwkv.dim_g=16", "model.rwkv.dim_ffn=64",
        "model.modalities.image.encoder_config.hidden_size=16", "model.modalities.image.encoder_config.intermediate_size=32",
        "model.modalities.image.encoder_config.num_layers=1", "model.modalities.image.encoder_config.num_heads=2",
        "model.modalities.series.encoder_config.residual_channels=8",
        "model.modalities.series.encoder_config.skip_channels=8",
        "model.modalities.series.encoder_config.out_channels=8",
        "model.modalities.series.encoder_config.dilations=(1, 2)"]
TINY += [f"model.modalities.audio.encoder_config.{k}={WHISPER[k]}"
         for k in ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "max_source_positions")]
TINY += ["train.steps=2", "train.batch_size=4", "data.mixture_length=8", "train.checkpoint_every=2", "train.log_every=1",
         "train.progress=False", "optim.warmup=0", "data.length_buckets=(64,)"]  # one compiled train step
# The demo's curriculum, cut to one step on the whole mixture (the same batch structure: no second compile),
# so that train.py switches from data.curriculum[0] to data.sources after step 1.
TINY += ["data.curriculum=" + repr([{"steps": 1, "sources": [dict(s) for s in C.load_config_file(DEMO_CONFIG).data.sources]}])]
LIMIT = 4  # test questions (or forecast windows) per part


def _script(name):
  spec = importlib.util.spec_from_file_location(f"_demo_test_{name}", os.path.join(ROOT, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _tiny_ct2_whisper(folder):
  ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 converts the tiny Whisper the demo reads")
  import torch
  from transformers import WhisperConfig, WhisperForConditionalGeneration
  torch.manual_seed(0)
  hf = os.path.join(folder, "hf")
  WhisperForConditionalGeneration(WhisperConfig(**WHISPER)).save_pretrained(hf)
  out = os.path.join(folder, "whisper-ct2")
  ctranslate2.converters.TransformersConverter(hf).convert(out, quantization="float16", force=True)
  return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The four stages, timed into stages.json as `make demo` does: {"work", "data", "wall"}."""
  base = tmp_path_factory.mktemp("demo")
  data, work = str(base / "data"), str(base / "run")
  whisper = _tiny_ct2_whisper(str(base))
  wall = {}
  t0 = time.perf_counter()
  assert demo_data.build_if_needed(os.path.join(data, "demo"), 0, **SIZES)
  assert not demo_data.build_if_needed(os.path.join(data, "demo"), 0, **SIZES)  # up to date: not rebuilt
  demo.record_stage(work, "data", time.perf_counter() - t0, "demo_data.build_if_needed")
  overrides = [f"--config.{o}" for o in [f"data.cache_dir={data}", f"init.encoder_hf.audio={whisper}", *TINY]]
  t0 = time.perf_counter()
  assert _script("train").main(["--config", DEMO_CONFIG, "--workdir", work, *overrides]) == 0
  demo.record_stage(work, "train", time.perf_counter() - t0, "train.py")
  t0 = time.perf_counter()
  assert _script("eval").main(["--task", "demo", "--checkpoint", work, "--out", os.path.join(work, "eval"),
                               "--batch-size", "4", "--limit", str(LIMIT)]) == 0
  demo.record_stage(work, "eval", time.perf_counter() - t0, "eval.py")
  metrics = demo.write_report(work)
  return {"work": work, "data": data, "metrics": metrics}


def _rows(work):
  return [json.loads(line) for line in open(os.path.join(work, "eval", "predictions.jsonl"))]


def test_each_stage_writes_its_files(run):
  work, data = run["work"], run["data"]
  for part in ("shapes_vqa", "digits", "trimodal", "trimodal_text"):
    assert os.path.isfile(os.path.join(data, "demo", part, "test.json")), part
  for name in ("meta.json", ".complete", "spoken_digits/test.jsonl", "timeseries/co2.csv", "timeseries/elnino.csv"):
    assert os.path.isfile(os.path.join(data, "demo", name)), name
  for name in ("config.json", "metrics.jsonl", "checkpoints/2", "eval/predictions.jsonl", "eval/metrics.json",
               "stages.json", "metrics.json", "report.md"):
    assert os.path.exists(os.path.join(work, name)), name
  curve = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
  assert [r["step"] for r in curve if "loss" in r] == [1, 2]
  parts = [r["meta"]["part"] for r in _rows(work)]
  assert sorted(set(parts)) == ["co2", "digits", "elnino", "shapes_vqa", "spoken_digits", "trimodal", "trimodal_text"]
  assert all(parts.count(p) == min(LIMIT, n) for p, n in (("digits", SIZES["digits"][2]), ("co2", 99), ("elnino", 99),
                                                            ("trimodal", SIZES["trimodal"][2])))


def test_metrics_have_the_issue_keys(run):
  m = json.load(open(os.path.join(run["work"], "metrics.json")))
  for path in ("shapes_vqa.exact_match", "digits.accuracy", "spoken_digits.wer", "series.co2.mse",
               "series.co2.seasonal_naive_mse", "series.elnino.mse", "series.elnino.seasonal_naive_mse",
               "trimodal.accuracy", "trimodal.text_accuracy", "wall_s.data", "wall_s.train", "wall_s.eval",
               "wall_s.total"):
    assert demo._get(m, path) is not None, path
  assert set(m["shapes_vqa"]["per_type"]) <= set(demo_data.QUESTION_TYPES)
  assert m["source"]["agrees_with_eval_metrics"], "the report's numbers differ from eval.py's metrics.json"
  assert set(m["targets"]) == set(demo.TARGETS)
  assert m["wall_s"]["total"] == pytest.approx(sum(m["wall_s"][s] for s in ("data", "train", "eval")), abs=0.02)


def test_metrics_are_computed_from_the_predictions(run):
  work = run["work"]
  rows = _rows(work)
  m = run["metrics"]
  part = lambda name: [r for r in rows if r["meta"]["part"] == name]
  norm = lambda s: str(s).strip().rstrip(".").lower()
  digits = part("digits")
  assert len(digits) == min(LIMIT, SIZES["digits"][2])
  assert m["digits"]["accuracy"] == np.mean([norm(r["output"]) == norm(r["reference"]) for r in digits])
  spoken = part("spoken_digits")
  assert m["spoken_digits"]["wer"] == pytest.approx(
      eval_metrics.wer([r["reference"] for r in spoken], [r["output"] for r in spoken], normalize=True))
  first = [eval_metrics.english_normalize(r["output"]).split()[:1] == eval_metrics.english_normalize(r["reference"]).split()[:1]
           for r in spoken]
  assert m["spoken_digits"]["per_position"][0] == {"position": 0, "accuracy": pytest.approx(np.mean(first)),
                                                   "n": len(spoken)}
  # Rewrite the predictions as perfect answers (and the forecasts as the seasonal-naive ones): the report follows.
  path = os.path.join(work, "eval", "predictions.jsonl")
  original = open(path).read()
  try:
    with open(path, "w") as f:
      for r in rows:
        r = dict(r, output=r["meta"]["naive"] if r["meta"]["kind"] == "forecast" else r["reference"])
        f.write(json.dumps(r) + "\n")
    perfect = demo.write_report(work)
  finally:
    with open(path, "w") as f:
      f.write(original)
  assert perfect["shapes_vqa"]["exact_match"] == perfect["digits"]["accuracy"] == 1.0
  assert perfect["trimodal"]["accuracy"] == perfect["trimodal"]["text_accuracy"] == 1.0
  assert perfect["spoken_digits"]["wer"] == 0.0
  positions = perfect["spoken_digits"]["per_position"]
  assert len(positions) >= 2 and all(p["accuracy"] == 1.0 for p in positions)  # strings of 2-5 digit words
  for name in ("co2", "elnino"):
    s = perfect["series"][name]
    assert s["mse"] == s["seasonal_naive_mse"] == m["series"][name]["seasonal_naive_mse"] > 0
  assert not perfect["source"]["agrees_with_eval_metrics"]  # eval.py's metrics.json still holds the real answers


def test_report_shows_table_figures_and_examples(run):
  work = run["work"]
  report = open(os.path.join(work, "report.md")).read()
  assert "| shapes_vqa.exact_match |" in report and "| wall_s.total |" in report
  assert "## Spoken digit strings" in report and "## Forecasts against the seasonal-naive baseline" in report
  images = [line.split("](", 1)[1].split(")", 1)[0] for line in report.splitlines() if "](report/" in line]
  for rel in images:
    assert os.path.isfile(os.path.join(work, rel)), rel
  assert any(rel.startswith("report/shapes_vqa_") for rel in images)  # thumbnails
  if demo._plt() is not None:
    assert {"report/training_curve.png", "report/forecast_co2.png", "report/forecast_elnino.png"} <= set(images)
