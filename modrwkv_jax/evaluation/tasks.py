"""The evaluation tasks: benchmark files -> questions, answers -> parsed answers -> official scores.

Every task turns its files into `Question`s whose `record` is the data pipeline's common record schema
(prompt turns only), so questions are read, preprocessed and batched exactly like training data. Scores
are computed from the rows of `predictions.jsonl` alone (`score(rows)`), so a resumed or re-scored run
gives the same numbers. Prompts follow LLaVA-1.5's evaluation scripts (docs/evaluation.md); file layouts are
LLaVA's `playground/data/eval/<task>` folders (`default_files`), each path overridable.

| task       | files (defaults under --data)                                                  | score |
|------------|--------------------------------------------------------------------------------|-------|
| vqav2      | llava_vqav2_mscoco_test-dev2015.jsonl, test2015/, [annotations: VQA-format json] | VQA accuracy (EvalAI normalisation); answer file for the EvalAI server |
| gqa        | llava_gqa_testdev_balanced.jsonl, data/images/, data/testdev_balanced_questions.json | exact match; predictions file for GQA's eval.py |
| textvqa    | llava_textvqa_val_v051_ocr.jsonl, train_images/, TextVQA_0.5.1_val.json          | m4c VQA accuracy |
| pope       | llava_pope_test.jsonl, val2014/, coco/coco_pope_{category}.json                  | accuracy, precision, recall, F1, yes-ratio per category |
| scienceqa  | llava_test_CQM-A.json, images/test/, [problems.json]                             | letter accuracy, image subset (SQA-I) and all |
| mmbench    | mmbench_dev_20230712.tsv (images inline, base64)                                 | circular accuracy |
| asr        | a JSONL manifest {"audio", "text"} (paths relative to it)                          | WER (`--metric cer`: CER, spaces removed) |
| timeseries | a CSV/NPZ series, windows of the model's lookback and horizon                     | MSE, MAE (z-normalised by the train split) and the seasonal-naive baseline |
| demo       | the test split of every source of the config (offline demo data)                | exact match / WER / MSE per source |
"""

from __future__ import annotations

import base64
import binascii
import collections
import csv
import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from modrwkv_jax.data import sources
from modrwkv_jax.data.sources import RecordError
from modrwkv_jax.evaluation import generation, metrics

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
OPTION_LETTERS = "ABCDE"


@dataclasses.dataclass
class Question:
  """One question: `record` (common schema, prompt turns only), the reference and scoring metadata."""
  id: str
  record: dict
  reference: Any = None
  meta: dict = dataclasses.field(default_factory=dict)

  @property
  def prompt(self) -> str:
    """The user text of the question (the last user turn; "" for ASR and forecasting)."""
    turns = self.record.get("conversations") or []
    return turns[-1]["value"] if turns else ""


class Task:
  """Base class: `questions()`, `parse(text, row)`, `score(rows)`, `submissions(rows, out)`."""
  name = ""
  max_new_tokens = 32  # short-answer benchmarks; ASR and free-form tasks set more
  kind = "generate"  # or "forecast"

  def questions(self) -> Iterator[Question]:
    raise NotImplementedError

  def parse(self, text: str, row: Mapping):
    return text.strip()

  def score(self, rows: Sequence[Mapping]) -> dict:
    raise NotImplementedError

  def submissions(self, rows: Sequence[Mapping], out: str) -> list[str]:
    """Answer files for the official servers (default: none)."""
    return []


# ---------------------------------------------------------------------------------------------
# File helpers: every failure names the file and the field.


def _json(path: str):
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  with open(path, encoding="utf-8-sig") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None


def _lines(path: str) -> Iterator[tuple[int, dict | RecordError]]:
  """(index, record or the RecordError of a malformed line) of a JSON list / JSONL file."""
  records = sources._JsonRecords(path)
  for i in range(len(records)):
    try:
      yield i, records.get(i)
    except RecordError as e:
      yield i, e


def _field(path: str, rid, raw: Mapping, key: str, kind=str):
  value = raw.get(key)
  if not isinstance(value, kind) or isinstance(value, bool):
    raise RecordError(path, rid, key, f"expected {getattr(kind, '__name__', kind)}; got {value!r:.80}",
                      "missing_field" if value is None else "bad_field")
  return value


