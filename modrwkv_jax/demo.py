"""`make demo`'s own steps: the offline data, the timing of each stage, and the report of the run.

    python -m modrwkv_jax.demo data [--config configs/demo.py]          # demo data + Whisper-base, once
    python -m modrwkv_jax.demo stage train --workdir runs/demo -- python train.py --config configs/demo.py ...
    python -m modrwkv_jax.demo report --workdir runs/demo [--eval runs/demo/eval]

`make demo` runs: data, train.py, `eval.py --task demo --checkpoint runs/demo --out runs/demo/eval`, report,
each through `stage`, which records the command's wall time in `runs/demo/stages.json`.

`report` computes every number from the files the stages wrote, not from another forward pass:
runs/demo/eval/predictions.jsonl (one row per test question: the decoded answer or the forecast, the
reference, the prompt), runs/demo/metrics.jsonl (the training curve) and stages.json, and writes
  runs/demo/metrics.json   shapes_vqa.exact_match (+ per question type), digits.accuracy, spoken_digits.wer
                           (+ the accuracy of each word position),
                           series.<co2|elnino>.{mse, seasonal_naive_mse}, trimodal.{accuracy, text_accuracy},
                           wall_s per stage, and the issue's targets with pass / fail. Accuracies and WER are
                           fractions (eval.py prints percentages); MSE is over z-normalised values (mean and
                           std of the series' training split), as eval.py's timeseries task reports it.
  runs/demo/report.md      the table, the training curve, example answers with image thumbnails, spoken
                           transcripts against their references, forecasts against the seasonal-naive
                           baseline, and the stage timings (figures in runs/demo/report/; PNGs need
                           matplotlib, which the report skips with a note when it is not installed).
It prints the table and cross-checks its numbers against eval.py's own metrics.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_CONFIG = os.path.join("configs", "demo.py")
STAGES_FILE = "stages.json"
SERIES = ("co2", "elnino")
# The targets (issue 16): metric path -> (comparison, bound).
TARGETS = {
    "shapes_vqa.exact_match": (">=", 0.80),
    "digits.accuracy": (">=", 0.95),
    "spoken_digits.wer": ("<=", 0.10),
    "series.co2.mse": ("<", "series.co2.seasonal_naive_mse"),
    "series.elnino.mse": ("<", "series.elnino.seasonal_naive_mse"),
    "trimodal.text_gap": ("<=", 0.05),
    "wall_s.total": ("<", 900.0),
}


# ---------------------------------------------------------------------------------------------
# Stage 1: data.


def prepare_data(config) -> dict:
  """Builds {data.cache_dir}/demo with `data.demo.DEMO_BUILD` unless it is up to date, and joins
  Whisper-base into {data.cache_dir}/whisper-base-ct2 (sha256-checked) unless it is there. Returns
  {"data": folder, "built": bool, "whisper": model.bin path}."""
  from modrwkv_jax.data import demo as demo_data
  from modrwkv_jax.models.encoders import whisper_base_offline
  cache = config.data.cache_dir
  out = os.path.join(cache, "demo")
  t0 = time.perf_counter()
  built = demo_data.build_if_needed(out, 0, **demo_data.DEMO_BUILD)
  print(f"demo data: {out} {'built' if built else 'up to date'} ({time.perf_counter() - t0:.0f}s)", flush=True)
  t0 = time.perf_counter()
  model = whisper_base_offline.find_or_join(cache)
  print(f"Whisper-base (CTranslate2, sha256 checked): {model} ({time.perf_counter() - t0:.1f}s)", flush=True)
  want = config.init.encoder_hf.get("audio") if "audio" in config.init.encoder_hf else None
  if want and os.path.realpath(want) not in (os.path.realpath(model), os.path.realpath(os.path.dirname(model))):
    print(f"warning: init.encoder_hf.audio={want!r} is not the joined file {model!r}", file=sys.stderr)
  return {"data": out, "built": built, "whisper": model}


# ---------------------------------------------------------------------------------------------
# Stage timing.


def run_stage(name: str, workdir: str, command: Sequence[str]) -> int:
  """Runs `command` and records its wall time under `name` (`record_stage`). Returns its exit code."""
  t0 = time.perf_counter()
  rc = subprocess.call(list(command))
  wall = time.perf_counter() - t0
  record_stage(workdir, name, wall, " ".join(command), rc)
  print(f"[demo] stage {name}: {wall:.0f}s (exit code {rc})", flush=True)
  return rc


def record_stage(workdir: str, name: str, wall_s: float, command: str, returncode: int = 0) -> None:
  """Sets {"wall_s", "command", "returncode", "finished"} of stage `name` in workdir/stages.json (the
  latest run of each stage is kept)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, STAGES_FILE)
  stages = _read_json(path) if os.path.isfile(path) else {}
  stages[name] = {"wall_s": round(wall_s, 2), "command": command, "returncode": returncode,
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
  _write_json(path, stages)


# ---------------------------------------------------------------------------------------------
# Metrics from the written predictions.


def _read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write_json(path: str, obj) -> None:
  from modrwkv_jax.evaluation.tasks import write_json
  write_json(path, obj)


def _norm(text) -> str:
  return str(text).strip().rstrip(".").lower()  # the Demo task's normalisation of short answers


def _exact(rows) -> float | None:
  return float(np.mean([_norm(r["output"]) == _norm(r["reference"]) for r in rows])) if rows else None


def _series_stats(config, name: str) -> tuple[float, float]:
  """Mean and std of the training split of series source `name` (the z-normalisation eval.py uses)."""
  from modrwkv_jax.evaluation import tasks
  from modrwkv_jax.training import config as config_lib
  for s in config.data.sources:
    path = config_lib._data_path(config, s["path"])
    if s["kind"] == "series" and os.path.splitext(os.path.basename(path))[0] == name:
      opts = {k: v for k, v in config_lib._data_options(config, dict(s.get("options") or {})).items()
              if k in ("context", "horizon", "columns", "time_column", "split_fractions")}
      return tasks.train_split_stats(path, **opts)
  raise KeyError(f"the config has no series source named {name!r}")


def metrics_from_predictions(rows: Sequence[Mapping], config) -> dict:
  """The demo's metrics from predictions.jsonl rows (see the module docstring for the keys)."""
  from modrwkv_jax.data.demo import QUESTION_TYPES, question_type
  from modrwkv_jax.evaluation import metrics as eval_metrics
  by_part = collections.defaultdict(list)
  for r in rows:
    by_part[r["meta"]["part"]].append(r)
  out: dict = {}

  def key(r):  # "trimodal/trimodal-test-00007#0" and "trimodal_text/trimodal-test-00007-text#0" -> the record
    return str(r["id"]).split("/", 1)[-1].split("#", 1)[0].removesuffix("-text")

  # A spoken question's text is its text twin's prompt (the spoken prompt is only the instruction).
  questions = {key(r): r["prompt"] for r in by_part["trimodal_text"]}

  def per_type(rs):
    kinds = collections.defaultdict(list)
    for r in rs:
      kinds[question_type(questions.get(key(r), r["prompt"])) or "other"].append(r)
    return {k: {"exact_match": _exact(kinds[k]), "n": len(kinds[k])} for k in (*QUESTION_TYPES, "other") if kinds[k]}

  if by_part["shapes_vqa"]:
    rs = by_part["shapes_vqa"]
    out["shapes_vqa"] = {"exact_match": _exact(rs), "n": len(rs), "per_type": per_type(rs)}
  if by_part["digits"]:
    out["digits"] = {"accuracy": _exact(by_part["digits"]), "n": len(by_part["digits"])}
  if by_part["spoken_digits"]:
    rs = by_part["spoken_digits"]
    out["spoken_digits"] = {"wer": float(eval_metrics.wer([r["reference"] for r in rs], [r["output"] for r in rs],
                                                          normalize=True)),
                            "exact_match": _exact(rs), "n": len(rs),
                            # which words are wrong: the first digit of a clip, or the ones after it
                            "per_position": eval_metrics.word_position_accuracy(
                                [r["reference"] for r in rs], [r["output"] for r in rs], normalize=True)}
  series = {}
  for name in SERIES:
    rs = by_part[name]
    if not rs:
      continue
    mean, std = _series_stats(config, name)
    z = lambda key: np.concatenate([(np.asarray(r[key] if key != "naive" else r["meta"]["naive"], np.float64) - mean)
                                    / std for r in rs])
    pred, target, naive = z("output"), z("reference"), z("naive")
    series[name] = {"mse": float(np.mean((pred - target) ** 2)), "seasonal_naive_mse": float(np.mean((naive - target) ** 2)),
                    "mae": float(np.mean(np.abs(pred - target))),
                    "seasonal_naive_mae": float(np.mean(np.abs(naive - target))), "windows": len(rs)}
  if series:
    out["series"] = series
  if by_part["trimodal"]:
    spoken, text = by_part["trimodal"], by_part["trimodal_text"]
    out["trimodal"] = {"accuracy": _exact(spoken), "text_accuracy": _exact(text), "n": len(spoken),
                       "per_type": per_type(spoken), "text_per_type": per_type(text)}
    if text:
      out["trimodal"]["text_gap"] = out["trimodal"]["text_accuracy"] - out["trimodal"]["accuracy"]
  return out


def _get(metrics: Mapping, path: str):
  node = metrics
  for key in path.split("."):
    if not isinstance(node, Mapping) or key not in node:
      return None
    node = node[key]
  return node


def check_targets(metrics: Mapping) -> dict:
  """{target path: {"value", "target", "met"}} for the targets whose metric exists."""
  out = {}
  for path, (op, bound) in TARGETS.items():
    value = _get(metrics, path)
    limit = _get(metrics, bound) if isinstance(bound, str) else bound
    if value is None or limit is None:
      continue
    met = {">=": value >= limit, "<=": value <= limit, "<": value < limit}[op]
    out[path] = {"value": value, "target": f"{op} {bound if isinstance(bound, str) else limit}", "met": bool(met)}
  return out


def cross_check(metrics: Mapping, eval_metrics: Mapping) -> list[str]:
  """Differences between our numbers and eval.py's metrics.json scores (percent), as messages."""
  scores = eval_metrics.get("scores", {})
  pairs = [("shapes_vqa.exact_match", "shapes_vqa", "exact_match", 100), ("digits.accuracy", "digits", "exact_match", 100),
           ("spoken_digits.wer", "spoken_digits", "wer", 100), ("trimodal.accuracy", "trimodal", "exact_match", 100),
           ("trimodal.text_accuracy", "trimodal_text", "exact_match", 100)]
  pairs += [(f"series.{n}.mse", n, "mse", 1) for n in SERIES] + [(f"series.{n}.seasonal_naive_mse", n, "naive_mse", 1)
                                                                  for n in SERIES]
  problems = []
  for ours, part, key, scale in pairs:
    a, b = _get(metrics, ours), scores.get(part, {}).get(key)
    if a is None or b is None:
      continue
    if not math.isclose(a * scale, b, rel_tol=1e-6, abs_tol=1e-9):
      problems.append(f"{ours}: {a * scale:.6g} from predictions.jsonl, {b:.6g} in eval.py's metrics.json")
  return problems


# ---------------------------------------------------------------------------------------------
# The report.


def _table(metrics: Mapping, targets: Mapping) -> list[tuple[str, str, str, str]]:
  rows = [("metric", "value", "target", "")]
  def add(path, fmt="{:.3f}"):
    value = _get(metrics, path)
    if value is None:
      return
    t = targets.get(path)
    rows.append((path, fmt.format(value), t["target"] if t else "", ("met" if t["met"] else "MISSED") if t else ""))
  add("shapes_vqa.exact_match")
  for kind in (_get(metrics, "shapes_vqa.per_type") or {}):
    add(f"shapes_vqa.per_type.{kind}.exact_match")
  add("digits.accuracy")
  add("spoken_digits.wer")
  for p in _get(metrics, "spoken_digits.per_position") or ():
    rows.append((f"spoken_digits.word_{p['position'] + 1}.accuracy", f"{p['accuracy']:.3f}", "", ""))
  for name in SERIES:
    add(f"series.{name}.mse", "{:.4f}")
    add(f"series.{name}.seasonal_naive_mse", "{:.4f}")
  add("trimodal.accuracy")
  add("trimodal.text_accuracy")
  add("trimodal.text_gap")
  for stage in (_get(metrics, "wall_s") or {}):
    add(f"wall_s.{stage}", "{:.0f}")
  return rows


def format_table(rows, markdown: bool = False) -> str:
  if markdown:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]) + "\n"
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines) + "\n"


