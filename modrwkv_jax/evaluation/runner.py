"""`eval.py`'s engine: load a model, answer a task's questions in batches, resume, score, report.

    config, model, params, info = load_model(config, checkpoint)
    result = run(task, model, params, pipeline, out_dir, batch_size=8)     # -> metrics.json's content
    print(report(["runs/eval/vqav2", "runs/eval/gqa"]))                    # Markdown, with the paper's numbers

`out_dir/predictions.jsonl` gets one JSON object per answered question, written (and flushed) batch by
batch: {"id", "prompt", "output" (raw decoded text, or the forecast), "parsed", "reference", "meta"}. A
re-run skips the ids already there (a line torn by a crash is dropped first), so an interrupted evaluation
resumes where it stopped. The scores are computed from the file alone and written to
`out_dir/metrics.json` with the throughput of this run, and the answer files of the official servers
(VQAv2 test-dev, GQA test-dev) go next to it.
"""

from __future__ import annotations

import collections
import json
import math
import os
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from modrwkv_jax.data.sources import RecordError
from modrwkv_jax.evaluation import generation, tasks

# Paper numbers (docs/evaluation.md), by RWKV-7 shape (n_layer, n_embd): {metric key: value}.
PAPER = {
    "3B": {"vqav2/accuracy": 78.3, "gqa/accuracy": 60.8, "scienceqa/accuracy_image": 70.9,
           "textvqa/accuracy": 51.1, "pope/f1": 87.1, "mmbench/accuracy": 66.6},
    "0.4B": {"vqav2/accuracy": 72.04, "textvqa/accuracy": 38.75, "gqa/accuracy": 55.52,
             "scienceqa/accuracy_image": 43.32, "asr/wer": 2.43},
}
SIZES = {(24, 1024): "0.4B", (24, 2048): "1.5B", (32, 2560): "3B"}


def model_size(config) -> str | None:
  rw = config.model.rwkv
  return SIZES.get((rw.get("n_layer"), rw.get("n_embd")))


# ---------------------------------------------------------------------------------------------
# Loading.


def load_model(config, checkpoint: str | None):
  """(config, ModRWKVConfig, params, description) for evaluation on one device.

  checkpoint: a train.py workdir, its checkpoints folder or a step folder (the run's own config.json is
  used); a released WorldRWKV checkpoint (.pth or Hugging Face folder; `config` describes it); or None to
  build the model from `config.init` (RWKV-7 .pth, encoder snapshots, saved projectors) as train.py does.
  PEFT adapters are merged into the weights (same outputs, plain matmuls).
  """
  from modrwkv_jax import peft, sharding
  from modrwkv_jax.training import config as config_lib
  from modrwkv_jax.training import trainer
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  if checkpoint is not None and _is_run(checkpoint):
    config, params, step = trainer.load_run(checkpoint, mesh=mesh)
    desc = f"{checkpoint} (step {step})"
  elif checkpoint is not None:
    if config is None:
      raise ValueError(f"--checkpoint {checkpoint}: not a train.py run folder; give --config describing the model")
    from modrwkv_jax.models import worldrwkv
    if not worldrwkv.is_worldrwkv_checkpoint(checkpoint):
      raise ValueError(f"--checkpoint {checkpoint}: neither a train.py run folder (config.json + checkpoints/) nor a "
                       "WorldRWKV checkpoint (.pth with modality.world_encoder.* keys, or an RWKV7VL folder)")
    encoder = config.init.encoder_hf.get("image") if "image" in config.init.encoder_hf else None
    _, params = worldrwkv.load_worldrwkv(checkpoint, encoder_hf=encoder)
    desc = f"{checkpoint} (WorldRWKV)"
  else:
    if config is None:
      raise ValueError("give --checkpoint (a run folder) or --config (with init.* weight paths)")
    model, peft_config = trainer.build(config)
    params = trainer.init_params(config, model, peft_config, mesh)
    desc = "the weights named by config.init"
  model = config_lib.model_config(config)
  params = jax.device_get(params)
  if config.model.peft.method:
    params = peft.merge_all(params)
  return config, model, params, desc


def _is_run(path: str) -> bool:
  from modrwkv_jax.training import checkpoint as ckpt
  try:
    return os.path.isfile(os.path.join(ckpt.run_folder(path), "config.json"))
  except (ValueError, OSError):
    return False