def _image_path(images: str, rel: str, path: str, rid) -> str:
  return sources._resolve(images, rel, real_root=os.path.realpath(images), source=path, record_id=rid,
                          field="image")


def _user(text: str) -> list[dict]:
  return [{"from": "human", "value": text}]


def _llava_questions(path: str, images: str) -> Iterator[Question | RecordError]:
  """LLaVA's question JSONL ({"question_id", "image", "text", ...}): one Question per line."""
  for i, raw in _lines(path):
    if isinstance(raw, RecordError):
      yield raw
      continue
    try:
      qid = raw.get("question_id")
      if not isinstance(qid, (int, str)) or isinstance(qid, bool):
        raise RecordError(path, f"#{i}", "question_id", f"expected an int or str; got {qid!r:.80}", "bad_field")
      text = _field(path, qid, raw, "text").replace("<image>", "").strip()
      image = _image_path(images, _field(path, qid, raw, "image"), path, qid)
      record = sources.make_record(path, qid, i, _user(text), image=[image])
      yield Question(str(qid), record, meta={k: raw[k] for k in ("category",) if k in raw})
    except RecordError as e:
      yield e


def _mean(values) -> float:
  values = list(values)
  return float(np.mean(values)) if values else float("nan")


# ---------------------------------------------------------------------------------------------
# VQAv2, GQA, TextVQA, POPE (LLaVA question files).


class _LlavaQuestions(Task):
  """A task on a LLaVA question JSONL (`_llava_questions`); `self.answers` maps question ids to references."""
  answers: dict | None = None

  def questions(self):
    for q in _llava_questions(self.files["questions"], self.files["images"]):
      if isinstance(q, Question) and self.answers is not None:
        q.reference = self.answers.get(q.id)
      yield q


class VQAv2(_LlavaQuestions):
  """VQAv2 (LLaVA `model_vqa_loader.py`; answers normalised as `convert_vqav2_for_submission.py`).

  Without annotations (test-dev) only the EvalAI answer file is written; with a VQA-format annotation
  file ({"annotations": [{"question_id", "answers": [{"answer"}...]}]}, e.g. val2014) the soft accuracy
  is computed here.
  """
  name = "vqav2"
  default_files = {"questions": "llava_vqav2_mscoco_test-dev2015.jsonl", "images": "test2015", "annotations": None,
                   "test_questions": "llava_vqav2_mscoco_test2015.jsonl"}

  def __init__(self, questions: str, images: str, annotations: str | None = None, test_questions: str | None = None):
    self.files = {"questions": questions, "images": images, "annotations": annotations}
    self.test_questions = test_questions
    self.answers = None
    if annotations:
      data = _json(annotations)
      anns = data.get("annotations") if isinstance(data, dict) else None
      if not isinstance(anns, list):
        raise ValueError(f"{annotations}: expected {{'annotations': [...]}} (VQA annotation format)")
      self.answers = {}
      for k, a in enumerate(anns):
        try:
          self.answers[str(a["question_id"])] = [str(x["answer"]) for x in a["answers"]]
        except (KeyError, TypeError) as e:
          raise ValueError(f"{annotations}: annotations[{k}] lacks question_id / answers[].answer ({e})") from None

  def parse(self, text, row):
    return metrics.evalai_normalize(text)

  def score(self, rows):
    scored = [r for r in rows if r.get("reference")]
    out = {"n_scored": len(scored)}
    if scored:
      out["accuracy"] = 100 * _mean(metrics.vqa_accuracy(r["output"], r["reference"]) for r in scored)
    return out

  def submissions(self, rows, out):
    answers = {str(r["id"]): r["parsed"] for r in rows}
    ids = [r["id"] for r in rows]
    if self.test_questions and os.path.isfile(self.test_questions):  # the server wants every test question
      ids = [str(raw["question_id"]) for _, raw in _lines(self.test_questions) if isinstance(raw, dict)]
    path = os.path.join(out, "vqav2_answers_upload.json")
    write_json(path, [{"question_id": int(i) if str(i).isdigit() else i, "answer": answers.get(str(i), "")}
                       for i in ids])
    return [path]


