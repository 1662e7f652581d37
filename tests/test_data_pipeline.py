"""Grain pipeline: batch schema, bucketing and padding, determinism, host sharding, orbax iterator
checkpoints (also across a process restart), every bad-record case under both policies, workers."""

import os
import subprocess
import sys

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

import data_helpers as H
from helpers import EPS32, check
from modrwkv_jax.data import audio as audio_lib
from modrwkv_jax.data import image as image_lib
from modrwkv_jax.data import pipeline as P
from modrwkv_jax.data.sources import RecordError
from modrwkv_jax.tokenizer import world_tokenizer

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def make(cfg, split="train", **kw):
  return P.make_pipeline(cfg, split, **{"seed": 0, "epoch": 0, "process_index": 0, "process_count": 1, **kw})


def all_batches(pipeline):
  return list(iter(pipeline))


def test_batch_schema_all_modalities(tmp_path):
  llava = H.write_llava(tmp_path, 6)
  audio = H.write_audio_manifest(tmp_path, 4)
  series = H.write_series_csv(tmp_path, 40)
  cfg = P.PipelineConfig(
      [P.SourceConfig("llava", llava), P.SourceConfig("audio", audio),
       P.SourceConfig("series", series, options={"context": 16, "horizon": 4, "time_column": "date"})],
      batch_size=4, image=H.image_config(), audio=H.audio_config(), series=H.series_config(),
      shuffle=False, bucket_window=1)
  pipeline = make(cfg)
  batches = all_batches(pipeline)
  assert len(batches) == len(pipeline) == 3 and pipeline.num_records == 12  # mix: 4 of each until audio runs out
  for batch in batches:
    B, T = batch["tokens"].shape
    assert B == 4 and T % 16 == 0
    expected = {"tokens": np.int32, "labels": np.int32, "mask": np.bool_, "image_pos": np.int32,
                "audio_pos": np.int32, "series_pos": np.int32, "image": np.float32, "image_count": np.int32,
                "audio": np.float32, "audio_mask": np.bool_, "audio_count": np.int32, "series": np.float32,
                "series_mask": np.bool_, "series_count": np.int32, "target": np.float32, "target_mask": np.bool_}
    assert {k: v.dtype.type for k, v in batch.items()} == expected
    I, A, S = batch["image"].shape[1], batch["audio"].shape[1], batch["series"].shape[1]
    assert batch["image"].shape == (B, I, 16, 16, 3) and I == max(1, batch["image_count"].max())
    assert batch["audio"].shape[:2] == (B, A) and batch["audio"].shape[3] == 80
    assert batch["series"].shape == batch["series_mask"].shape == (B, S, 16)
    assert batch["target"].shape == (B, S, 4)
    for m, per_item in (("image", lambda b, i: H.IMAGE_TOKENS), ("series", lambda b, i: 2),
                        ("audio", lambda b, i: H.audio_tokens(int(batch["audio_mask"][b, i].sum()) * 160))):
      pos = batch[f"{m}_pos"]
      assert (batch["tokens"][pos >= 0] == 0).all() and batch["mask"][pos >= 0].all()
      assert (batch["labels"][pos >= 0][:-1] != 0).all()
      for b in range(B):
        n = [per_item(b, i) for i in range(batch[f"{m}_count"][b])]
        L = max([H.IMAGE_TOKENS if m == "image" else 0] + n) if m == "image" else None
        assert (pos[b] >= 0).sum() == sum(n), (m, b)
        if m == "image" and n:  # item i's j-th token -> i * L + j, in order (prefix layout: first)
          np.testing.assert_array_equal(pos[b, :sum(n)], [i * L + j for i in range(len(n)) for j in range(n[i])])
    assert (batch["labels"][~batch["mask"]] == -100).all()
  b0 = batches[0]
  # Row order with shuffle off and grain's 1:1:1 mix: r0, a0, series@0, r1.
  assert H.record_ids(b0)[:2] == ["r0", "a0"] and H.answers(b0)[0] == "answer r0"
  np.testing.assert_array_equal(b0["series"][2, 0], np.arange(16))  # column 0 of the CSV is the step
  np.testing.assert_array_equal(b0["target"][2, 0], np.arange(16, 20))
  assert b0["target_mask"][2].all() and not b0["target_mask"][0].any()
  wave = audio_lib.read_audio(os.path.join(tmp_path, "wav/train_0.wav"))
  feats, fmask = audio_lib.whisper_features([wave], pad_to_chunk=False)
  F = fmask.sum()
  # The log-mel is computed in float64 and rounded once to float32: at most an ulp apart (tests/README.md).
  check("pipeline audio vs whisper_features", b0["audio"][1, 0, :F], feats[0, :F], 2 * EPS32)
  assert b0["audio_mask"][1, 0].sum() == F
  r1 = batches[0]["image"][3, 0]
  check("pipeline image vs preprocess", r1,  # the same uint8 pixels, normalised elementwise
        image_lib.preprocess(os.path.join(tmp_path, "img/train_1_0.png"), cfg.image.processor), 2 * EPS32)