# ---------------------------------------------------------------------------------------------
# Predictions file.


def read_predictions(path: str) -> list[dict]:
  """The rows of predictions.jsonl; a torn last line (a crash mid-write) is cut off the file."""
  if not os.path.isfile(path):
    return []
  rows, good = [], 0
  with open(path, "rb") as f:
    data = f.read()
  for line in data.splitlines(keepends=True):
    if not line.endswith(b"\n"):
      break
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      break
    good += len(line)
  if good < len(data):
    with open(path, "r+b") as f:
      f.truncate(good)
  return rows


def _jsonable(x):
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# ---------------------------------------------------------------------------------------------
# The run.


def run(task: tasks.Task, model, params, pipeline, out: str, *, batch_size: int = 8, limit: int | None = None,
        max_new_tokens: int | None = None, on_error: str = "raise", info: Mapping | None = None,
        progress: bool = True, prompt_format: str = "design") -> dict:
  """Answers (or forecasts) `task`'s questions not yet in `out/predictions.jsonl`, then scores them all.

  on_error: "raise" (a bad question stops the run, naming file, id and field) or "skip" (counted by
  reason in metrics.json's "skipped"; the score is over the answered questions).
  prompt_format: "design" or "worldrwkv" (the released checkpoints' prompt; `generation.prepare_prompt`).
  Returns the metrics dict written to `out/metrics.json`.
  """
  if on_error not in ("raise", "skip"):
    raise ValueError(f"on_error must be 'raise' or 'skip'; got {on_error!r}")
  os.makedirs(out, exist_ok=True)
  pred_path = os.path.join(out, "predictions.jsonl")
  done = {str(r["id"]) for r in read_predictions(pred_path)}
  skipped = collections.Counter()
  questions, seen = [], collections.Counter()  # `limit` counts per part of a mixed task (demo), else overall
  for q in task.questions():
    part = q.meta.get("part") if isinstance(q, tasks.Question) else None
    if limit is not None and seen[part] >= limit:
      if task.kind != "mixed":
        break
      continue
    seen[part] += 1
    if isinstance(q, RecordError):
      if on_error == "raise":
        raise q
      skipped[q.reason] += 1
      continue
    questions.append(q)
  ids = [q.id for q in questions]
  if len(set(ids)) != len(ids):
    dup = [k for k, n in collections.Counter(ids).items() if n > 1][:3]
    raise ValueError(f"{task.name}: duplicate question ids {dup}; ids must be unique to resume")
  todo = [q for q in questions if q.id not in done]
  gen = generation.BatchGenerator(model, params, pipeline, batch_size=batch_size,
                                  max_new_tokens=max_new_tokens or task.max_new_tokens)
  bar = None
  if progress and todo:
    from tqdm import tqdm
    bar = tqdm(total=len(todo), desc=f"eval {task.name}", unit="q", dynamic_ncols=True)
  timings = []  # (questions, seconds) per batch
  with open(pred_path, "a", encoding="utf-8") as f:
    for start in range(0, len(todo), batch_size):
      chunk, prepared = [], []
      for q in todo[start:start + batch_size]:
        try:
          prepared.append(generation.prepare_prompt(q.record, pipeline, prompt_format))
          chunk.append(q)
        except RecordError as e:
          if on_error == "raise":
            raise
          skipped[e.reason] += 1
      if not chunk:
        continue
      t0 = time.perf_counter()
      rows = _answer(task, gen, chunk, prepared)
      timings.append((len(chunk), time.perf_counter() - t0))
      for row in rows:
        f.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")
      f.flush()
      os.fsync(f.fileno())
      if bar is not None:
        bar.update(len(todo[start:start + batch_size]))
  if bar is not None:
    bar.close()
  wanted = set(ids)
  rows = [r for r in read_predictions(pred_path) if str(r["id"]) in wanted]
  scores = task.score(rows)
  result = {"task": task.name, **dict(info or {}), "n_questions": len(questions) + sum(skipped.values()),
            "n_answered": len(rows), "skipped": dict(skipped), "scores": scores,
            "throughput": _throughput(timings, batch_size), "files": task.submissions(rows, out)}
  tasks.write_json(os.path.join(out, "metrics.json"), result)
  return result


