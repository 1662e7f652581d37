"""Tiny on-disk datasets in the real formats, shared by the data tests (a few KB, written in tmp dirs)."""

import json
import os
import re

import numpy as np
import PIL.Image
import soundfile as sf

from modrwkv_jax.data import image as image_lib
from modrwkv_jax.data import pipeline as P
from modrwkv_jax.tokenizer import world_tokenizer

IMAGE_TOKENS = 4


def image_tokens(pixels):
  return IMAGE_TOKENS


def audio_tokens(samples):
  return max(1, samples // 1600)  # 10 tokens per second


def series_tokens(steps):
  return max(1, steps // 8)


def write_llava(root, n=12, *, fmt="json", name="train", long_every=0, extra=()):
  """n records "r0".."r{n-1}"; record i has i % 3 images (0: text-only) and an answer naming its id.

  long_every: every k-th record gets a question of k·20 extra words (varied lengths for bucketing).
  extra: additional raw records appended as they are.
  """
  os.makedirs(os.path.join(root, "img"), exist_ok=True)
  records = []
  for i in range(n):
    k = i % 3
    paths = []
    for j in range(k):
      path = f"img/{name}_{i}_{j}.png"
      PIL.Image.fromarray(np.full((12, 16, 3), (i * 20 + j * 7) % 256, np.uint8)).save(os.path.join(root, path))
      paths.append(path)
    words = " more" * (20 * (i % long_every) if long_every else 0)
    question = "<image>\n" * k + f"Describe{words}."
    rec = {"id": f"r{i}", "conversations": [{"from": "human", "value": question},
                                            {"from": "gpt", "value": f"answer r{i}"}]}
    if k == 1:
      rec["image"] = paths[0]
    elif k:
      rec["image"] = paths
    records.append(rec)
  records += list(extra)
  path = os.path.join(root, f"{name}.{fmt}")
  with open(path, "w") as f:
    if fmt == "json":
      json.dump(records, f)
    else:
      f.writelines(json.dumps(r) + "\n" for r in records)
  return path


def write_wav(path, seconds, rate=8000, freq=440.0):
  t = np.arange(int(seconds * rate)) / rate
  sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), rate, subtype="PCM_16")


def write_audio_manifest(root, n=6, *, name="train", extra=()):
  """n records "a0".. with 0.2-0.7 s tones at 8 kHz; odd ones carry a question (audio QA)."""
  os.makedirs(os.path.join(root, "wav"), exist_ok=True)
  lines = []
  for i in range(n):
    write_wav(os.path.join(root, f"wav/{name}_{i}.wav"), 0.2 + 0.1 * (i % 6), freq=200 + 50 * i)
    rec = {"id": f"a{i}", "audio": f"wav/{name}_{i}.wav", "text": f"answer a{i}"}
    if i % 2:
      rec["question"] = "What is heard?"
    lines.append(rec)
  lines += list(extra)
  path = os.path.join(root, f"{name}.jsonl")
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in lines)
  return path


def write_series_csv(root, n=100, *, name="series.csv", nan_at=None, channels=1):
  """A CSV with a date column and `channels` value columns; column 0 holds the step index."""
  x = np.stack([np.arange(n, dtype=np.float64)] + [np.sin(np.arange(n) * (c + 1) / 5) for c in range(channels - 1)], 1)
  if nan_at is not None:
    x[nan_at, 0] = np.nan
  path = os.path.join(root, name)
  with open(path, "w") as f:
    f.write("date," + ",".join(f"v{c}" for c in range(channels)) + "\n")
    for t in range(n):
      f.write(f"2000-01-{t:03d}," + ",".join("" if np.isnan(v) else f"{v:.6g}" for v in x[t]) + "\n")
  return path


def image_config(**kw):
  return P.ImageConfig(image_lib.default_config("siglip", size={"height": 16, "width": 16}), image_tokens, **kw)


def audio_config(**kw):
  return P.AudioConfig(audio_tokens, **{"pad_to_chunk": False, **kw})


def series_config(**kw):
  return P.SeriesConfig(series_tokens, **kw)


def answers(batch):
  """The assistant answers of each row, decoded from the labels ("" for empty rows)."""
  tok = world_tokenizer()
  out = []
  for row in batch["labels"]:
    text = tok.decode(row[row >= 0])
    out.append(" | ".join(re.findall(r"\x16Assistant: (.*?)\x17", text)))
  return out


def record_ids(batch):
  """Ids ("r3", "a1", ...) named by the answers of each row (None for empty rows)."""
  ids = []
  for a in answers(batch):
    m = re.search(r"answer (\w+)", a)
    ids.append(m.group(1) if m else None)
  return ids