def test_empty_modality_keys_and_frontends(tmp_path):
  llava = H.write_llava(tmp_path, 3)
  audio = H.write_audio_manifest(tmp_path, 2)
  text_only = P.PipelineConfig([P.SourceConfig("llava", llava)], batch_size=1, image=H.image_config(),
                               audio=H.audio_config(pad_to_chunk=True), shuffle=False, bucket_window=1)
  b = next(iter(make(text_only.replace(series=H.series_config(length=24, horizon=6)))))
  assert b["series"].shape == (1, 1, 24) and b["target"].shape == (1, 1, 6) and b["series_count"][0] == 0
  b = next(iter(make(text_only)))  # r0 has no image and no audio, yet every key is there
  assert b["image"].shape == (1, 1, 16, 16, 3) and b["image_count"][0] == 0 and not b["image"].any()
  assert b["audio"].shape == (1, 1, 3000, 80) and b["audio_count"][0] == 0 and (b["image_pos"] == -1).all()
  w2v = P.PipelineConfig([P.SourceConfig("audio", audio)], batch_size=2,
                         audio=H.audio_config(frontend="wav2vec2"), shuffle=False, bucket_window=1)
  b = next(iter(make(w2v)))
  assert b["audio"].shape == (2, 1, 4800) and b["audio_mask"].sum(-1).tolist() == [[3200], [4800]]
  assert "image" not in b and "series" not in b
  whisper = w2v.replace(audio=H.audio_config(pad_to_chunk=True))
  b = next(iter(make(whisper)))
  assert b["audio"].shape == (2, 1, 3000, 80) and b["audio_mask"].sum(-1).tolist() == [[20], [30]]


def test_siglip2_naflex_images(tmp_path):
  proc = image_lib.default_config("siglip2", patch_size=4, max_num_patches=16)
  seen = []

  def tokens(pixels):
    seen.append(pixels)
    return pixels // 16  # one token per 4×4 patch

  cfg = P.PipelineConfig([P.SourceConfig("llava", H.write_llava(tmp_path, 3))], batch_size=3,
                         image=P.ImageConfig(proc, tokens), shuffle=False, bucket_window=1)
  b = next(iter(make(cfg)))
  # 12×16 images -> NaFlex 3×4 patches of 4×4 (the largest patch-aligned size with <= 16 patches).
  assert b["image"].shape == (3, 2, 16, 48) and b["image_mask"].shape == (3, 2, 16)
  assert b["image_spatial_shapes"][2].tolist() == [[3, 4], [3, 4]] and b["image_mask"][2].sum(-1).tolist() == [12, 12]
  assert b["image_count"].tolist() == [0, 1, 2] and set(seen) == {12 * 16}
  assert (b["image_pos"] >= 0).sum(-1).tolist() == [0, 12, 24]
  assert not b["image_mask"][1, 1].any() and not b["image"][0].any()