class GQA(_LlavaQuestions):
  """GQA test-dev balanced (LLaVA `convert_gqa_for_eval.py`: prediction = text.rstrip('.').lower())."""
  name = "gqa"
  default_files = {"questions": "llava_gqa_testdev_balanced.jsonl", "images": "data/images",
                   "annotations": "data/testdev_balanced_questions.json"}

  def __init__(self, questions: str, images: str, annotations: str | None = None):
    self.files = {"questions": questions, "images": images}
    self.answers = None
    if annotations and os.path.isfile(annotations):
      data = _json(annotations)
      if not isinstance(data, dict):
        raise ValueError(f"{annotations}: expected GQA's {{question_id: {{'answer': ...}}}} mapping")
      self.answers = {str(k): v.get("answer") for k, v in data.items() if isinstance(v, dict)}

  def parse(self, text, row):
    return text.strip().rstrip(".").lower()

  def score(self, rows):
    scored = [r for r in rows if r.get("reference") is not None]
    out = {"n_scored": len(scored)}
    if scored:
      out["accuracy"] = 100 * _mean(metrics.gqa_accuracy(r["output"], r["reference"]) for r in scored)
    return out

  def submissions(self, rows, out):
    path = os.path.join(out, "testdev_balanced_predictions.json")
    write_json(path, [{"questionId": r["id"], "prediction": r["parsed"]} for r in rows])
    return [path]


class TextVQA(_LlavaQuestions):
  """TextVQA val with OCR tokens in the prompt (LLaVA's `_ocr` file; m4c evaluator)."""
  name = "textvqa"
  default_files = {"questions": "llava_textvqa_val_v051_ocr.jsonl", "images": "train_images",
                   "annotations": "TextVQA_0.5.1_val.json"}

  def __init__(self, questions: str, images: str, annotations: str | None = None):
    self.files = {"questions": questions, "images": images}
    self.answers = None
    if annotations and os.path.isfile(annotations):
      data = _json(annotations)
      items = data.get("data") if isinstance(data, dict) else None
      if not isinstance(items, list):
        raise ValueError(f"{annotations}: expected {{'data': [...]}} (TextVQA annotation format)")
      self.answers = {str(a.get("question_id")): [str(x) for x in a.get("answers", [])] for a in items
                      if isinstance(a, dict)}

  def score(self, rows):
    scored = [r for r in rows if r.get("reference")]
    out = {"n_scored": len(scored)}
    if scored:
      out["accuracy"] = 100 * _mean(metrics.textvqa_accuracy(r["output"], r["reference"]) for r in scored)
    return out


class POPE(Task):
  """POPE (LLaVA `eval_pope.py`): per category (adversarial, popular, random) of the question file,
  labels from `coco/coco_pope_{category}.json` (JSONL {"question_id", "label"})."""
  name = "pope"
  default_files = {"questions": "llava_pope_test.jsonl", "images": "val2014", "annotations": "coco"}

  def __init__(self, questions: str, images: str, annotations: str | None = None):
    self.files = {"questions": questions, "images": images, "annotations": annotations}

  def _labels(self, category: str) -> dict:
    path = os.path.join(self.files["annotations"], f"coco_pope_{category}.json")
    labels = {}
    for i, raw in _lines(path):
      if isinstance(raw, RecordError):
        raise raw
      labels[str(raw.get("question_id"))] = raw.get("label")
    return labels

  def questions(self):
    cache = {}
    for q in _llava_questions(self.files["questions"], self.files["images"]):
      if isinstance(q, Question):
        cat = q.meta.get("category", "all")
        if self.files["annotations"] and cat not in cache:
          cache[cat] = self._labels(cat)
        q.reference = cache.get(cat, {}).get(q.id)
      yield q

  def parse(self, text, row):
    return metrics.pope_answer(text)

  def score(self, rows):
    by = collections.defaultdict(list)
    for r in rows:
      if r.get("reference") is not None:
        by[r.get("meta", {}).get("category", "all")].append(r)
    out = {"n_scored": sum(len(v) for v in by.values())}
    per = {cat: metrics.pope_metrics([r["output"] for r in rs], [r["reference"] for r in rs])
           for cat, rs in sorted(by.items())}
    if per:
      out["per_category"] = per
      for key in ("accuracy", "f1"):  # the paper's POPE number is the mean F1 / accuracy over categories
        out[key] = 100 * _mean(m[key] for m in per.values())
    return out


# ---------------------------------------------------------------------------------------------
# ScienceQA and MMBench (multiple choice).

_OPTION = re.compile(r"\(([A-E])\)")


