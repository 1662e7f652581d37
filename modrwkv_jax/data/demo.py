"""Offline demo data in the real formats: `python -m modrwkv_jax.data.demo --out DIR [--seed 0]`.

Everything is generated locally, deterministically from the seed, without network access:

  DIR/shapes_vqa/{train,validation,test}.json + images/   LLaVA JSON. PIL-rendered scenes of 1-5
      circles / squares / triangles in 6 colours; two templated questions per image (count, count by
      colour, colour of the unique shape, exists yes/no) with exact answers; each record also lists its
      "objects" (shape, colour, centre, size).
  DIR/digits/{split}.json + images/        LLaVA JSON. scikit-learn's bundled 8×8 `load_digits` images
      upscaled to 32×32: "What digit is shown?" -> "seven".
  DIR/spoken_digits/{split}.jsonl + wav/    audio manifests (JSONL) + 16-bit WAV at 22.05 kHz. Strings of
      2-5 digit words spoken by espeak-ng (the `espeakng-loader` wheel bundles the library and voices)
      with varied voices, speeds and pitches; the test split uses voices held out from train/validation.
      Two thirds are ASR records (text = the words), one third audio QA ("What digits are spoken?..."
      -> "371"). If espeak-ng cannot be loaded, DTMF-like tone sequences replace speech and meta.json
      says so ("audio_synth").
  DIR/timeseries/{co2,sunspots,elnino}.csv + spec.json + baselines.json   the public-domain
      statsmodels series (co2 monthly means of the weekly Mauna Loa record, 5 missing months linearly
      interpolated; yearly sunspots; El Niño monthly sea temperatures), windowed by SeriesSource with
      the context / horizon / stride / chronological split fractions in spec.json; baselines.json holds
      the seasonal-naive forecast's MSE and MAE per split, in the series' units and standardised by the
      training split's mean and std.
  DIR/meta.json    seed, record counts, generator versions.

The same seed gives byte-identical JSON/JSONL/CSV files and identical images and waveforms
(espeak-ng's random generator, clock-seeded by default, and libc's `srand` are seeded before every
utterance).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import math
import os
import sys
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "validation", "test")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
           "purple": (140, 60, 170), "orange": (245, 130, 30)}
SHAPES = ("circle", "square", "triangle")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_VOICES = ("en+m1", "en+m3", "en+f1", "en+f3", "en-us+m2", "en-us+f2", "en-gb-scotland+m4", "en+Alex")
TEST_VOICES = ("en+m7", "en+f4", "en-us+m5")
SPOKEN_QUESTION = "What digits are spoken? Answer with numerals."
SERIES_SPECS = {
    "co2": dict(file="co2.csv", time_column="date", context=48, horizon=12, stride=1, season=12),
    "sunspots": dict(file="sunspots.csv", time_column="year", context=33, horizon=11, stride=1, season=11),
    "elnino": dict(file="elnino.csv", time_column="date", context=48, horizon=12, stride=1, season=12),
}
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)


def _rng(seed: int, *parts: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([seed, *parts]))


def _write_json(path: str, obj, *, lines: bool = False) -> None:
  with open(path, "w", encoding="utf-8") as f:
    if lines:
      for item in obj:
        f.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")
    else:
      json.dump(obj, f, ensure_ascii=False, indent=1, sort_keys=True)
      f.write("\n")


# ---------------------------------------------------------------------------------------------
# shapes-VQA.


def scene_objects(rng: np.random.Generator, size: int) -> list[dict]:
  """1-5 non-overlapping objects: shape, colour, centre (x, y) and size (bounding-box side) in pixels."""
  objects = []
  n = int(rng.integers(1, 6))
  while len(objects) < n:
    s = int(rng.integers(size // 8, size // 4 + 1))
    x, y = (int(v) for v in rng.integers(s // 2 + 1, size - s // 2 - 1, size=2))
    if all(math.hypot(x - o["x"], y - o["y"]) > (s + o["size"]) / 2 * 1.2 for o in objects):
      objects.append({"shape": SHAPES[int(rng.integers(3))], "colour": list(COLOURS)[int(rng.integers(6))],
                      "x": x, "y": y, "size": s})
  return objects


def render_scene(objects: Sequence[dict], size: int):
  import PIL.Image
  import PIL.ImageDraw
  image = PIL.Image.new("RGB", (size, size), (250, 250, 250))
  draw = PIL.ImageDraw.Draw(image)
  for o in objects:
    h, fill = o["size"] / 2, COLOURS[o["colour"]]
    box = (o["x"] - h, o["y"] - h, o["x"] + h, o["y"] + h)
    if o["shape"] == "circle":
      draw.ellipse(box, fill=fill)
    elif o["shape"] == "square":
      draw.rectangle(box, fill=fill)
    else:
      draw.polygon([(o["x"], o["y"] - h), (o["x"] - h, o["y"] + h), (o["x"] + h, o["y"] + h)], fill=fill)
  return image


def scene_questions(rng: np.random.Generator, objects: Sequence[dict], k: int = 2) -> list[tuple[str, str]]:
  """k templated questions with exact answers, of distinct kinds where possible."""
  unique = [s for s in SHAPES if sum(o["shape"] == s for o in objects) == 1]
  kinds = ["count", "count_colour", "exists"] + (["unique_colour"] if unique else [])
  out = []
  for kind in rng.permutation(kinds)[:k]:
    if kind == "count":
      out.append(("How many shapes are there?", str(len(objects))))
    elif kind == "count_colour":
      colour = list(COLOURS)[int(rng.integers(6))]
      out.append((f"How many {colour} shapes are there?", str(sum(o["colour"] == colour for o in objects))))
    elif kind == "unique_colour":
      shape = unique[int(rng.integers(len(unique)))]
      colour = next(o["colour"] for o in objects if o["shape"] == shape)
      out.append((f"What colour is the {shape}?", colour))
    else:
      if rng.random() < 0.5:
        o = objects[int(rng.integers(len(objects)))]
        colour, shape = o["colour"], o["shape"]
      else:
        colour, shape = list(COLOURS)[int(rng.integers(6))], SHAPES[int(rng.integers(3))]
      present = any(o["colour"] == colour and o["shape"] == shape for o in objects)
      out.append((f"Is there a {colour} {shape}?", "yes" if present else "no"))
  return out


def build_shapes(out: str, seed: int, counts: Sequence[int], size: int = 64) -> dict[str, int]:
  root = os.path.join(out, "shapes_vqa")
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  for s, (split, n) in enumerate(zip(SPLITS, counts)):
    rng = _rng(seed, 1, s)
    records = []
    for i in range(n):
      objects = scene_objects(rng, size)
      name = f"images/{split}_{i:05d}.png"
      render_scene(objects, size).save(os.path.join(root, name))
      turns = []
      for q, (question, answer) in enumerate(scene_questions(rng, objects)):
        turns += [{"from": "human", "value": ("<image>\n" if q == 0 else "") + question},
                  {"from": "gpt", "value": answer}]
      records.append({"id": f"shapes-{split}-{i:05d}", "image": name, "conversations": turns,
                      "objects": objects})
    _write_json(os.path.join(root, f"{split}.json"), records)
  return dict(zip(SPLITS, counts))


# ---------------------------------------------------------------------------------------------
# digits.


def build_digits(out: str, seed: int, counts: Sequence[int] | None = None, size: int = 32) -> dict[str, int]:
  """scikit-learn's digits split 80/10/10 by a seeded permutation (or the first `counts` of each)."""
  import PIL.Image
  from sklearn.datasets import load_digits
  digits = load_digits()
  n = len(digits.images)
  order = _rng(seed, 2).permutation(n)
  edges = [0, int(0.8 * n), int(0.9 * n), n]
  root = os.path.join(out, "digits")
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  written = {}
  for s, split in enumerate(SPLITS):
    idx = order[edges[s]:edges[s + 1]]
    if counts is not None:
      idx = idx[:counts[s]]
    records = []
    for i, k in enumerate(idx):
      ink = np.round(255 - digits.images[k] * (255 / 16)).astype(np.uint8)  # dark ink on white
      name = f"images/{split}_{i:05d}.png"
      PIL.Image.fromarray(ink, mode="L").resize((size, size), PIL.Image.Resampling.NEAREST).save(
          os.path.join(root, name))
      label = int(digits.target[k])
      records.append({"id": f"digits-{split}-{i:05d}", "image": name, "label": label, "sklearn_index": int(k),
                      "conversations": [{"from": "human", "value": "<image>\nWhat digit is shown?"},
                                        {"from": "gpt", "value": DIGIT_WORDS[label]}]})
    _write_json(os.path.join(root, f"{split}.json"), records)
    written[split] = len(records)
  return written