def test_item_limits_and_disabled_modality(tmp_path):
  path = H.write_llava(tmp_path, 3)
  cfg = P.PipelineConfig([P.SourceConfig("llava", path)], batch_size=3, image=H.image_config(max_items=1),
                         shuffle=False, bucket_window=1, on_error="skip")
  pipeline = make(cfg)
  b = next(iter(pipeline))
  assert b["image"].shape[1] == 1 and pipeline.stats["skipped"] == {"too_many_items": 1}
  with pytest.raises(RecordError, match="no image modality configured"):
    all_batches(make(cfg.replace(image=None, on_error="raise")))


def test_forecast_records_with_a_prompt(tmp_path):
  opts = {"context": 16, "horizon": 4, "time_column": "date", "prompt": "Forecast the next 4 steps."}
  cfg = P.PipelineConfig([P.SourceConfig("series", H.write_series_csv(tmp_path, 40), options=opts)], batch_size=2,
                         series=H.series_config(), shuffle=False, bucket_window=1)
  b = next(iter(make(cfg)))
  assert (b["labels"] == -100).all() and b["target_mask"].all()  # the loss is on `target`, not on text
  assert b["series"].shape == (2, 1, 16) and b["target"].shape == (2, 1, 4)
  text = world_tokenizer().decode(b["tokens"][0][b["mask"][0]])
  assert text == "\x16User: Forecast the next 4 steps.\x17" and (b["series_pos"][0, :2] == [0, 1]).all()


def test_placeholder_layout_in_pipeline(tmp_path):
  cfg = P.PipelineConfig([P.SourceConfig("llava", H.write_llava(tmp_path, 3))], batch_size=3,
                         image=H.image_config(), layout="placeholder", shuffle=False, bucket_window=1)
  b = next(iter(make(cfg)))
  assert b["image_count"].tolist() == [0, 1, 2]
  # "\x16User: " is 4 tokens (23, "User", ":", " "), then the image tokens; the second image follows "\n".
  assert (b["image_pos"][1, 4:8] == [0, 1, 2, 3]).all() and (b["image_pos"][1, :4] == -1).all()
  assert (b["image_pos"][2, 4:8] == [0, 1, 2, 3]).all() and (b["image_pos"][2, 9:13] == [4, 5, 6, 7]).all()
  assert (b["image_pos"][0] == -1).all()


def test_bucketing_pads_less_and_sees_every_record(tmp_path):
  path = H.write_llava(tmp_path, 48, long_every=4)
  base = P.PipelineConfig([P.SourceConfig("llava", path)], batch_size=4, image=H.image_config(), max_length=None)
  stats = {}
  for window in (1, 6):
    pipeline = make(base.replace(bucket_window=window))
    ids = [i for b in pipeline for i in H.record_ids(b)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(48))
    stats[window] = pipeline.stats
  assert stats[6]["padding_fraction"] < 0.6 * stats[1]["padding_fraction"], stats  # measured 0.18 vs 0.34
  assert stats[6]["examples"] == 48 and stats[6]["skipped_total"] == 0
  fixed = make(base.replace(length_buckets=(32, 64, 128, 256), max_length=256))
  assert {b["tokens"].shape[1] for b in fixed} <= {32, 64, 128, 256}
  assert P.padded_batch_length([17], base) == 32 and P.padded_batch_length([], base) == 16


def test_seed_and_epoch_determinism(tmp_path):
  cfg = P.PipelineConfig([P.SourceConfig("llava", H.write_llava(tmp_path, 20, long_every=3))], batch_size=4,
                         image=H.image_config(), bucket_window=2)
  order = lambda **kw: [i for b in make(cfg, **kw) for i in H.record_ids(b)]
  e0 = order(epoch=0)
  assert e0 == order(epoch=0)
  e1 = order(epoch=1)
  assert e1 != e0 and sorted(e1) == sorted(e0)
  assert order(seed=1) != e0