class ScienceQA(Task):
  """ScienceQA test (LLaVA `model_vqa_science.py` with --single-pred-prompt, `eval_science_qa.py`).

  The reference letter and the option count come from `problems.json` ({id: {"answer": index,
  "choices": [...]}}) when given, else from the file's assistant turn ("B" / "The answer is B.") and the
  "(A) … (B) …" options of the prompt.
  """
  name = "scienceqa"
  default_files = {"questions": "llava_test_CQM-A.json", "images": "images/test", "annotations": "problems.json"}

  def __init__(self, questions: str, images: str, annotations: str | None = None):
    self.files = {"questions": questions, "images": images}
    self.problems = _json(annotations) if annotations and os.path.isfile(annotations) else None

  def questions(self):
    path, images = self.files["questions"], self.files["images"]
    for i, raw in _lines(path):
      if isinstance(raw, RecordError):
        yield raw
        continue
      try:
        qid = str(raw.get("id", f"#{i}"))
        turns = raw.get("conversations")
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict) or \
            not isinstance(turns[0].get("value"), str):
          raise RecordError(path, qid, "conversations", "expected a first (human) turn with a text value",
                            "bad_conversation")
        text = turns[0]["value"].replace("<image>", "").strip() + "\n" + LETTER_ANSWER
        image = [_image_path(images, raw["image"], path, qid)] if raw.get("image") else []
        if self.problems is not None and qid in self.problems:
          prob = self.problems[qid]
          n, ref = len(prob["choices"]), OPTION_LETTERS[int(prob["answer"])]
        else:
          n = len(_OPTION.findall(text)) or 1
          answer = turns[1].get("value", "") if len(turns) > 1 and isinstance(turns[1], dict) else ""
          ref = metrics.scienceqa_letter(answer, max(n, 1)) if answer else None
        if not 1 <= n <= len(OPTION_LETTERS):
          raise RecordError(path, qid, "conversations", f"{n} options; ScienceQA has 1 to 5", "bad_field")
        record = sources.make_record(path, qid, i, _user(text), image=image)
        yield Question(qid, record, ref, {"n_options": n, "has_image": bool(image)})
      except RecordError as e:
        yield e

  def parse(self, text, row):
    return metrics.scienceqa_letter(text, row["meta"]["n_options"])

  def score(self, rows):
    scored = [r for r in rows if r.get("reference") is not None]
    out = {"n_scored": len(scored)}
    if scored:
      out["accuracy"] = 100 * _mean(r["parsed"] == r["reference"] for r in scored)
      img = [r for r in scored if r["meta"].get("has_image")]
      if img:
        out["accuracy_image"] = 100 * _mean(r["parsed"] == r["reference"] for r in img)  # the paper's SQA-I
    return out