def _plt():
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
  except ImportError:
    return None


def _training_curve(plt, workdir: str, path: str) -> bool:
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if line.strip()]
  train = [r for r in rows if "loss" in r]
  if not train:
    return False
  # Each row is one logged batch: a batch of forecasting windows only has no answer tokens, and one
  # without series no forecast; each curve shows the batches that hold its kind.
  text = [r for r in train if r.get("tokens", 0) > 0]
  series = [r for r in train if r.get("forecast_mse", 0) > 0]
  fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
  ax[0].plot([r["step"] for r in text], [r["nll"] for r in text], ".-", label="answer-token cross-entropy")
  if series:
    ax[0].plot([r["step"] for r in series], [r["forecast_mse"] for r in series], ".-", alpha=0.7,
               label="forecast MSE (RevIN units)")
  ax[0].set_yscale("log")
  ax[0].set_xlabel("step")
  ax[0].legend(fontsize=8)
  ax[1].plot([r["step"] for r in text], [r["accuracy"] for r in text], ".-", label="answer-token accuracy")
  ax[1].set_ylim(0, 1.02)
  ax[1].set_xlabel("step")
  ax[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return True


def _forecast_plot(plt, rows: Sequence[Mapping], name: str, path: str, k: int = 3) -> bool:
  if not rows:
    return False
  picks = [rows[int(i)] for i in np.linspace(0, len(rows) - 1, min(k, len(rows)))]
  fig, axes = plt.subplots(1, len(picks), figsize=(3.3 * len(picks), 2.8), squeeze=False)
  for ax, r in zip(axes[0], picks):
    target = np.asarray(r["reference"], np.float64)
    H = len(target)
    ax.plot(range(H), target, "k-", label="actual")
    ax.plot(range(H), np.asarray(r["output"]), "C0-", label="ModRWKV")
    ax.plot(range(H), np.asarray(r["meta"]["naive"]), "C1--", label="seasonal naive")
    ax.set_title(str(r["id"]).split("/", 1)[-1], fontsize=8)
  axes[0][0].legend(fontsize=7)
  fig.suptitle(f"{name}: test forecasts, {H} months ahead", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return True


def _thumbnail(src: str, dest: str, size: int = 96) -> None:
  import PIL.Image
  with PIL.Image.open(src) as im:
    im.convert("RGB").resize((size, size), PIL.Image.Resampling.NEAREST).save(dest)


def _examples(rows: Sequence[Mapping], k: int) -> list[Mapping]:
  """k rows spread over the part, wrong answers first among equals (so the report shows both)."""
  if not rows:
    return []
  wrong = [r for r in rows if _norm(r["output"]) != _norm(r["reference"])]
  right = [r for r in rows if _norm(r["output"]) == _norm(r["reference"])]
  n_wrong = min(len(wrong), max(1, k // 3))
  return (wrong[:n_wrong] + right)[:k]


def _record_media(config, rows) -> dict:
  """{question id prefix: {"image": path, "audio": path, "question": text}} from the test manifests."""
  from modrwkv_jax.data import sources
  from modrwkv_jax.training import config as config_lib
  out = {}
  for s in config.data.sources:
    if s["kind"] == "series":
      continue
    path = config_lib._data_path(config, s["path"])
    name = os.path.basename(os.path.dirname(path))
    opts = config_lib._data_options(config, dict(s.get("options") or {}))
    src = sources.open_source(s["kind"], path, "test", **opts)
    raw = sources._JsonRecords(path.replace("{split}", "test"))
    for i in range(len(src)):
      r = src[i]
      extra = raw.get(i)
      out[f"{name}/{r['id']}"] = {"image": (r["image"] or [None])[0], "audio": (r["audio"] or [None])[0],
                                  "question": extra.get("question"), "voice": extra.get("voice")}
  return out


def write_report(workdir: str, eval_dir: str | None = None) -> dict:
  """Writes workdir/metrics.json and workdir/report.md (module docstring); returns the metrics."""
  from modrwkv_jax.evaluation import runner
  from modrwkv_jax.training import config as config_lib
  import ml_collections
  eval_dir = eval_dir or os.path.join(workdir, "eval")
  pred_path = os.path.join(eval_dir, "predictions.jsonl")
  if not os.path.isfile(pred_path):
    raise FileNotFoundError(f"{pred_path}: no predictions; run `python eval.py --task demo --checkpoint {workdir} "
                            f"--out {eval_dir}` first")
  config = ml_collections.ConfigDict(_read_json(os.path.join(workdir, "config.json")))
  rows = runner.read_predictions(pred_path)
  metrics = metrics_from_predictions(rows, config)
  stages_path = os.path.join(workdir, STAGES_FILE)
  stages = _read_json(stages_path) if os.path.isfile(stages_path) else {}
  wall = {k: v["wall_s"] for k, v in stages.items() if k != "report"}
  if wall:
    wall["total"] = round(sum(wall.values()), 2)
    metrics["wall_s"] = wall
  curve = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if line.strip()]
  train_rows = [r for r in curve if "loss" in r]
  if train_rows:
    metrics["training"] = {"steps": train_rows[-1]["step"], "first_loss": train_rows[0]["loss"],
                           "last_loss": train_rows[-1]["loss"]}
  targets = check_targets(metrics)
  metrics["targets"] = targets
  eval_metrics_path = os.path.join(eval_dir, "metrics.json")
  problems = cross_check(metrics, _read_json(eval_metrics_path)) if os.path.isfile(eval_metrics_path) else []
  metrics["source"] = {"predictions": pred_path, "rows": len(rows), "training_curve": os.path.join(workdir, "metrics.jsonl"),
                       "agrees_with_eval_metrics": not problems}
  _write_json(os.path.join(workdir, "metrics.json"), metrics)

  # ---- report.md ---------------------------------------------------------------------------------
  files = os.path.join(workdir, "report")
  if os.path.isdir(files):
    shutil.rmtree(files)
  os.makedirs(files)
  plt = _plt()
  table = _table(metrics, targets)
  lines = [f"# ModRWKV demo: {config.get('name', 'demo')}", "",
           f"A {config.model.rwkv.get('n_layer')}-layer × {config.model.rwkv.get('n_embd')} RWKV-7 trained from scratch "
           f"for {metrics.get('training', {}).get('steps', '?')} steps behind the frozen pretrained Whisper-base "
           "encoder (audio), a vision encoder trained with it and a WaveNet series encoder, on offline data. "
           f"Every number below is computed from `{os.path.relpath(pred_path, workdir)}` (eval.py's answers to the "
           "held-out test splits); accuracies and WER are fractions, MSE is over z-normalised values.", "",
           format_table(table, markdown=True)]
  if problems:
    lines += ["**Warning: these numbers differ from eval.py's metrics.json:**", ""] + [f"- {p}" for p in problems] + [""]
  if plt is None:
    lines += ["_matplotlib is not installed: no figures (`pip install matplotlib`)._", ""]
  lines += ["## Training", ""]
  if plt is not None and _training_curve(plt, workdir, os.path.join(files, "training_curve.png")):
    lines += ["![training curve](report/training_curve.png)", ""]
  if "training" in metrics:
    t = metrics["training"]
    lines += [f"Loss {t['first_loss']:.3f} at step 1 -> {t['last_loss']:.3f} at step {t['steps']}.", ""]

  by_part = collections.defaultdict(list)
  for r in rows:
    by_part[r["meta"]["part"]].append(r)
  media = _record_media(config, rows)

  def media_of(r):
    return media.get(str(r["id"]).rsplit("#", 1)[0], {})

  for part, title, k in (("shapes_vqa", "Shapes-VQA", 8), ("digits", "Digits", 6), ("trimodal", "Spoken questions about images (tri-modal)", 8)):
    ex = _examples(by_part[part], k)
    if not ex:
      continue
    lines += [f"## {title}: example answers", "", "| image | question | reference | model | |", "|---|---|---|---|---|"]
    for j, r in enumerate(ex):
      m = media_of(r)
      cell = ""
      if m.get("image") and os.path.isfile(m["image"]):
        thumb = f"{part}_{j}.png"
        _thumbnail(m["image"], os.path.join(files, thumb))
        cell = f"![](report/{thumb})"
      question = m.get("question") if part == "trimodal" else r["prompt"].replace("<image>", "").strip()
      if part == "trimodal":
        question = f"(spoken by {m.get('voice', '?')}) {question}"
      ok = "✓" if _norm(r["output"]) == _norm(r["reference"]) else "✗"
      lines.append(f"| {cell} | {question} | {r['reference']} | {r['output']} | {ok} |")
    lines.append("")

  ex = by_part["spoken_digits"][:10]
  if ex:
    lines += ["## Spoken digit strings (held-out voices): transcripts", "", "| voice | reference | model | |",
              "|---|---|---|---|"]
    for r in ex:
      ok = "✓" if _norm(r["output"]) == _norm(r["reference"]) else "✗"
      lines.append(f"| {media_of(r).get('voice', '?')} | {r['reference']} | {r['output']} | {ok} |")
    lines.append("")

  if any(by_part[n] for n in SERIES):
    lines += ["## Forecasts against the seasonal-naive baseline", ""]
    for name in SERIES:
      s = _get(metrics, f"series.{name}")
      if not s:
        continue
      lines.append(f"- **{name}**: MSE {s['mse']:.4f} vs seasonal naive {s['seasonal_naive_mse']:.4f} "
                   f"({s['windows']} test windows, z-normalised)")
    lines.append("")
    for name in SERIES:
      if plt is not None and _forecast_plot(plt, by_part[name], name, os.path.join(files, f"forecast_{name}.png")):
        lines += [f"![{name} forecasts](report/forecast_{name}.png)", ""]

  if stages:
    lines += ["## Stage timings", "", "| stage | wall time | command |", "|---|---|---|"]
    for name, s in stages.items():
      lines.append(f"| {name} | {s['wall_s']:.0f} s | `{s['command']}` |")
    if wall:
      lines.append(f"| total | {wall['total']:.0f} s | |")
    lines.append("")
  with open(os.path.join(workdir, "report.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  print(format_table(table), end="")
  for p in problems:
    print(f"warning: {p}", file=sys.stderr)
  print(f"wrote {os.path.join(workdir, 'metrics.json')} and {os.path.join(workdir, 'report.md')}")
  return metrics


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m modrwkv_jax.demo", description=__doc__.split("\n")[0])
  sub = ap.add_subparsers(dest="command", required=True)
  d = sub.add_parser("data", help="build the demo data and join Whisper-base (skipped when up to date)")
  d.add_argument("--config", default=DEFAULT_CONFIG)
  s = sub.add_parser("stage", help="run a command and record its wall time in WORKDIR/stages.json")
  s.add_argument("name")
  s.add_argument("--workdir", default=os.path.join("runs", "demo"))
  s.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ...")
  r = sub.add_parser("report", help="write WORKDIR/metrics.json and WORKDIR/report.md from the eval predictions")
  r.add_argument("--workdir", default=os.path.join("runs", "demo"))
  r.add_argument("--eval", default=None, help="eval.py's --out folder (default WORKDIR/eval)")
  args = ap.parse_args(argv)
  if args.command == "data":
    from modrwkv_jax.training import config as config_lib
    prepare_data(config_lib.load_config_file(args.config))
    return 0
  if args.command == "stage":
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
      ap.error("stage: give the command after --")
    return run_stage(args.name, args.workdir, cmd)
  write_report(args.workdir, args.eval)
  return 0


if __name__ == "__main__":
  sys.exit(main())