def test_two_hosts_disjoint_and_complete(tmp_path):
  cfg = P.PipelineConfig([P.SourceConfig("llava", H.write_llava(tmp_path, 13))], batch_size=2,
                         image=H.image_config(), bucket_window=2)
  hosts = [make(cfg, process_index=p, process_count=2) for p in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == 4  # ceil(ceil(13 / 2) / 2)
  ids = [[i for b in h for i in H.record_ids(b)] for h in hosts]
  seen = [{i for i in host if i} for host in ids]
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == {f"r{i}" for i in range(13)}
  assert sum(i is None for host in ids for i in host) == 2 * 4 * 2 - 13  # empty rows pad the tail


def resume_config(root):
  """The config of the checkpoint tests; also built by the restarted process."""
  return P.PipelineConfig([P.SourceConfig("llava", os.path.join(root, "train.json"))], batch_size=2,
                          image=H.image_config(), bucket_window=3, read_threads=2, prefetch=2)


def test_checkpoint_resumes_on_the_next_batch(tmp_path):
  H.write_llava(tmp_path, 20, long_every=3)
  cfg = resume_config(tmp_path)
  it = iter(make(cfg, epoch=1))
  for _ in range(3):
    next(it)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = [next(it) for _ in range(3)]

  fresh = iter(make(cfg, epoch=1))
  manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  for want in expected:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)

  # A new process (fresh interpreter, fresh pipeline) restores from the same checkpoint.
  script = f"""
import sys, numpy as np, grain, orbax.checkpoint as ocp
sys.path.insert(0, {TESTS_DIR!r})
import test_data_pipeline as T
it = iter(T.make(T.resume_config({str(tmp_path)!r}), epoch=1))
ocp.CheckpointManager({str(tmp_path / 'ckpt')!r}).restore(3, args=ocp.args.Composite(
    data=grain.checkpoint.CheckpointRestore(it)))
np.savez({str(tmp_path / 'next.npz')!r}, **next(it))
"""
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  restarted = np.load(tmp_path / "next.npz")
  assert set(restarted.files) == set(expected[0])
  for k in expected[0]:
    np.testing.assert_array_equal(restarted[k], expected[0][k], err_msg=k)


# ---------------------------------------------------------------------------------------------
# Bad records: each case under "raise" (error names file, record id, field) and "skip" (counted).


def _bad_llava(root, raw_extra, files=()):
  for name, data in files:
    os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
    with open(os.path.join(root, name), "wb") as f:
      f.write(data)
  return P.SourceConfig("llava", H.write_llava(root, 5, extra=[raw_extra]))


def _qa(q="Hi?", a="answer bad"):
  return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


BAD_CASES = {
    "missing_image": (lambda root: _bad_llava(root, {"id": "bad", "image": "img/nope.png",
                                                     "conversations": _qa("<image>\nHi?")}), "image[0]"),
    "corrupt_image": (lambda root: _bad_llava(root, {"id": "bad", "image": "img/junk.png",
                                                     "conversations": _qa("<image>\nHi?")},
                                              [("img/junk.png", b"\x89PNG\r\n\x1a\nnot really")]), "image[0]"),
    "empty_conversation": (lambda root: _bad_llava(root, {"id": "bad", "conversations": []}), "conversations"),
    "non_alternating_roles": (lambda root: _bad_llava(root, {"id": "bad", "conversations": _qa() + _qa()[1:]}),
                              "conversations[2].from"),
    "too_long": (lambda root: _bad_llava(root, {"id": "bad", "conversations": _qa("word " * 200)}), "conversations"),
    "missing_audio": (lambda root: P.SourceConfig("audio", H.write_audio_manifest(
        root, 3, extra=[{"id": "bad", "audio": "wav/nope.wav", "text": "x"}])), "audio[0]"),
    "corrupt_audio": (lambda root: (open(os.path.join(root, "junk.wav"), "wb").write(b"RIFF\x00\x00junk"),
                                    P.SourceConfig("audio", H.write_audio_manifest(
                                        root, 3, extra=[{"id": "bad", "audio": "junk.wav", "text": "x"}])))[1],
                      "audio[0]"),
    "nan_in_series": (lambda root: P.SourceConfig("series", H.write_series_csv(root, 30, nan_at=29), options={
        "context": 8, "horizon": 2, "stride": 10, "time_column": "date", "split_fractions": (1.0, 0.0, 0.0)}),
        "target"),
}