class MMBench(Task):
  """MMBench (LLaVA `model_vqa_mmbench.py --all-rounds --single-pred-prompt`, VLMEvalKit circular scoring).

  Each question is asked once per option, the options rotated by one place each time; the prompt is
  [hint "\\n"] question, then "A. option" lines, then the letter instruction. Images are inline (base64).
  """
  name = "mmbench"
  default_files = {"questions": "mmbench_dev_20230712.tsv"}
  max_image_bytes = 64 << 20

  def __init__(self, questions: str, images: str | None = None, annotations: str | None = None):
    self.files = {"questions": questions}

  def questions(self):
    path = self.files["questions"]
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no such file")
    csv.field_size_limit(self.max_image_bytes * 2)
    with open(path, encoding="utf-8-sig", newline="") as f:
      for i, row in enumerate(csv.DictReader(f, delimiter="\t")):
        try:
          yield from self._rotations(path, i, row)
        except RecordError as e:
          yield e

  def _rotations(self, path, i, row):
    qid = str(row.get("index", f"#{i}"))
    present = lambda v: v is not None and v.strip() != "" and v.strip().lower() != "nan"
    options = [row[c] for c in OPTION_LETTERS if present(row.get(c))]
    if len(options) < 2 or not present(row.get("question")):
      raise RecordError(path, qid, "question", "needs a question and at least options A and B", "bad_field")
    try:
      image = base64.b64decode(row.get("image") or "", validate=True)
    except (binascii.Error, ValueError) as e:
      raise RecordError(path, qid, "image", f"not base64 ({e})", "corrupt_image") from None
    if not image:
      raise RecordError(path, qid, "image", "empty", "missing_image")
    gold = row.get("answer", "").strip()
    gold_index = OPTION_LETTERS.index(gold) if gold and gold in OPTION_LETTERS[:len(options)] else None
    hint = row.get("hint")
    for k in range(len(options)):
      rotated = options[k:] + options[:k]
      text = (hint.strip() + "\n" if present(hint) else "") + row["question"].strip()
      text += "".join(f"\n{c}. {o.strip()}" for c, o in zip(OPTION_LETTERS, rotated)) + "\n" + LETTER_ANSWER
      ref = None if gold_index is None else OPTION_LETTERS[(gold_index - k) % len(options)]
      record = sources.make_record(path, f"{qid}@{k}", i, _user(text), image=[image])
      meta = {"index": qid, "rotation": k, "n_options": len(options), "category": row.get("category", "")}
      yield Question(f"{qid}@{k}", record, ref, meta)

  def parse(self, text, row):
    return metrics.scienceqa_letter(text, row["meta"]["n_options"])

  def score(self, rows):
    scored = [{"index": r["meta"]["index"], "rotation": r["meta"]["rotation"], "prediction": r["parsed"],
               "answer": r["reference"], "category": r["meta"].get("category", "")}
              for r in rows if r.get("reference") is not None]
    out = {"n_scored": len(scored)}
    groups = collections.defaultdict(set)
    for s in scored:
      groups[s["index"]].add(s["rotation"])
    complete = [s for s in scored if 0 in groups[s["index"]]]
    if complete:
      res = metrics.mmbench_circular(complete)
      out.update(accuracy=100 * res["accuracy"], vanilla_accuracy=100 * res["vanilla_accuracy"],
                 per_category={k: 100 * v for k, v in res.get("per_category", {}).items()})
    return out


# ---------------------------------------------------------------------------------------------
# Speech, series, and the demo data.


class ASR(Task):
  """Speech recognition on an audio manifest (JSONL {"id", "audio", "text"}); prompt [audio] ++ "\\x16Assistant:".

  WER after `metrics.english_normalize` on both sides (LibriSpeech is upper-case, unpunctuated), or CER with
  spaces removed (`metric="cer"`, Aishell).
  """
  name = "asr"
  max_new_tokens = 128
  default_files = {"questions": "test.jsonl"}

  def __init__(self, questions: str, images: str | None = None, annotations: str | None = None, *, metric="wer",
               root: str | None = None):
    if metric not in ("wer", "cer"):
      raise ValueError(f"asr: metric must be 'wer' or 'cer'; got {metric!r}")
    self.metric = metric
    self.source = sources.AudioManifestSource(questions, root=root)

  def questions(self):
    for i in range(len(self.source)):
      try:
        record, reference = generation.split_turns(self.source[i])
        yield Question(record["id"], record, reference)
      except RecordError as e:
        yield e

  def score(self, rows):
    refs, hyps = [r["reference"] for r in rows], [r["output"] for r in rows]
    if not rows:
      return {"n_scored": 0}
    if self.metric == "cer":
      return {"n_scored": len(rows), "cer": 100 * metrics.cer(refs, hyps)}
    return {"n_scored": len(rows), "wer": 100 * metrics.wer(refs, hyps, normalize=True)}


def train_split_stats(path: str, **options) -> tuple[float, float]:
  """(mean, std) of the train split of series file `path` (std 1.0 for a constant series): the z-normalisation
  of the forecasting metrics. `options` are `sources.SeriesSource`'s (context, horizon, split_fractions, ...)."""
  train = sources.SeriesSource(path, split="train", **options)
  lo, hi = train.bounds
  values = train.values[lo:hi]
  return float(values.mean()), float(values.std()) or 1.0


