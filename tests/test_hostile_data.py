"""Hostile and careless data (issue 13): every bad file or record ends in a named error or a counted skip.

Each hostile input is built here byte by byte (PNG chunks with struct + zlib, WAV headers with
struct, manifests with and without a byte-order mark), so a reader sees exactly the bytes an attacker
or a broken download hands the loader. A case is checked where it is decoded (the error names the
file and carries a `reason`) and through the pipeline: on_error="raise" raises a RecordError naming
the file, the record id and the field; on_error="skip" turns the record into an empty row counted
under its reason in `pipeline.stats["skipped"]`, and the run goes on.
"""

import json
import os
import signal
import struct
import zlib

import numpy as np
import PIL.Image
import pytest

import data_helpers as H
from modrwkv_jax.data import audio as audio_lib
from modrwkv_jax.data import image as image_lib
from modrwkv_jax.data import pipeline as P
from modrwkv_jax.data import sources as S
from modrwkv_jax.data import transforms as T
from modrwkv_jax.data.sources import RecordError
from modrwkv_jax.tokenizer import world_tokenizer

# ---------------------------------------------------------------------------------------------
# The bytes.


def png_chunk(kind: bytes, data: bytes) -> bytes:
  """length (big-endian u32) ++ type ++ data ++ CRC-32 of type ++ data."""
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, idat: bytes, color_type: int = 2) -> bytes:
  """A PNG whose IHDR claims width×height 8-bit pixels (color_type 0 grey, 2 RGB), with `idat` as the
  compressed pixel stream (one filter byte, then the samples, per row)."""
  ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# The header claims 40000×40000 RGB (4.8 GB decoded); the file is 72 bytes.
BOMB_PNG = png(40000, 40000, zlib.compress(b"\0" * 16))
# 9000×9000 = 81 Mpx: under PIL's own bomb threshold (89.5 Mpx), over ours (8192² = 67 Mpx).
BIG_PNG = png(9000, 9000, zlib.compress(b"\0" * 16))
# A complete 1×20000 grey image (20000 rows of filter byte 0 + one pixel): a shortest-edge resize to
# 224 would make it 224×4,480,000.
SLIVER_PNG = png(1, 20000, zlib.compress(b"\0\x80" * 20000, 9), color_type=0)
# A well-formed 4×3 RGB image (each row: filter byte 0, then 4 grey-ish RGB pixels).
GOOD_PNG = png(4, 3, zlib.compress((b"\0" + b"\x80" * 12) * 3))
# An 8×8 RGB image whose compressed pixel stream stops half way.
TRUNCATED_PNG = png(8, 8, zlib.compress(b"".join(b"\0" + bytes(range(r, r + 24)) for r in range(8)))[:40])


def wav(samples: np.ndarray, rate: int, *, declared_bytes: int | None = None) -> bytes:
  """A 16-bit mono PCM WAV: RIFF header, "fmt " chunk, "data" chunk declaring `declared_bytes`
  (default: the true size)."""
  data = samples.astype("<i2").tobytes()
  n = len(data) if declared_bytes is None else declared_bytes
  fmt = struct.pack("<HHIIHH", 1, 1, rate, 2 * rate, 2, 16)  # PCM, mono, rate, byte rate, align, bits
  riff_size = min(4 + 8 + len(fmt) + 8 + n, 0xFFFFFFFF)
  return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
          + b"data" + struct.pack("<I", n) + data)