# ---------------------------------------------------------------------------------------------
# spoken digits.


class Espeak:
  """espeak-ng through ctypes, from the espeakng-loader wheel (no system package, no network)."""

  RATE, PITCH = 1, 3  # espeak_PARAMETER
  SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS
  DONT_EXIT = 0x8000  # espeakINITIALIZE_DONT_EXIT

  def __init__(self):
    import espeakng_loader
    self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
    self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                      ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    self.sample_rate = self.lib.espeak_Initialize(self.SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(),
                                                  self.DONT_EXIT)
    if self.sample_rate <= 0:
      raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate})")
    self._chunks: list[np.ndarray] = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    self._callback = callback_type(self._collect)  # kept alive as long as self
    self.lib.espeak_SetSynthCallback(self._callback)
    self._libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    version = ctypes.c_char_p()
    self.lib.espeak_Info.restype = ctypes.c_char_p
    self.version = (self.lib.espeak_Info(ctypes.byref(version)) or b"?").decode()

  def _collect(self, wav, n, events):
    if n > 0:
      self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0

  def say(self, text: str, voice: str, rate: int, pitch: int, seed: int) -> np.ndarray:
    """int16[N] at self.sample_rate."""
    if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
      raise RuntimeError(f"espeak-ng has no voice {voice!r}")
    self.lib.espeak_SetParameter(self.RATE, rate, 0)
    self.lib.espeak_SetParameter(self.PITCH, pitch, 0)
    self._chunks = []
    # espeak-ng seeds its own generator (breath noise, variants) from the clock; libc rand() is used too.
    self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
    self._libc.srand(seed)
    data = text.encode()
    err = self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None)  # POS_CHARACTER, CHARS_UTF8
    self.lib.espeak_Synchronize()
    if err != 0 or not self._chunks:
      raise RuntimeError(f"espeak_Synth failed ({err}) for {text!r}")
    return np.concatenate(self._chunks)


