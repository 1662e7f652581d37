"""Batched greedy answering (eval.py's engine): questions per second at several batch sizes, same run.

The demo model (a train.py run folder, default runs/demo from `make demo`, else configs/demo.py with random
weights) answers the same shapes-VQA test questions at each batch size with `evaluation.generation`:
media preprocessing, one jitted embedding + prefill per batch, one jitted decode loop. Each batch size is
warmed up on one batch first (compilation excluded), then timed over --questions questions; the answers
must equal batch size 1's (batching never changes a greedy answer).

  python benchmarks/eval_generation.py [--run runs/demo] [--questions 48] [--batch-sizes 1 8]
"""

import argparse
import os
import sys
import time

import jax

from common import machine, write_result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from modrwkv_jax.evaluation import generation, runner, tasks  # noqa: E402
from modrwkv_jax.training import config as config_lib  # noqa: E402


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--run", default=os.path.join(ROOT, "runs", "demo"))
  ap.add_argument("--questions", type=int, default=48)
  ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
  ap.add_argument("--max-new-tokens", type=int, default=8)
  ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/eval_generation_<backend>.json)")
  args = ap.parse_args(argv)
  if os.path.isfile(os.path.join(args.run, "config.json")):
    config, model, params, desc = runner.load_model(None, args.run)
  else:
    config, model, params, desc = runner.load_model(config_lib.load_config_file(os.path.join(ROOT, "configs", "demo.py")),
                                                    None)
    desc += " (random weights: no run folder at --run)"
  from modrwkv_jax.training import data as data_lib
  data_lib.prepare(config)
  task = tasks.make_task("demo", config)
  qs = [q for q in task.questions() if isinstance(q, tasks.Question) and q.meta.get("kind") == "llava"]
  qs = qs[:args.questions]
  rows, answers = [], {}
  for b in args.batch_sizes:
    pipeline = runner.eval_pipeline(config, model, b)
    prepared = [generation.prepare_prompt(q.record, pipeline) for q in qs]
    gen = generation.BatchGenerator(model, params, pipeline, batch_size=b, max_new_tokens=args.max_new_tokens)
    gen(prepared[:b])  # compile
    t0 = time.perf_counter()
    out = gen(prepared)
    seconds = time.perf_counter() - t0
    answers[b] = [a.token_ids for a in out]
    rows.append({"batch_size": b, "questions": len(qs), "seconds": seconds, "questions_per_s": len(qs) / seconds})
  base = rows[0]["questions_per_s"]
  for r in rows:
    r["speedup_vs_first"] = r["questions_per_s"] / base
  same = all(answers[b] == answers[args.batch_sizes[0]] for b in args.batch_sizes)
  print(f"{desc}; {len(qs)} shapes-VQA questions, at most {args.max_new_tokens} new tokens, {jax.default_backend()}")
  print(f"{'batch':>5} {'seconds':>8} {'questions/s':>12} {'speed-up':>9}")
  for r in rows:
    print(f"{r['batch_size']:>5} {r['seconds']:>8.2f} {r['questions_per_s']:>12.2f} {r['speedup_vs_first']:>8.2f}x")
  print("answers identical across batch sizes:", same)
  result = {"benchmark": "eval_generation", "machine": machine(), "model": desc, "max_new_tokens": args.max_new_tokens,
            "rows": rows, "answers_identical": same}
  path = write_result(result, "eval_generation", args.out)
  print("wrote", path)
  return result


if __name__ == "__main__":
  main()
