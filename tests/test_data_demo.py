"""The offline demo data: deterministic from the seed (byte-identical files), exact answers, fixed-length
clips spoken by held-out voices in the test split, tri-modal records whose text twins ask the same
question about the same image, and every part loads through the real sources and the pipeline."""

import filecmp
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import data_helpers as H
from modrwkv_jax.data import demo
from modrwkv_jax.data import pipeline as P
from modrwkv_jax.data import sources as S

SIZES = dict(shapes=(6, 2, 2), digits=(5, 2, 2), spoken=(4, 2, 3), trimodal=(5, 2, 4))


@pytest.fixture(scope="module")
def demo_dirs(tmp_path_factory):
  """The same seed built twice (once through the CLI), and another seed."""
  a, b, c = (tmp_path_factory.mktemp(n) for n in ("a", "b", "c"))
  cli = [sys.executable, "-m", "modrwkv_jax.data.demo", "--out", str(a), "--seed", "3"]
  for k, v in SIZES.items():
    cli += [f"--{k}"] + [str(n) for n in v]
  proc = subprocess.run(cli, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  demo.build(str(b), 3, **SIZES)
  demo.build(str(c), 4, **SIZES, parts=("shapes", "spoken", "trimodal"))
  return a, b, c


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_same_seed_same_bytes(demo_dirs):
  a, b, c = demo_dirs
  files = _files(a)
  assert files == _files(b) and len(files) > 40
  _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
  assert not mismatch and not errors, mismatch + errors
  for name in ("shapes_vqa/train.json", "spoken_digits/train.jsonl", "trimodal/train.json"):
    assert not filecmp.cmp(os.path.join(a, name), os.path.join(c, name), shallow=False), name


def _answer(question, objects):
  """The answer to a templated question, recomputed from the object list."""
  if question == "How many shapes are there?":
    return str(len(objects))
  if m := re.fullmatch(r"How many (\w+) shapes are there\?", question):
    return str(sum(o["colour"] == m[1] for o in objects))
  if m := re.fullmatch(r"What colour is the (\w+)\?", question):
    (o,) = [o for o in objects if o["shape"] == m[1]]  # the question is only asked of a unique shape
    return o["colour"]
  m = re.fullmatch(r"Is there a (\w+) (\w+)\?", question)
  return "yes" if any(o["colour"] == m[1] and o["shape"] == m[2] for o in objects) else "no"


def test_shapes_answers_are_exact(demo_dirs):
  root = demo_dirs[0]
  for split, n in zip(demo.SPLITS, SIZES["shapes"]):
    src = S.LlavaSource(os.path.join(root, "shapes_vqa", f"{split}.json"))
    raw = json.load(open(os.path.join(root, "shapes_vqa", f"{split}.json")))
    assert len(src) == n
    for i in range(n):
      record, objects = src[i], raw[i]["objects"]
      assert 1 <= len(objects) <= 5 and os.path.isfile(record["image"][0])
      turns = record["conversations"]
      assert turns[0]["value"].startswith("<image>\n") and len(turns) == 4
      for q, a in zip(turns[::2], turns[1::2]):
        assert a["value"] == _answer(q["value"].removeprefix("<image>\n"), objects), (q, objects)
      # The rendered scene has each object's colour at its centre.
      import PIL.Image
      pixels = np.asarray(PIL.Image.open(record["image"][0]))
      for o in objects:
        assert tuple(pixels[o["y"], o["x"]]) == demo.COLOURS[o["colour"]], o


def test_digits_match_sklearn(demo_dirs):
  from sklearn.datasets import load_digits
  images = load_digits().images
  root = demo_dirs[0]
  raw = json.load(open(os.path.join(root, "digits", "train.json")))
  src = S.LlavaSource(os.path.join(root, "digits", "train.json"))
  import PIL.Image
  for i, r in enumerate(raw):
    assert src[i]["conversations"][1]["value"] == demo.DIGIT_WORDS[r["label"]]
    small = np.asarray(PIL.Image.open(src[i]["image"][0]))[2::4, 2::4]  # one pixel per upscaled cell
    np.testing.assert_array_equal(small, np.round(255 - images[r["sklearn_index"]] * (255 / 16)).astype(np.uint8))


def _check_clip(path):
  """A CLIP_SECONDS 16 kHz clip: speech in its first part, then silence (nothing was cut off)."""
  import soundfile as sf
  wave, rate = sf.read(path, dtype="int16")
  assert rate == demo.SAMPLE_RATE and len(wave) == int(demo.CLIP_SECONDS * rate), (path, rate, len(wave))
  loud = np.flatnonzero(np.abs(wave.astype(np.int32)) > 64)
  assert loud.size and loud[0] <= 0.1 * rate + 1 and loud[-1] < len(wave) - 1, path


def test_spoken_digits_voices_and_manifest(demo_dirs):
  root = demo_dirs[0]
  meta = json.load(open(os.path.join(root, "meta.json")))["spoken_digits"]
  voices = {}
  for split in demo.SPLITS:
    path = os.path.join(root, "spoken_digits", f"{split}.jsonl")
    raw = [json.loads(line) for line in open(path)]
    src = S.AudioManifestSource(path)
    voices[split] = {r["voice"] for r in raw}
    for i, r in enumerate(raw):
      words = r["text"].split()
      assert 2 <= len(words) <= 5 and set(words) <= set(demo.DIGIT_WORDS)
      assert src[i]["conversations"] == [{"from": "gpt", "value": r["text"]}]  # ASR: [audio] ++ the transcript
      _check_clip(src[i]["audio"][0])
  if meta["audio_synth"].startswith("espeak-ng"):
    assert voices["test"] <= set(demo.TEST_VOICES) and not voices["test"] & set(demo.TRAIN_VOICES)
    assert voices["train"] <= set(demo.TRAIN_VOICES)
  else:  # the documented fallback when espeak-ng cannot be loaded
    assert meta["audio_synth"].startswith("tones")


def test_trimodal_records_and_their_text_twins(demo_dirs):
  root = demo_dirs[0]
  for split, n in zip(demo.SPLITS, SIZES["trimodal"]):
    path = os.path.join(root, "trimodal", f"{split}.json")
    raw = json.load(open(path))
    spoken = S.LlavaSource(path)
    text = S.LlavaSource(os.path.join(root, "trimodal_text", f"{split}.json"), root=os.path.join(root, "trimodal"))
    assert len(spoken) == len(text) == n
    for i in range(n):
      a, b, r = spoken[i], text[i], raw[i]
      assert len(a["image"]) == len(a["audio"]) == 1 and a["image"] == b["image"] and not b["audio"]
      assert a["conversations"][0]["value"] == demo.TRIMODAL_PROMPT
      assert b["conversations"][0]["value"] == "<image>\n" + r["question"]
      answer = a["conversations"][1]["value"]
      assert answer == b["conversations"][1]["value"] == _answer(r["question"], r["objects"])
      assert demo.question_type(r["question"]) in demo.QUESTION_TYPES
      _check_clip(a["audio"][0])
      if json.load(open(os.path.join(root, "meta.json")))["trimodal"]["audio_synth"].startswith("espeak-ng"):
        assert r["voice"] in (demo.TEST_VOICES if split == "test" else demo.TRAIN_VOICES)


def test_question_type():
  assert demo.question_type("<image>\nHow many shapes are there?") == "count"
  assert demo.question_type("How many red shapes are there?") == "count_colour"
  assert demo.question_type("Is there a blue circle?") == "exists"
  assert demo.question_type("What colour is the square?") == "unique_colour"
  assert demo.question_type("What digit is shown?") is None


def test_build_if_needed_rebuilds_only_stale_folders(tmp_path):
  out = str(tmp_path / "d")
  kwargs = dict(shapes=(2, 1, 1), parts=("shapes",))
  assert demo.build_if_needed(out, 0, **kwargs)
  assert os.path.isfile(os.path.join(out, ".complete"))
  stamp = os.path.getmtime(os.path.join(out, "shapes_vqa", "train.json"))
  assert not demo.build_if_needed(out, 0, **kwargs)
  assert os.path.getmtime(os.path.join(out, "shapes_vqa", "train.json")) == stamp
  assert demo.build_if_needed(out, 0, shapes=(3, 1, 1), parts=("shapes",))  # other arguments: rebuilt
  assert len(json.load(open(os.path.join(out, "shapes_vqa", "train.json")))) == 3


def test_series_baselines_recomputed_through_source(demo_dirs):
  root = os.path.join(demo_dirs[0], "timeseries")
  spec = json.load(open(os.path.join(root, "spec.json")))
  baselines = json.load(open(os.path.join(root, "baselines.json")))
  for name, sp in spec.items():
    src = S.SeriesSource(os.path.join(root, sp["file"]), split="test", context=sp["context"], horizon=sp["horizon"],
                         stride=sp["stride"], split_fractions=sp["split_fractions"], time_column=sp["time_column"])
    assert len(src) == baselines[name]["test"]["windows"] > 10
    err = []
    for i in range(len(src)):
      r = src[i]
      x = r["series"][0]
      forecast = np.array([x[len(x) - sp["season"] + h % sp["season"]] for h in range(sp["horizon"])])
      err.append(forecast - r["target"][0])
    err = np.concatenate(err)
    np.testing.assert_allclose(np.mean(err ** 2), baselines[name]["test"]["mse"], rtol=1e-5)
    np.testing.assert_allclose(np.mean(np.abs(err)) / baselines[name]["train_std"],
                               baselines[name]["test"]["mae_normalised"], rtol=1e-5)


def test_demo_through_the_pipeline(demo_dirs):
  root = str(demo_dirs[0])
  spec = json.load(open(os.path.join(root, "timeseries", "spec.json")))["co2"]
  series_opts = {k: spec[k] for k in ("context", "horizon", "stride", "time_column", "split_fractions")}
  cfg = P.PipelineConfig(
      [P.SourceConfig("llava", os.path.join(root, "shapes_vqa", "{split}.json")),
       P.SourceConfig("llava", os.path.join(root, "digits", "{split}.json")),
       P.SourceConfig("audio", os.path.join(root, "spoken_digits", "{split}.jsonl")),
       P.SourceConfig("llava", os.path.join(root, "trimodal", "{split}.json")),
       P.SourceConfig("series", os.path.join(root, "timeseries", "co2.csv"), options=series_opts)],
      batch_size=5, image=H.image_config(), audio=H.audio_config(), series=H.series_config(), bucket_window=2,
      mixture_length=15)
  pipeline = P.make_pipeline(cfg, "validation", seed=0, epoch=0, process_index=0, process_count=1)
  batches = list(pipeline)
  assert len(batches) == 3 and pipeline.stats["examples"] == 15 and pipeline.stats["skipped_total"] == 0
  counts = {m: sum(int(b[f"{m}_count"].sum()) for b in batches) for m in ("image", "audio", "series")}
  assert counts == {"image": 9, "audio": 6, "series": 3}, counts  # tri-modal records hold an image and a clip
