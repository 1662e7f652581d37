"""Batched greedy answering (eval.py's engine): questions per second at several batch sizes, same run.

Also, at each batch size, the prefill as it was before the vocabulary head ran at the last prompt position
only (`generate._prefill` swapped, in this process, for a forward with logits at every position, then the
last real one): the baseline of that change, measured in the same run.

The demo model (a train.py run folder, default runs/demo from `make demo`, else configs/demo.py with random
weights) answers the same shapes-VQA test questions at each batch size with `evaluation.generation`:
media preprocessing, one jitted embedding + prefill per batch, one jitted decode loop. Each batch size
answers all --questions questions once untimed (every prompt shape compiles), then again, timed. The answers
are compared with the old prefill's; those that differ from the first batch size's are counted (a bfloat16 model rounds
differently at another batch shape, so a near-tie can flip).

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

from modrwkv_jax import generate as generate_lib  # noqa: E402
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
  fast_prefill = generate_lib._prefill
  for b in args.batch_sizes:
    pipeline = runner.eval_pipeline(config, model, b)
    prepared = [generation.prepare_prompt(q.record, pipeline) for q in qs]
    row = {"batch_size": b, "questions": len(qs)}
    for name, prefill in (("seconds", fast_prefill), ("seconds_head_at_every_position", _prefill_every_position)):
      generate_lib._prefill = prefill
      try:
        gen = generation.BatchGenerator(model, params, pipeline, batch_size=b, max_new_tokens=args.max_new_tokens)
        gen(prepared)  # compiles every prompt shape: the timed pass below runs compiled code only
        t0 = time.perf_counter()
        out = gen(prepared)
        row[name] = time.perf_counter() - t0
      finally:
        generate_lib._prefill = fast_prefill
      answers[(b, name)] = [a.token_ids for a in out]
    row["questions_per_s"] = len(qs) / row["seconds"]
    row["speedup_vs_head_at_every_position"] = row["seconds_head_at_every_position"] / row["seconds"]
    rows.append(row)
  base = rows[0]["questions_per_s"]
  for r in rows:
    r["speedup_vs_first"] = r["questions_per_s"] / base
  first = answers[(args.batch_sizes[0], "seconds")]
  same_prefill = all(answers[(b, "seconds")] == answers[(b, "seconds_head_at_every_position")] for b in args.batch_sizes)
  for r in rows:
    r["answers_unlike_first_batch_size"] = sum(x != y for x, y in zip(answers[(r["batch_size"], "seconds")], first))
  print(f"{desc}; {len(qs)} shapes-VQA questions, at most {args.max_new_tokens} new tokens, {jax.default_backend()}")
  print(f"{'batch':>5} {'seconds':>8} {'questions/s':>12} {'speed-up':>9} {'head at every position':>23} {'ratio':>6}")
  for r in rows:
    print(f"{r['batch_size']:>5} {r['seconds']:>8.2f} {r['questions_per_s']:>12.2f} {r['speedup_vs_first']:>8.2f}x"
          f" {r['seconds_head_at_every_position']:>22.2f}s {r['speedup_vs_head_at_every_position']:>5.2f}x")
  print("answers identical with either prefill, at every batch size:", same_prefill)
  print(f"answers unlike batch size {args.batch_sizes[0]}'s:",
        ", ".join(f"{r['answers_unlike_first_batch_size']} at batch {r['batch_size']}" for r in rows[1:]) or "-",
        "(bfloat16 matmuls of another shape round differently: a near-tie can flip)")
  result = {"benchmark": "eval_generation", "machine": machine(), "model": desc, "max_new_tokens": args.max_new_tokens,
            "rows": rows, "answers_identical_with_either_prefill": same_prefill}
  path = write_result(result, "eval_generation", args.out)
  print("wrote", path)
  return result


def _prefill_every_position(config, params, prompt, state, embeddings=None, mask=None):
  """The prefill before the change: logits float32[B, T, V] at every position, then each row's last real one."""
  logits, state = generate_lib._forward(config, params, prompt, state, embeddings=embeddings, mask=mask)
  return generate_lib._last_real(logits, mask), state


if __name__ == "__main__":
  main()