class TimeSeries(Task):
  """Forecasting windows of one series file with the model's forecasting head.

  MSE and MAE are over z-normalised values (mean and std of the file's train split, the convention of the
  forecasting literature, e.g. Time-Series-Library's StandardScaler), with the seasonal-naive baseline
  (repeat the last `season` steps of the lookback) on the same windows; `mse_units` / `mae_units` are
  in the series' own units.
  """
  name = "timeseries"
  kind = "forecast"
  default_files = {"questions": "series.csv"}

  def __init__(self, questions: str, *, context: int, horizon: int, season: int, split: str = "test",
               stride: int | None = None, columns=None, time_column=None, split_fractions=(0.7, 0.1, 0.2)):
    kw = dict(context=context, horizon=horizon, stride=stride or horizon, columns=columns, time_column=time_column,
              split_fractions=tuple(split_fractions))
    self.source = sources.SeriesSource(questions, split=split, **kw)
    self.mean, self.std = train_split_stats(questions, **kw)
    self.season, self.horizon = season, horizon

  def questions(self):
    for i in range(len(self.source)):
      try:
        record = self.source[i]
        yield Question(record["id"], record, np.asarray(record["target"][0]).tolist(),
                       {"naive": metrics_seasonal_naive(record["series"][0], self.horizon, self.season).tolist()})
      except RecordError as e:
        yield e

  def score(self, rows):
    return forecast_scores(rows, self.mean, self.std)


def metrics_seasonal_naive(context, horizon: int, season: int) -> np.ndarray:
  """Seasonal-naive forecast: step h repeats context[h % season − season]."""
  context = np.asarray(context, np.float64)
  if not 1 <= season <= len(context):
    raise ValueError(f"seasonal naive: season {season} must be in [1, lookback {len(context)}]")
  return np.resize(context[-season:], horizon)


def forecast_scores(rows: Sequence[Mapping], mean: float, std: float) -> dict:
  if not rows:
    return {"n_scored": 0}
  pred = np.concatenate([np.asarray(r["output"], np.float64).ravel() for r in rows])
  target = np.concatenate([np.asarray(r["reference"], np.float64).ravel() for r in rows])
  naive = np.concatenate([np.asarray(r["meta"]["naive"], np.float64).ravel() for r in rows])
  z = lambda x: (x - mean) / std
  return {"n_scored": len(rows), "mse": metrics.mse(z(pred), z(target)), "mae": metrics.mae(z(pred), z(target)),
          "naive_mse": metrics.mse(z(naive), z(target)), "naive_mae": metrics.mae(z(naive), z(target)),
          "mse_units": metrics.mse(pred, target), "mae_units": metrics.mae(pred, target)}


def _norm_answer(text) -> str:
  return str(text).strip().rstrip(".").lower()


class Demo(Task):
  """Every test split of the config's data sources (the offline demo data, or any LLaVA / audio / series mix).

  LLaVA sources: each assistant turn is a question, its earlier turns the context; exact match after
  strip / rstrip(".") / lower, with the training split's majority answer as the baseline. Audio sources:
  WER (normalised). Series sources: forecasts with MSE / MAE and the seasonal-naive baseline (season
  from the demo data's spec.json next to the file, else 12).
  """
  name = "demo"

  def __init__(self, config, split: str = "test"):
    from modrwkv_jax.training import config as config_lib
    self.parts = []  # (name, kind, source, extra)
    for i, s in enumerate(config.data.sources):
      path = config_lib._data_path(config, s["path"])
      options = config_lib._data_options(config, dict(s.get("options") or {}))
      name = os.path.basename(os.path.dirname(path)) if s["kind"] != "series" else \
          os.path.splitext(os.path.basename(path))[0]
      if s["kind"] == "series":
        spec_file = os.path.join(os.path.dirname(path), "spec.json")
        spec = _json(spec_file).get(name, {}) if os.path.isfile(spec_file) else {}
        opts = {k: v for k, v in options.items() if k in ("context", "horizon", "stride", "columns", "time_column",
                                                              "split_fractions")}
        task = TimeSeries(path.replace("{split}", split), season=int(spec.get("season", 12)), split=split, **opts)
        self.parts.append((name, "forecast", task, None))
      else:
        src = sources.open_source(s["kind"], path, split, **options)
        train = sources.open_source(s["kind"], path, "train", **options) if s["kind"] == "llava" else None
        self.parts.append((name, s["kind"], src, train))
    self.kind = "mixed"

  def questions(self):
    for name, kind, src, _ in self.parts:
      if kind == "forecast":
        for q in src.questions():
          if isinstance(q, Question):
            q.id, q.meta = f"{name}/{q.id}", {**q.meta, "part": name, "kind": "forecast"}
          yield q
        continue
      for i in range(len(src)):
        try:
          record = src[i]
        except RecordError as e:
          yield e
          continue
        turns = record["conversations"]
        answers = [k for k, t in enumerate(turns) if t.get("from") in ("gpt", "assistant")]
        for n, k in enumerate(answers):
          prompt = dict(record, conversations=turns[:k])
          yield Question(f"{name}/{record['id']}#{n}", prompt, turns[k]["value"], {"part": name, "kind": kind})

  def majority(self, name: str):
    for part, kind, _, train in self.parts:
      if part == name and train is not None:
        counts = collections.Counter()
        for i in range(len(train)):
          try:
            turns = train[i]["conversations"]
          except RecordError:
            continue
          counts.update(_norm_answer(t["value"]) for t in turns if t.get("from") in ("gpt", "assistant"))
        return counts.most_common(1)[0][0] if counts else None
    return None

  def parse(self, text, row):
    return _norm_answer(text) if row["meta"]["kind"] == "llava" else text.strip()

  def score(self, rows):
    out = {}
    for name, kind, src, _ in self.parts:
      rs = [r for r in rows if r["meta"]["part"] == name]
      if kind == "forecast":
        out[name] = src.score(rs)
      elif kind == "audio":
        out[name] = {"n_scored": len(rs)}
        if rs:
          out[name]["wer"] = 100 * metrics.wer([r["reference"] for r in rs], [r["output"] for r in rs], normalize=True)
      else:
        majority = self.majority(name)
        out[name] = {"n_scored": len(rs), "majority_answer": majority}
        if rs:
          out[name]["exact_match"] = 100 * _mean(r["parsed"] == _norm_answer(r["reference"]) for r in rs)
          out[name]["majority_exact_match"] = 100 * _mean(majority == _norm_answer(r["reference"]) for r in rs)
    return out