DTMF = {d: (f1, f2) for d, (f1, f2) in enumerate(
    [(941, 1336), (697, 1209), (697, 1336), (697, 1477), (770, 1209), (770, 1336), (770, 1477), (852, 1209),
     (852, 1336), (852, 1477)])}


def tone_digits(digits: Sequence[int], rate: int, speed: float) -> np.ndarray:
  """The fallback "voice": a DTMF tone pair per digit, 0.25 s / speed each with 0.08 s gaps, int16."""
  parts = []
  for d in digits:
    t = np.arange(int(0.25 * rate / speed)) / rate
    parts += [0.4 * (np.sin(2 * np.pi * DTMF[d][0] * t) + np.sin(2 * np.pi * DTMF[d][1] * t)),
              np.zeros(int(0.08 * rate))]
  return np.round(np.concatenate(parts) * 16000).astype(np.int16)


def _speak_split(root: str, seed: int, s: int, n: int) -> tuple[list[dict], str, int]:
  """Synthesizes split s (records, synthesizer description, sample rate). Runs in a fresh process."""
  import soundfile as sf
  split = SPLITS[s]
  try:
    engine = Espeak()
    synth = f"espeak-ng {engine.version} (espeakng-loader)"
  except Exception as e:  # noqa: BLE001 — any load failure selects the documented fallback
    engine = None
    synth = f"DTMF tones: espeak-ng could not be loaded ({type(e).__name__}: {e})"
  rate = engine.sample_rate if engine else 22050
  rng = _rng(seed, 3, s)
  voices = TEST_VOICES if split == "test" else TRAIN_VOICES
  records = []
  for i in range(n):
    digits = [int(d) for d in rng.integers(0, 10, size=int(rng.integers(2, 6)))]
    words = " ".join(DIGIT_WORDS[d] for d in digits)
    voice = voices[int(rng.integers(len(voices)))]
    wpm, pitch = int(rng.integers(120, 201)), int(rng.integers(25, 76))
    noise_seed = int(rng.integers(1, 2**31 - 1))
    if engine is not None:
      wave = engine.say(words, voice, wpm, pitch, noise_seed)
    else:
      voice, wave = "tones", tone_digits(digits, rate, wpm / 160)
    name = f"wav/{split}_{i:05d}.wav"
    sf.write(os.path.join(root, name), wave, rate, subtype="PCM_16")
    record = {"id": f"spoken-{split}-{i:05d}", "audio": name, "transcript": words, "voice": voice,
              "rate_wpm": wpm, "pitch": pitch}
    if i % 3 == 2:
      record.update(question=SPOKEN_QUESTION, text="".join(str(d) for d in digits))
    else:
      record.update(text=words)
    records.append(record)
  return records, synth, rate


