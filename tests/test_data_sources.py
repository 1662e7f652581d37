"""Sources: LLaVA JSON/JSONL, audio manifests, series windows with a chronological split, TFDS
ArrayRecord (a tiny builder made here, no TensorFlow), weighted mixtures; bad records name file/id/field."""

import functools
import importlib.util
import os
import pickle

import numpy as np
import pytest

import data_helpers as H
from helpers import EPS32
from modrwkv_jax.data import pipeline as P
from modrwkv_jax.data import sources as S


def test_llava_json_and_jsonl(tmp_path):
  for fmt in ("json", "jsonl"):
    path = H.write_llava(tmp_path, 6, fmt=fmt)
    src = S.LlavaSource(path)
    assert len(src) == 6
    r0, r1, r2 = src[0], src[1], src[2]
    assert r0["image"] == [] and r0["id"] == "r0" and r0["source"] == path
    assert r1["image"] == [os.path.join(tmp_path, "img/train_1_0.png")]
    assert len(r2["image"]) == 2 and all(os.path.isfile(p) for p in r2["image"])
    assert r1["conversations"][1] == {"from": "gpt", "value": "answer r1"}
    assert r1["preamble"] == "" and r1["series"] == [] and r1["target"] == []


@pytest.mark.parametrize("raw, field, reason", [
    ({"id": "b1", "conversations": []}, "conversations", "empty_conversation"),
    ({"id": "b2"}, "conversations", "empty_conversation"),
    ({"id": "b3", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                                    {"from": "gpt", "value": "c"}]}, "conversations[1].from", "non_alternating_roles"),
    ({"id": "b4", "image": 5, "conversations": [{"from": "gpt", "value": "c"}]}, "image", "bad_field"),
    ({"id": "b5", "conversations": "hello"}, "conversations", "bad_conversation"),
])
def test_llava_bad_record_names_file_id_field(tmp_path, raw, field, reason):
  path = H.write_llava(tmp_path, 1, fmt="jsonl", extra=[raw])
  src = S.LlavaSource(path)
  with pytest.raises(S.RecordError) as info:
    src[1]
  e = info.value
  assert (e.source, e.record_id, e.field, e.reason) == (path, raw["id"], field, reason)
  assert path in str(e) and repr(raw["id"]) in str(e) and repr(field) in str(e)


def test_jsonl_malformed_line(tmp_path):
  path = H.write_llava(tmp_path, 2, fmt="jsonl")
  with open(path, "a") as f:
    f.write('{"id": "x", "conversations": [\n')
  src = S.LlavaSource(path)
  assert len(src) == 3
  with pytest.raises(S.RecordError, match="not valid JSON") as info:
    src[2]
  assert info.value.reason == "bad_json" and info.value.record_id == "#2"


def test_audio_manifest_asr_and_qa(tmp_path):
  src = S.AudioManifestSource(H.write_audio_manifest(tmp_path, 2))
  asr, qa = src[0], src[1]
  assert asr["conversations"] == [{"from": "gpt", "value": "answer a0"}] and asr["preamble"] == "<audio>"
  assert asr["audio"] == [os.path.join(tmp_path, "wav/train_0.wav")]
  assert qa["conversations"] == [{"from": "human", "value": "What is heard?"}, {"from": "gpt", "value": "answer a1"}]
  bad = S.AudioManifestSource(H.write_audio_manifest(tmp_path, 0, name="bad", extra=[{"id": "q", "audio": "x.wav"}]))
  with pytest.raises(S.RecordError) as info:
    bad[0]
  assert (info.value.field, info.value.reason) == ("text", "empty_conversation")


def test_series_windows_split_by_time(tmp_path):
  path = H.write_series_csv(tmp_path, 100)
  kw = dict(context=10, horizon=5, stride=2, split_fractions=(0.7, 0.1, 0.2), time_column="date")
  bounds = {"train": (0, 70), "validation": (70, 80), "test": (80, 100)}
  for split, (lo, hi) in bounds.items():
    src = S.SeriesSource(path, split=split, **kw)
    assert src.bounds == (lo, hi)
    starts = [int(src[i]["series"][0][0]) for i in range(len(src))]  # column 0 holds the step index
    # Targets lie inside the split; contexts may look back before it.
    first = max(0, lo - 10)
    assert starts == list(range(first, hi - 15 + 1, 2)), (split, starts)
    for i in range(len(src)):
      r = src[i]
      t = int(r["series"][0][0])
      np.testing.assert_array_equal(r["series"][0], np.arange(t, t + 10))
      np.testing.assert_array_equal(r["target"][0], np.arange(t + 10, t + 15))
      assert lo <= r["target"][0][0] and r["target"][0][-1] < hi
      assert r["preamble"] == "<series>" and r["conversations"] == []