TONE = (3000 * np.sin(np.arange(4000) / 5)).astype(np.int16)  # 0.5 s at 8 kHz
GOOD_WAV = wav(TONE, 8000)
HALF_WAV = GOOD_WAV[:len(GOOD_WAV) // 2]  # the header still promises 8000 data bytes; 3978 follow


def write(path, data: bytes) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return str(path)


def float_tiff(path, x: np.ndarray) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.Image.fromarray(x.astype(np.float32)).save(path, format="TIFF")  # float32 [H, W] -> mode "F"
  return str(path)


def qa(question="<image>\nWhat is it?", answer="answer bad"):
  return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


# ---------------------------------------------------------------------------------------------
# Running the pipeline under both policies.


def make(cfg):
  return P.make_pipeline(cfg, "train", seed=0, epoch=0, process_index=0, process_count=1)


def expect_raise_and_skip(cfg, reason: str, field: str, source_file: str, n_bad: int = 1):
  """"raise" names file, record "bad", field and reason; "skip" counts n_bad under reason."""
  with pytest.raises(RecordError) as info:
    list(make(cfg.replace(on_error="raise")))
  e = info.value
  assert (e.reason, e.field) == (reason, field), (e.reason, e.field, str(e))
  assert str(e.record_id).startswith("bad") and os.path.basename(source_file) in str(e), str(e)
  pipeline = make(cfg.replace(on_error="skip"))
  batches = list(pipeline)
  s = pipeline.stats
  assert s["skipped"] == {reason: n_bad}, s
  assert s["examples"] + s["skipped_total"] == pipeline.num_records and s["examples"] > 0, s
  return batches


def llava_cfg(root, bad_records, image=None, bucket_window=1, **kw):
  path = H.write_llava(str(root), 3, extra=bad_records)
  cfg = P.PipelineConfig([P.SourceConfig("llava", path, options=kw)], batch_size=2,
                         image=image or H.image_config(), shuffle=False, bucket_window=bucket_window)
  return cfg, path


def clip_config():
  return P.ImageConfig(image_lib.default_config("clip", size={"shortest_edge": 16}, crop_size=(16, 16)),
                       H.image_tokens)


def siglip2_config():
  return P.ImageConfig(image_lib.default_config("siglip2", patch_size=4, max_num_patches=16), lambda px: px // 16)


# ---------------------------------------------------------------------------------------------
# Images.


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
  assert len(BOMB_PNG) < 100
  for data, name in ((BOMB_PNG, "bomb.png"), (BIG_PNG, "big.png")):
    path = write(tmp_path / name, data)
    for call in (lambda: image_lib.open_image(path), lambda: image_lib.load_image(path),
                 lambda: image_lib.preprocess(path, image_lib.default_config("siglip"))):
      with pytest.raises(image_lib.ImageError, match=name) as info:
        call()
      assert info.value.reason == "image_too_large", str(info.value)
    with pytest.raises(image_lib.ImageError, match="image bytes"):  # encoded bytes (a TFDS image)
      image_lib.load_image(data)
  with pytest.raises(image_lib.ImageError, match=r"9000×9000 = 81,000,000 pixels; at most 67,108,864"):
    image_lib.open_image(tmp_path / "big.png")
  # The limit is a processor setting: a 4×3 image is refused under max_pixels=10.
  small = write(tmp_path / "small.png", GOOD_PNG)
  assert image_lib.preprocess(small, image_lib.default_config("siglip")).shape == (224, 224, 3)
  with pytest.raises(image_lib.ImageError, match="4×3 = 12 pixels; at most 10"):
    image_lib.preprocess(small, image_lib.default_config("siglip", max_pixels=10))


@pytest.mark.parametrize("image, bucket_window", [(None, 1), ("siglip2", 4)],
                         ids=["fixed-size", "naflex-bucketing-reads-headers"])
def test_bomb_in_pipeline(tmp_path, image, bucket_window):
  write(tmp_path / "img/bomb.png", BOMB_PNG)
  cfg, path = llava_cfg(tmp_path, [{"id": "bad", "image": "img/bomb.png", "conversations": qa()}],
                        image=siglip2_config() if image else None, bucket_window=bucket_window)
  expect_raise_and_skip(cfg, "image_too_large", "image[0]", path)


def test_extreme_aspect_ratio_is_refused_not_resized(tmp_path):
  assert len(SLIVER_PNG) < 200
  path = write(tmp_path / "sliver.png", SLIVER_PNG)
  assert PIL.Image.open(path).size == (1, 20000)
  clip = image_lib.default_config("clip")  # shortest_edge 224 -> 4,480,000×224 without the bound
  with pytest.raises(image_lib.ImageError, match=r"sliver\.png: a 1×20000 image has an aspect ratio of 20000:1") \
      as info:
    image_lib.preprocess(path, clip)
  assert info.value.reason == "bad_aspect_ratio"
  # The bound: long side <= max_aspect_ratio (200) × short side; every target <= max_pixels.
  assert image_lib.resize_target(1, 200, clip) == (224, 44800)
  with pytest.raises(image_lib.ImageError, match="201:1"):
    image_lib.resize_target(1, 201, clip)
  with pytest.raises(image_lib.ImageError, match="at most 10,000") as info:
    image_lib.resize_target(1, 100, clip.replace(max_pixels=10_000))
  assert info.value.reason == "image_too_large"
  # Fixed-size and NaFlex resizes have bounded outputs and keep HF's behaviour for such images.
  fixed = image_lib.default_config("siglip", size={"height": 8, "width": 8})
  assert image_lib.preprocess(path, fixed).shape == (8, 8, 3)


def test_extreme_aspect_ratio_in_pipeline(tmp_path):
  write(tmp_path / "img/sliver.png", SLIVER_PNG)
  cfg, path = llava_cfg(tmp_path, [{"id": "bad", "image": "img/sliver.png", "conversations": qa()}],
                        image=clip_config())
  expect_raise_and_skip(cfg, "bad_aspect_ratio", "image[0]", path)


def test_truncated_png(tmp_path):
  path = write(tmp_path / "img/cut.png", TRUNCATED_PNG)
  with pytest.raises(image_lib.ImageError, match=r"cut\.png: truncated or corrupt") as info:
    image_lib.load_image(path)
  assert info.value.reason == "corrupt_image"
  cfg, manifest = llava_cfg(tmp_path, [{"id": "bad", "image": "img/cut.png", "conversations": qa()}])
  expect_raise_and_skip(cfg, "corrupt_image", "image[0]", manifest)


def test_float_tiff_is_scaled_or_refused(tmp_path):
  """Mode "F": samples in [0, 1] read as round(255·x) (PIL's own conversion would give 0/1: all −1
  after normalisation); anything else is refused. Reference: the same image built as uint8."""
  x = np.linspace(0, 1, 48).reshape(6, 8)
  path = float_tiff(tmp_path / "unit.tif", x)
  assert PIL.Image.open(path).mode == "F"
  config = image_lib.default_config("siglip", size={"height": 6, "width": 8})
  got = image_lib.preprocess(path, config)
  want = image_lib.preprocess(PIL.Image.fromarray(np.round(x * 255).astype(np.uint8)), config)
  np.testing.assert_array_equal(got, want)
  assert got.min() == -1 and got.max() == 1 and got.std() > 0.5  # not the all −1 image
  np.testing.assert_array_equal(image_lib.preprocess(path, config.replace(high_bit_depth="scale")), want)
  for values, match in ((x * 300, r"samples in \[0, 300\]; only floats in \[0, 1\]"),
                        (np.where(x > 0.5, np.nan, x), "NaN/inf")):
    bad = float_tiff(tmp_path / "bad.tif", values)
    with pytest.raises(image_lib.ImageError, match=r"bad\.tif: float image \(mode 'F'\) .*" + match) as info:
      image_lib.preprocess(bad, config)
    assert info.value.reason == "unsupported_image_mode"
  with pytest.raises(image_lib.ImageError, match="more than 8 bits"):
    image_lib.preprocess(path, config.replace(high_bit_depth="error"))
  # 32-bit integer images under "scale": 0..65535 -> ÷257, outside refused.
  wide = PIL.Image.fromarray(np.full((4, 4), 70000, np.int32))
  assert wide.mode == "I"
  with pytest.raises(image_lib.ImageError, match=r"samples in \[70000, 70000\]"):
    image_lib.to_rgb(wide, "scale")
  assert image_lib.to_rgb(PIL.Image.fromarray(np.full((4, 4), 514, np.int32)), "scale")[0, 0].tolist() == [2, 2, 2]


def test_float_tiff_out_of_range_in_pipeline(tmp_path):
  float_tiff(tmp_path / "img/hdr.tif", np.linspace(0, 4, 16).reshape(4, 4))
  cfg, path = llava_cfg(tmp_path, [{"id": "bad", "image": "img/hdr.tif", "conversations": qa()}])
  expect_raise_and_skip(cfg, "unsupported_image_mode", "image[0]", path)


# ---------------------------------------------------------------------------------------------
# Paths that leave the data root.


def test_paths_outside_the_root(tmp_path):
  root = tmp_path / "data"
  secret = write(tmp_path / "outside/secret.png", GOOD_PNG)
  cfg, path = llava_cfg(root, [])  # writes root/img/train_1_0.png, ...
  os.symlink(secret, root / "img/link.png")
  os.makedirs(root / "real")
  bad = [{"id": "bad-up", "image": "../outside/secret.png", "conversations": qa()},
         {"id": "bad-abs", "image": secret, "conversations": qa()},
         {"id": "bad-link", "image": "img/link.png", "conversations": qa()}]
  ok = [{"id": "ok-abs-inside", "image": str(root / "img/train_1_0.png"), "conversations": qa(answer="answer ok")},
        {"id": "ok-dotdot-inside", "image": "real/../img/train_1_0.png", "conversations": qa(answer="answer ok")}]
  cfg, path = llava_cfg(root, bad + ok)
  source = S.LlavaSource(path)
  for i in range(len(source)):
    rid = source._records.get(i)["id"]
    if rid.startswith("bad"):
      with pytest.raises(RecordError, match=r"resolves to .*secret\.png', outside the data root") as info:
        source[i]
      assert (info.value.reason, info.value.field, info.value.record_id) == ("path_outside_root", "image[0]", rid)
    else:
      source[i]
  expect_raise_and_skip(cfg, "path_outside_root", "image[0]", path, n_bad=3)
  # Opting in: every path is read.
  trusted = cfg.replace(sources=[P.SourceConfig("llava", path, options={"allow_outside_root": True})], on_error="raise")
  pipeline = make(trusted)
  list(pipeline)
  assert pipeline.stats["skipped"] == {} and pipeline.stats["examples"] == pipeline.num_records == 8
  # A path with a NUL byte cannot be resolved: a bad field, not a crash.
  nul = write(root / "nul.jsonl", json.dumps({"id": "n", "image": "img/a\0.png", "conversations": qa()}).encode())
  with pytest.raises(RecordError) as info:
    S.LlavaSource(nul)[0]
  assert info.value.reason == "bad_field"


def test_audio_manifest_path_outside_the_root(tmp_path):
  write(tmp_path / "elsewhere.wav", GOOD_WAV)
  path = H.write_audio_manifest(str(tmp_path / "data"), 2, extra=[{"id": "bad", "audio": "../elsewhere.wav",
                                                                   "text": "x"}])
  with pytest.raises(RecordError) as info:
    S.AudioManifestSource(path)[2]
  assert (info.value.reason, info.value.field) == ("path_outside_root", "audio[0]")
  assert S.AudioManifestSource(path, allow_outside_root=True)[2]["audio"][0].endswith("elsewhere.wav")


# ---------------------------------------------------------------------------------------------
# Manifests.


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_manifest_with_byte_order_mark(tmp_path, fmt):
  records = [{"id": f"r{i}", "conversations": qa("Hi?", f"answer r{i}")} for i in range(3)]
  body = json.dumps(records) if fmt == "json" else "".join(json.dumps(r) + "\n" for r in records)
  path = write(tmp_path / f"bom.{fmt}", b"\xef\xbb\xbf" + body.encode("utf-8"))
  source = S.LlavaSource(path)
  assert len(source) == 3 and [source[i]["id"] for i in range(3)] == ["r0", "r1", "r2"]


def test_jsonl_line_that_is_not_utf8(tmp_path):
  good = json.dumps({"id": "r0", "conversations": qa("Hi?", "answer r0")}).encode()
  path = write(tmp_path / "latin1.jsonl", good + b"\n" + b'{"id": "caf\xe9", "conversations": []}\n')
  source = S.LlavaSource(path)
  assert source[0]["id"] == "r0"
  with pytest.raises(RecordError, match="not UTF-8") as info:
    source[1]
  assert info.value.reason == "bad_json"


# ---------------------------------------------------------------------------------------------
# Audio.


def test_truncated_wav(tmp_path):
  path = write(tmp_path / "wav/half.wav", HALF_WAV)
  for call in (audio_lib.read_audio, audio_lib.audio_info):
    with pytest.raises(audio_lib.AudioError, match=r"half\.wav: truncated WAV file: its data chunk declares "
                                                   r"8,000 bytes but only 3,978 follow") as info:
      call(path)
    assert info.value.reason == "truncated_audio"
  # Controls: the whole file, and a streamed WAV whose data size is unknown (0xFFFFFFFF), decode.
  assert audio_lib.audio_info(write(tmp_path / "whole.wav", GOOD_WAV)) == (4000, 8000)
  streamed = write(tmp_path / "streamed.wav", wav(TONE, 8000, declared_bytes=0xFFFFFFFF))
  assert audio_lib.audio_info(streamed) == (4000, 8000)


@pytest.mark.parametrize("bucket_window", [1, 2])
def test_truncated_wav_in_pipeline(tmp_path, bucket_window):
  write(tmp_path / "wav/half.wav", HALF_WAV)
  path = H.write_audio_manifest(str(tmp_path), 3, extra=[{"id": "bad", "audio": "wav/half.wav", "text": "x"}])
  cfg = P.PipelineConfig([P.SourceConfig("audio", path)], batch_size=2, audio=H.audio_config(), shuffle=False,
                         bucket_window=bucket_window)
  expect_raise_and_skip(cfg, "truncated_audio", "audio[0]", path)


def test_overlong_wav_is_refused_from_its_header(tmp_path):
  write(tmp_path / "wav/long.wav", wav(np.zeros(31 * 8000, np.int16), 8000))  # 31 s; Whisper takes 30 s
  path = H.write_audio_manifest(str(tmp_path), 3, extra=[{"id": "bad", "audio": "wav/long.wav", "text": "x"}])
  cfg = P.PipelineConfig([P.SourceConfig("audio", path)], batch_size=2, audio=H.audio_config(), shuffle=False)
  expect_raise_and_skip(cfg, "audio_too_long", "audio[0]", path)


class MemorySource:
  """Records held in memory, as a custom TFDS `to_record` makes them (encoded image bytes, arrays)."""

  def __init__(self, path, *, records):
    self.path, self.records = path, records

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    return self.records[index]


def memory_records(bad_audio=(), bad_images=()):
  good = [S.make_record("memory", f"m{i}", i, qa("Hi?", f"answer m{i}"), preamble="<audio>",
                        audio=[{"array": np.zeros(800, np.float32), "sampling_rate": 8000}]) for i in range(3)]
  bad = [S.make_record("memory", f"bad{i}", 3 + i, qa("Hi?"), preamble="<audio>", audio=[item])
         for i, item in enumerate(bad_audio)]
  bad += [S.make_record("memory", f"bad-img{i}", 10 + i, qa(), image=[item]) for i, item in enumerate(bad_images)]
  return good + bad


BAD_RATES = [0, -16000, float("nan"), float("inf"), 22050.5, "16k", None]


def test_in_memory_audio_with_bad_sampling_rate():
  cfg = P.PipelineConfig([P.SourceConfig("memory", "memory")], audio=H.audio_config())
  for rate in BAD_RATES:
    record = memory_records(bad_audio=[{"array": np.zeros(800, np.float32), "sampling_rate": rate}])[-1]
    assert T.record_length(record, cfg) == 0  # the bucketing pass: no ZeroDivisionError, reported later
    with pytest.raises(RecordError, match=r"not a positive whole number of Hz") as info:
      T.prepare_record(record, cfg)
    assert (info.value.reason, info.value.field) == ("bad_sampling_rate", "audio[0]"), rate
  for array, match in (([[0.1, 0.2], [0.3]], "not an array of samples"), (["a", "b"], "real numbers")):
    record = memory_records(bad_audio=[{"array": array, "sampling_rate": 8000}])[-1]
    with pytest.raises(RecordError, match=match):
      T.prepare_record(record, cfg)


def test_in_memory_bad_items_in_pipeline(monkeypatch):
  monkeypatch.setitem(S.SOURCE_KINDS, "memory", MemorySource)
  records = memory_records(bad_audio=[{"array": np.zeros(800, np.float32), "sampling_rate": r} for r in BAD_RATES],
                           bad_images=[BOMB_PNG, SLIVER_PNG, TRUNCATED_PNG, b"GIF89a" + b"\0" * 4])
  cfg = P.PipelineConfig([P.SourceConfig("memory", "memory", options={"records": records})], batch_size=4,
                         audio=H.audio_config(), image=clip_config(), shuffle=False, bucket_window=4,
                         on_error="skip")
  pipeline = make(cfg)
  list(pipeline)
  assert pipeline.stats["skipped"] == {"bad_sampling_rate": len(BAD_RATES), "image_too_large": 1,
                                       "bad_aspect_ratio": 1, "corrupt_image": 2}, pipeline.stats
  assert pipeline.stats["examples"] == 3


# ---------------------------------------------------------------------------------------------
# Series files.


def test_corrupt_series_files(tmp_path):
  write(tmp_path / "zip.npz", b"PK\x03\x04" + b"\0" * 26)  # a zip local header and nothing else
  write(tmp_path / "latin1.csv", b"date,v\xe9\n2000,1\n")  # not UTF-8
  records = [{"id": f"bad-{name}", "series": name, "conversations": qa("<series>\nNext?")}
             for name in ("zip.npz", "latin1.csv")]
  path = H.write_llava(str(tmp_path), 3, extra=records)
  cfg = P.PipelineConfig([P.SourceConfig("llava", path)], batch_size=2, image=H.image_config(),
                         series=H.series_config(), shuffle=False, bucket_window=1)
  expect_raise_and_skip(cfg, "corrupt_series", "series[0]", path, n_bad=2)


# ---------------------------------------------------------------------------------------------
# Tokenizer type confusion.


@pytest.fixture
def deadline():
  """Fails the test instead of hanging if a call loops (encode_bytes("abc") used to run out of memory)."""
  def expire(signum, frame):
    raise TimeoutError("the call did not return within 10 s")
  old = signal.signal(signal.SIGALRM, expire)
  signal.alarm(10)
  yield
  signal.alarm(0)
  signal.signal(signal.SIGALRM, old)


def test_tokenizer_rejects_the_wrong_type_at_once(deadline):
  tok = world_tokenizer()
  with pytest.raises(TypeError, match=r"encode_bytes takes bytes; got str; use encode\(text\)"):
    tok.encode_bytes("abc")
  for value in ([97, 98], 7, None):
    with pytest.raises(TypeError, match="encode_bytes takes bytes"):
      tok.encode_bytes(value)
  with pytest.raises(TypeError, match=r"encode takes a str; got bytes; use encode_bytes"):
    tok.encode(b"abc")
  with pytest.raises(TypeError, match="decode takes token ids"):
    tok.decode("abc")
  with pytest.raises(TypeError, match="decode takes token ids"):
    tok.decode(b"abc")  # would silently decode the byte values as ids
  with pytest.raises(TypeError, match="token id 1.5 is a float"):
    tok.decode([1.5])
  with pytest.raises(TypeError, match="sequence of str; got one str"):
    tok.encode_batch("abc")
  assert tok.encode_bytes(bytearray(b"abc")) == tok.encode_bytes(memoryview(b"abc")) == tok.encode("abc")
  assert tok.decode(np.array(tok.encode("abc"), np.int32)) == "abc"


def test_npy_and_npz_headers_claiming_more_than_the_file_are_refused(tmp_path):
  """A series array header promising 8 TB is refused with the file name before numpy allocates it."""
  import io
  import zipfile
  from modrwkv_jax.data.sources import read_series_file
  header = np.lib.format.header_data_from_array_1_0(np.zeros(3))
  header["shape"] = (10**12,)
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(buf, header)
  buf.write(np.zeros(3).tobytes())
  (tmp_path / "big.npy").write_bytes(buf.getvalue())
  with pytest.raises(ValueError, match=r"big.npy: not a readable"):
    read_series_file(tmp_path / "big.npy")
  with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
    z.writestr("x.npy", buf.getvalue())
  with pytest.raises(ValueError, match=r"big.npz: array 'x' claims shape \(1000000000000,\)"):
    read_series_file(tmp_path / "big.npz")
