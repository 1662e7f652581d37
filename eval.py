"""Evaluate a ModRWKV model on a benchmark: `python eval.py --config configs/NAME.py --checkpoint PATH --task TASK --out DIR`.

    python eval.py --checkpoint runs/demo --task demo --out runs/demo/eval
    python eval.py --checkpoint runs/p2 --task vqav2 --data ~/LLaVA/playground/data/eval/vqav2 --out runs/p2/vqav2
    python eval.py --config configs/released/modrwkv_0.4b_siglip2.py --checkpoint rwkv7-0.4b-siglip2.pth \\
        --task gqa --data ~/LLaVA/playground/data/eval/gqa --out runs/released/gqa --batch-size 16
    python eval.py --checkpoint runs/asr --task asr --questions /data/librispeech/test-clean.jsonl --out runs/asr/clean
    python eval.py --report runs/p2/vqav2 runs/p2/gqa runs/p2/textvqa        # Markdown table with the paper's numbers

--checkpoint is a train.py run folder (its config.json describes the model and --config is ignored; overrides
such as --config.data.root=/data still apply), a
released WorldRWKV checkpoint (.pth or Hugging Face folder; --config describes it), or omitted (the weights
named by the config's init.*). --data is the task's folder in LLaVA-1.5's evaluation layout
(playground/data/eval/<task>); --questions / --images / --annotations override single files. Re-running the
same command resumes: ids already in DIR/predictions.jsonl are skipped. Tasks: vqav2, gqa, textvqa, pope,
scienceqa, mmbench, asr, timeseries, demo (see modrwkv_jax/evaluation/tasks.py for files and scorers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def parse(argv):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog="Any config key can be overridden as --config.KEY=VALUE (Python literals).")
  ap.add_argument("--config", help="a configs/*.py file (optional with a train.py run folder as --checkpoint)")
  ap.add_argument("--checkpoint", help="train.py run folder / step folder, or a WorldRWKV .pth / HF folder")
  ap.add_argument("--task", help="vqav2 | gqa | textvqa | pope | scienceqa | mmbench | asr | timeseries | demo")
  ap.add_argument("--out", help="output folder: predictions.jsonl, metrics.json, answer files")
  ap.add_argument("--data", help="the task's data folder (LLaVA layout) or, for timeseries, the series file")
  ap.add_argument("--questions", help="question / manifest / series file (overrides --data's default)")
  ap.add_argument("--images", help="image folder (overrides --data's default)")
  ap.add_argument("--annotations", help="answers / annotation file or folder (overrides --data's default)")
  ap.add_argument("--split", default="test", help="demo / timeseries: the split to evaluate (default test)")
  ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N questions")
  ap.add_argument("--batch-size", type=int, default=8)
  ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's (32 short answers, 128 ASR)")
  ap.add_argument("--metric", choices=("wer", "cer"), default="wer", help="asr: WER, or CER with spaces removed")
  ap.add_argument("--season", type=int, default=None, help="timeseries: seasonal-naive period (default 24)")
  ap.add_argument("--prompt-format", choices=("design", "worldrwkv"), default=None,
                  help="default: worldrwkv for a released WorldRWKV checkpoint (\\x17Assistant:), else design")
  ap.add_argument("--skip-bad", action="store_true", help="count and skip unreadable questions instead of stopping")
  ap.add_argument("--report", nargs="+", metavar="DIR", help="print a Markdown table of finished eval folders")
  args, rest = ap.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      ap.error(f"unrecognised argument {item!r} (overrides look like --config.data.root=/data)")
    overrides.append(item[len("--config."):])
  if args.report is None and not (args.task and args.out):
    ap.error("--task and --out are required (or --report DIR ...)")
  if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
    ap.error("--batch-size and --limit must be positive")
  return args, overrides


def main(argv=None) -> int:
  args, overrides = parse(sys.argv[1:] if argv is None else argv)
  from modrwkv_jax.evaluation import runner, tasks
  if args.report:
    print(runner.report(args.report), end="")
    return 0
  if args.task not in tasks.ALL_TASKS:
    print(f"eval.py: unknown task {args.task!r}; tasks: {', '.join(tasks.ALL_TASKS)}", file=sys.stderr)
    return 2
  from modrwkv_jax.training import config as config_lib
  is_run = args.checkpoint is not None and runner._is_run(args.checkpoint)
  config = config_lib.load_config_file(args.config) if args.config and not is_run else None
  if config is not None:
    config = config_lib.apply_overrides(config, overrides)
  elif overrides and not is_run:
    print("eval.py: --config.KEY overrides need --config or a run folder", file=sys.stderr)
    return 2
  config, model, params, desc = runner.load_model(config, args.checkpoint)
  if is_run and overrides:  # the run's own config describes the model; overrides adapt paths (data.root, ...)
    config = config_lib.apply_overrides(config, overrides)
  files = {"questions": args.questions, "images": args.images, "annotations": args.annotations}
  task = tasks.make_task(args.task, config, data=args.data, files=files, metric=args.metric, season=args.season,
                         split=args.split)
  pipeline = runner.eval_pipeline(config, model, args.batch_size)
  prompt_format = args.prompt_format or ("worldrwkv" if desc.endswith("(WorldRWKV)") else "design")
  info = {"checkpoint": desc, "prompt_format": prompt_format, "model_size": runner.model_size(config), "config": args.config,
          "scorer": "LLaVA-1.5 / official scripts (modrwkv_jax/evaluation/metrics.py)"}
  result = runner.run(task, model, params, pipeline, args.out, batch_size=args.batch_size, limit=args.limit,
                      max_new_tokens=args.max_new_tokens, on_error="skip" if args.skip_bad else "raise", info=info,
                      prompt_format=prompt_format)
  rows = [("task", "metric", "value")]
  for key, value in runner._flat(result["scores"], args.task).items():
    rows.append((args.task, key.split("/", 1)[1], runner._fmt(value)))
  print(f"{args.task}: {result['n_answered']} of {result['n_questions']} questions answered "
        f"({sum(result['skipped'].values())} skipped) by {desc}")
  if len(rows) > 1:
    tasks.print_table(rows)
  tp = result["throughput"]
  if tp.get("questions"):
    print(f"{tp['questions_per_s']:.2f} questions/s at batch {tp['batch_size']} (this run, compilation included)")
  print(f"wrote {os.path.join(args.out, 'predictions.jsonl')}, {os.path.join(args.out, 'metrics.json')}"
        + "".join(f", {p}" for p in result["files"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