TASKS = {t.name: t for t in (VQAv2, GQA, TextVQA, POPE, ScienceQA, MMBench, ASR)}
ALL_TASKS = tuple(TASKS) + ("timeseries", "demo")


def write_json(path: str, obj) -> None:
  """Writes `obj` as indented JSON to `path` atomically (a temporary file, then os.replace)."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, ensure_ascii=False)
    f.write("\n")
  os.replace(tmp, path)


def make_task(name: str, config, *, data: str | None = None, files: Mapping[str, str | None] | None = None,
              metric: str = "wer", season: int | None = None, split: str = "test") -> Task:
  """The task `name` on files under `data` (LLaVA's layout, `default_files`), overridden by `files`."""
  files = {k: v for k, v in (files or {}).items() if v is not None}
  if name == "demo":
    return Demo(config, split=split)
  if name == "timeseries":
    path = files.get("questions") or data
    if not path:
      raise ValueError("timeseries: give the series file with --data FILE (or --questions FILE)")
    se = config.data.series
    horizon = int(config.model.forecast_horizon or se.horizon or 0)
    if not se.length or not horizon:
      raise ValueError("timeseries: the config needs data.series.length (lookback) and model.forecast_horizon")
    # Column choices (time_column, columns, split_fractions, stride) as the config's series source reads them.
    options = next((dict(s.get("options") or {}) for s in config.data.sources if s["kind"] == "series"), {})
    options = {k: v for k, v in options.items() if k in ("columns", "time_column", "split_fractions", "stride")}
    return TimeSeries(path, context=int(se.length), horizon=horizon, season=int(season or 24), split=split, **options)
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; tasks: {', '.join(ALL_TASKS)}")
  cls = TASKS[name]
  resolved = {}
  for key, default in cls.default_files.items():
    if key in files:
      resolved[key] = files[key]
    elif default is not None and data is not None:
      resolved[key] = os.path.join(data, default)
    else:
      resolved[key] = None
  if not resolved.get("questions"):
    raise ValueError(f"{name}: give --data DIR (LLaVA's eval folder) or --questions FILE")
  if name == "asr":
    return ASR(resolved["questions"], metric=metric)
  if name == "vqav2":
    return VQAv2(resolved["questions"], resolved["images"], resolved.get("annotations"), resolved.get("test_questions"))
  return cls(resolved["questions"], resolved.get("images"), resolved.get("annotations"))


def print_table(rows: Sequence[tuple], file=None) -> None:
  file = file or sys.stdout
  widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
  for k, r in enumerate(rows):
    print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)), file=file)
    if k == 0:
      print("  ".join("-" * w for w in widths), file=file)