@pytest.mark.parametrize("reason", sorted(BAD_CASES))
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_bad_records(tmp_path, reason, policy):
  make_source, field = BAD_CASES[reason]
  source = make_source(str(tmp_path))
  cfg = P.PipelineConfig([source], batch_size=4, image=H.image_config(), audio=H.audio_config(),
                         series=H.series_config(), max_length=128, on_error=policy, shuffle=False, bucket_window=1)
  pipeline = make(cfg)
  total = pipeline.num_records
  if policy == "raise":
    with pytest.raises(RecordError) as info:
      all_batches(pipeline)
    e = info.value
    assert e.reason == reason and e.field == field, (e.reason, e.field)
    assert os.path.basename(source.path) in str(e) and repr(e.record_id) in str(e) and repr(field) in str(e)
    if reason != "nan_in_series":
      assert e.record_id == "bad"
  else:
    all_batches(pipeline)
    s = pipeline.stats
    assert s["skipped"] == {reason: 1}, s
    assert s["examples"] + s["skipped_total"] == total


def test_truncate_policy(tmp_path):
  root = str(tmp_path)
  src = _bad_llava(root, {"id": "long", "conversations": _qa("Hi?", "answer long " + "word " * 60)})
  image_first = {"id": "img", "image": "img/train_1_0.png", "conversations": _qa("<image>\n" + "q " * 60)}
  cfg = P.PipelineConfig([src], batch_size=6, image=H.image_config(), max_length=32, truncate=True,
                         shuffle=False, bucket_window=1)
  pipeline = make(cfg)
  (b,) = all_batches(pipeline)
  assert pipeline.stats["truncated"] == 1 and b["tokens"].shape[1] == 32
  assert b["mask"][5].all() and b["labels"][5, -1] == -100 and (b["labels"][5] >= 0).sum() > 0
  # Truncation that would leave nothing to train (or cut modality tokens) is still "too_long".
  cfg2 = cfg.replace(sources=[P.SourceConfig("llava", H.write_llava(root, 1, name="t2", extra=[image_first]))],
                     max_length=16, on_error="skip")
  p2 = make(cfg2)
  all_batches(p2)
  assert p2.stats["skipped"] == {"too_long": 1}


def test_multiprocess_workers_match_in_process(tmp_path):
  cfg = P.PipelineConfig([P.SourceConfig("llava", H.write_llava(tmp_path, 8, long_every=3))], batch_size=4,
                         image=H.image_config(), bucket_window=2)
  local = all_batches(make(cfg))
  pipeline = make(cfg.replace(worker_count=1))
  workers = all_batches(pipeline)
  assert len(local) == len(workers) == 2
  for a, b in zip(local, workers):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert pipeline.stats["examples"] == 8
  # A bad record in a worker reaches the consumer as the same RecordError.
  bad = P.SourceConfig("llava", H.write_llava(tmp_path, 3, name="bad", extra=[{"id": "bad", "conversations": []}]))
  with pytest.raises(RecordError) as info:
    all_batches(make(cfg.replace(sources=[bad], worker_count=1)))
  assert (info.value.record_id, info.value.reason) == ("bad", "empty_conversation")