def build_spoken(out: str, seed: int, counts: Sequence[int]) -> dict:
  """Each split is spoken by a fresh Python process: espeak-ng carries synthesis state from one
  utterance to the next inside a process (the same call twice gives different samples), so a split is
  reproducible only as the same sequence of calls from a freshly loaded library. (A plain subprocess,
  not multiprocessing, so callers need no `if __name__ == "__main__"` guard.)"""
  import subprocess
  root = os.path.join(out, "spoken_digits")
  os.makedirs(os.path.join(root, "wav"), exist_ok=True)
  synths, rate = set(), 22050
  for s, (split, n) in enumerate(zip(SPLITS, counts)):
    code = ("import json, sys; from modrwkv_jax.data.demo import _speak_split; "
            f"print(json.dumps(_speak_split({root!r}, {int(seed)}, {s}, {int(n)})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"speaking the {split} split failed:\n{proc.stderr[-3000:]}")
    records, synth, rate = json.loads(proc.stdout.strip().splitlines()[-1])
    synths.add(synth)
    _write_json(os.path.join(root, f"{split}.jsonl"), records, lines=True)
  (synth,) = synths if len(synths) == 1 else (" / ".join(sorted(synths)),)
  speech = synth.startswith("espeak-ng")
  if not speech:
    print(f"warning: {synth}; spoken digits are tone sequences instead of speech", file=sys.stderr)
  return {"counts": dict(zip(SPLITS, counts)), "audio_synth": synth, "sample_rate": rate,
          "train_voices": list(TRAIN_VOICES) if speech else ["tones"],
          "test_voices": list(TEST_VOICES) if speech else ["tones"]}


# ---------------------------------------------------------------------------------------------
# time series.


def _series_tables() -> dict[str, tuple[list[str], np.ndarray]]:
  """name -> (time labels, values float64[N]) from statsmodels' bundled datasets."""
  import statsmodels.api as sm
  co2 = sm.datasets.co2.load_pandas().data["co2"].resample("MS").mean().interpolate(method="linear")
  sun = sm.datasets.sunspots.load_pandas().data
  nino = sm.datasets.elnino.load_pandas().data
  months = nino.columns[1:]
  return {
      "co2": ([t.strftime("%Y-%m") for t in co2.index], co2.to_numpy(np.float64)),
      "sunspots": ([str(int(y)) for y in sun["YEAR"]], sun["SUNACTIVITY"].to_numpy(np.float64)),
      "elnino": ([f"{int(y)}-{m + 1:02d}" for y in nino["YEAR"] for m in range(len(months))],
                 nino[months].to_numpy(np.float64).reshape(-1)),
  }


def seasonal_naive(context: np.ndarray, horizon: int, season: int) -> np.ndarray:
  """Repeats the last `season` steps of the context: forecast step h (0-based) = context[h % season − season]."""
  last = context[-season:]
  return np.resize(last, horizon) if horizon else last[:0]


def build_series(out: str) -> dict:
  from modrwkv_jax.data.sources import SeriesSource
  root = os.path.join(out, "timeseries")
  os.makedirs(root, exist_ok=True)
  baselines, specs = {}, {}
  for name, (times, values) in _series_tables().items():
    spec = {**SERIES_SPECS[name], "split_fractions": list(SPLIT_FRACTIONS)}
    with open(os.path.join(root, spec["file"]), "w", encoding="utf-8") as f:
      f.write(f"{spec['time_column']},{name}\n")
      f.writelines(f"{t},{v:.6g}\n" for t, v in zip(times, values))
    specs[name] = spec
    kwargs = dict(context=spec["context"], horizon=spec["horizon"], stride=spec["stride"],
                  split_fractions=SPLIT_FRACTIONS, time_column=spec["time_column"])
    train = SeriesSource(os.path.join(root, spec["file"]), split="train", **kwargs)
    lo, hi = train.bounds
    mean, std = float(train.values[lo:hi, 0].mean()), float(train.values[lo:hi, 0].std())
    baselines[name] = {"season": spec["season"], "train_mean": mean, "train_std": std}
    for split in SPLITS:
      src = SeriesSource(os.path.join(root, spec["file"]), split=split, **kwargs)
      err = np.concatenate([seasonal_naive(r["series"][0], spec["horizon"], spec["season"]) - r["target"][0]
                            for r in (src[i] for i in range(len(src)))]) if len(src) else np.zeros(0)
      baselines[name][split] = {"windows": len(src), "mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err))),
                                "mse_normalised": float(np.mean((err / std) ** 2)),
                                "mae_normalised": float(np.mean(np.abs(err / std)))}
  _write_json(os.path.join(root, "spec.json"), specs)
  _write_json(os.path.join(root, "baselines.json"), baselines)
  return baselines


# ---------------------------------------------------------------------------------------------


def build(out: str, seed: int = 0, *, shapes: Sequence[int] = (2000, 200, 200), digits: Sequence[int] | None = None,
          spoken: Sequence[int] = (300, 50, 50), parts: Sequence[str] = ("shapes", "digits", "spoken", "series")
          ) -> dict:
  """Writes the demo datasets under `out` (see the module docstring); returns meta.json's content."""
  os.makedirs(out, exist_ok=True)
  meta = {"seed": seed, "generator": "modrwkv_jax.data.demo"}
  if "shapes" in parts:
    meta["shapes_vqa"] = build_shapes(out, seed, shapes)
  if "digits" in parts:
    meta["digits"] = build_digits(out, seed, digits)
  if "spoken" in parts:
    meta["spoken_digits"] = build_spoken(out, seed, spoken)
  if "series" in parts:
    meta["timeseries"] = build_series(out)
  _write_json(os.path.join(out, "meta.json"), meta)
  return meta


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m modrwkv_jax.data.demo", description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--shapes", type=int, nargs=3, default=(2000, 200, 200), metavar=("TRAIN", "VAL", "TEST"))
  parser.add_argument("--digits", type=int, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"),
                      help="at most this many digits per split (default: all 1797, split 80/10/10)")
  parser.add_argument("--spoken", type=int, nargs=3, default=(300, 50, 50), metavar=("TRAIN", "VAL", "TEST"))
  parser.add_argument("--parts", default="shapes,digits,spoken,series",
                      help="comma-separated subset of shapes,digits,spoken,series")
  args = parser.parse_args(argv)
  parts = [p for p in args.parts.split(",") if p]
  unknown = set(parts) - {"shapes", "digits", "spoken", "series"}
  if unknown:
    parser.error(f"unknown --parts {sorted(unknown)}")
  meta = build(args.out, args.seed, shapes=args.shapes, digits=args.digits, spoken=args.spoken, parts=parts)
  print(json.dumps({k: v for k, v in meta.items() if k != "timeseries"}, indent=1))
  if "timeseries" in meta:
    for name, b in meta["timeseries"].items():
      print(f"{name}: seasonal-naive test MSE {b['test']['mse_normalised']:.4f} MAE {b['test']['mae_normalised']:.4f} "
            f"(normalised, {b['test']['windows']} windows)")


if __name__ == "__main__":
  main()