def _answer(task, gen, chunk, prepared) -> list[dict]:
  forecast = [task.kind == "forecast" or q.meta.get("kind") == "forecast" for q in chunk]
  out = [None] * len(chunk)
  for want in (True, False):
    idx = [i for i, f in enumerate(forecast) if f == want]
    if not idx:
      continue
    if want:
      results = gen.forecast([prepared[i] for i in idx])
      for i, y in zip(idx, results):
        out[i] = {"output": np.asarray(y, np.float64).tolist(), "parsed": None}
    else:
      results = gen([prepared[i] for i in idx])
      for i, a in zip(idx, results):
        out[i] = {"output": a.text, "stopped": a.stopped}
  rows = []
  for q, o in zip(chunk, out):
    row = {"id": q.id, "prompt": q.prompt, **o, "reference": q.reference, "meta": q.meta}
    if "parsed" not in row:
      row["parsed"] = task.parse(row["output"], row)
    rows.append(row)
  return rows


def _throughput(timings, batch_size) -> dict:
  """Questions per second of this run: overall (with compilation) and after the first batch."""
  if not timings:
    return {"batch_size": batch_size, "questions": 0}
  n, s = sum(t[0] for t in timings), sum(t[1] for t in timings)
  out = {"batch_size": batch_size, "questions": n, "seconds": round(s, 3), "questions_per_s": n / s}
  if len(timings) > 1:
    n2, s2 = sum(t[0] for t in timings[1:]), sum(t[1] for t in timings[1:])
    out["questions_per_s_after_first_batch"] = n2 / s2
  return out


# ---------------------------------------------------------------------------------------------
# Reports.


def _flat(scores: Mapping, prefix: str) -> dict:
  out = {}
  for k, v in scores.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}/{k}"))
    elif isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("n_"):
      out[f"{prefix}/{k}"] = v
  return out


def report(dirs: Sequence[str]) -> str:
  """A Markdown table of the runs' scores side by side, with the paper's number for the same model size."""
  runs = []
  for d in dirs:
    path = os.path.join(d, "metrics.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{d}: no metrics.json (run `python eval.py ... --out {d}` first)")
    with open(path, encoding="utf-8") as f:
      m = json.load(f)
    runs.append((d, m))
  keys, values = [], []
  for d, m in runs:
    flat = _flat(m.get("scores", {}), m.get("task", "?"))
    values.append(flat)
    keys += [k for k in flat if k not in keys]
  sizes = {m.get("model_size") for _, m in runs} - {None}
  paper = PAPER.get(next(iter(sizes))) if len(sizes) == 1 else None
  header = ["metric"] + [os.path.basename(os.path.normpath(d)) or d for d, _ in runs]
  if paper:
    header.append(f"paper ({next(iter(sizes))})")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for k in keys:
    cells = [k] + [_fmt(v.get(k)) for v in values]
    if paper:
      cells.append(_fmt(paper.get(k)))
    lines.append("| " + " | ".join(cells) + " |")
  notes = [f"- {os.path.basename(os.path.normpath(d))}: {m.get('checkpoint', '?')}, "
           f"{m.get('n_answered', '?')}/{m.get('n_questions', '?')} answered, scorer: {m.get('scorer', 'official')}"
           for d, m in runs]
  return "\n".join(lines + [""] + notes) + "\n"


def _fmt(v) -> str:
  if v is None:
    return "–"
  if isinstance(v, float):
    return "nan" if math.isnan(v) else f"{v:.2f}"
  return str(v)


def eval_pipeline(config, model, batch_size: int):
  """The data.PipelineConfig for answering questions: the config's modality settings (image processor,
  audio front end, series windows, layout, length padding) without shuffling. A config without training
  sources gets a placeholder source: evaluation questions come from the task, not from `data.sources`."""
  from modrwkv_jax.training import config as config_lib
  if not config.data.sources:
    config = config.copy_and_resolve_references()
    config.data.sources = [dict(kind="llava", path="(questions come from the eval task)")]
  pipe = config_lib.pipeline_config(config, model, batch_size=batch_size)
  return pipe.replace(shuffle=False, on_error="raise", mixture_length=None)