def test_series_multivariate_csv_and_npz(tmp_path):
  src = S.SeriesSource(H.write_series_csv(tmp_path, 40, channels=3), context=8, horizon=4, time_column="date")
  assert src.columns == ["v0", "v1", "v2"] and src[0]["series"][0].shape == (8, 3)
  assert src[0]["target"][0].shape == (4, 3)
  np.savez(tmp_path / "s.npz", values=np.arange(50.0), other=np.zeros(3))
  with pytest.raises(ValueError, match="key="):
    S.SeriesSource(tmp_path / "s.npz", context=8, horizon=4)
  npz = S.SeriesSource(tmp_path / "s.npz", key="values", context=8, horizon=4, split="test")
  r = npz[len(npz) - 1]
  assert r["series"][0].shape == (8,) and r["target"][0][-1] == 49


def test_series_nan_window_is_a_bad_record(tmp_path):
  src = S.SeriesSource(H.write_series_csv(tmp_path, 60, nan_at=20), context=10, horizon=5, time_column="date",
                       split_fractions=(1.0, 0.0, 0.0))
  bad = []
  for i in range(len(src)):
    try:
      src[i]
    except S.RecordError as e:
      assert e.reason == "nan_in_series" and e.field in ("series", "target") and "step 20" in str(e)
      bad.append(int(src.starts[i]))
  assert bad == list(range(6, 21))  # every window whose context or target covers step 20


@functools.cache
def tiny_vqa_builder_class():
  if importlib.util.find_spec("tensorflow_datasets") is None:
    pytest.skip("tensorflow-datasets is not installed")
  tfds = S.import_tfds()  # not importorskip: the import must follow a garbage collection (see import_tfds)

  class TinyVqa(tfds.core.GeneratorBasedBuilder):
    """Three VQA examples with uint8 images (Tensor features encode without TensorFlow)."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "id": tfds.features.Text(), "image": tfds.features.Tensor(shape=(12, 16, 3), dtype=np.uint8),
          "question": tfds.features.Text(), "answer": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(3)}

    def _generate_examples(self, n):
      for i in range(n):
        yield str(i), {"id": f"t{i}", "image": np.full((12, 16, 3), 40 * i, np.uint8),
                       "question": "<image>\nWhat grey?", "answer": f"answer t{i}"}

  return TinyVqa


def test_tfds_array_record_source(tmp_path):
  builder = tiny_vqa_builder_class()(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  src = S.TfdsSource.from_builder(builder, "train")
  assert len(src) == 3
  r = src[1]
  assert r["id"] == "t1" and r["conversations"][1]["value"] == "answer t1"
  assert r["image"][0].shape == (12, 16, 3) and r["image"][0].dtype == np.uint8
  assert pickle.loads(pickle.dumps(src))[2]["id"] == "t2"  # workers reopen the reader
  named = S.TfdsSource("tiny_vqa", split="train", data_dir=str(tmp_path))
  assert named[0]["id"] == "t0"
  # Through a pipeline: records are decoded from arrays like files.
  cfg = P.PipelineConfig([P.SourceConfig("tfds", str(builder.data_dir))], batch_size=3, image=H.image_config(),
                         shuffle=False, bucket_window=1)
  batch = next(iter(P.make_pipeline(cfg, "train", process_index=0, process_count=1)))
  assert H.record_ids(batch) == ["t0", "t1", "t2"]
  # fl32(80/255) is the only rounding ((x − 0.5)/0.5 is exact in float32): within one ε of the truth.
  np.testing.assert_allclose(batch["image"][2, 0, 0, 0], 80 / 255 / 0.5 - 1, rtol=EPS32)


def test_weighted_mixture(tmp_path):
  a = H.write_llava(tmp_path / "a", 30, fmt="jsonl")
  b = H.write_llava(tmp_path / "b", 30, fmt="jsonl")
  cfg = P.PipelineConfig([P.SourceConfig("llava", a, weight=3.0), P.SourceConfig("llava", b, weight=1.0)])
  ds = P.records_dataset(cfg, "train", seed=0)
  from_a = [r["source"] == a for r in ds]
  # grain's mix: 3 of A per 1 of B until A runs out (30 A records, 10 B records).
  assert len(ds) == 40 and sum(from_a) == 30
  assert len({r["id"] for r, fa in zip(ds, from_a) if fa}) == 30
  longer = P.records_dataset(cfg.replace(mixture_length=100), "train", seed=0)
  from_a = [r["source"] == a for r in longer]
  assert len(longer) == 100 and sum(from_a) == 75  # components repeat, reshuffled per pass
  firsts = [r["id"] for r in longer if r["source"] == a]
  assert sorted(firsts[:30]) == sorted(firsts[30:60]) and firsts[:30] != firsts[30:60]
