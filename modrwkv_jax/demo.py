"""`make demo`, step 2: evaluate the demo model that `python train.py --config configs/demo.py` trained.

    python train.py --config configs/demo.py --workdir runs/demo     # step 1 (resumes when re-run)
    python -m modrwkv_jax.demo --workdir runs/demo [--eval 48]        # step 2

Reads the run's config.json and latest checkpoint, then on each held-out test split of the offline
demo data (shapes-VQA, digits):
  - the loss and teacher-forced assistant-token accuracy over the whole split;
  - greedy exact-match answers to the first `--eval` questions (prefill the inference prompt, decode to
    token 24) against the majority answer of the training split.
The demo model is small and trained for minutes: it learns the answer format and the answer prior
quickly, the visual counting only partly. (`eval.py` will replace this with the benchmark runner.)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax import generate as gen
from modrwkv_jax import peft
from modrwkv_jax.data import conversation, image
from modrwkv_jax.models import modrwkv, rwkv7
from modrwkv_jax.tokenizer import TURN_END_ID, world_tokenizer
from modrwkv_jax.training import config as config_lib
from modrwkv_jax.training import data as data_lib
from modrwkv_jax.training import step as step_lib
from modrwkv_jax.training import trainer


def _records(path: str) -> list[dict]:
  with open(path) as f:
    records = json.load(f)
  root = os.path.dirname(path)
  for r in records:
    r["image_path"] = os.path.join(root, r["image"])
  return records


def exact_match(model, params, records, proc, limit):
  """Greedy answers to the first question of the first `limit` records: (accuracy, examples)."""
  tok = world_tokenizer()
  n_img = modrwkv.num_tokens(model, "image", 0)
  encode = jax.jit(modrwkv.encode_items, static_argnums=(0, 2))
  correct, shown = 0, []
  for rec in records[:limit]:
    question = rec["conversations"][0]["value"].replace("<image>", "").strip()
    answer = rec["conversations"][1]["value"].strip()
    pixels = image.preprocess(rec["image_path"], proc)
    ex = conversation.inference_prompt(question, {"image": [n_img]}, tokenizer=tok)
    img_tok, _ = encode(model, params, "image", jnp.asarray(pixels)[None])
    text = rwkv7.embed(model.rwkv, params["rwkv"], jnp.asarray(ex.tokens[n_img:])[None])[0]
    x = jnp.concatenate([img_tok[0], text.astype(jnp.float32)])[None]
    rows, _ = gen.generate(model.rwkv, params["rwkv"], embeddings=x, max_new_tokens=8, stop_token=TURN_END_ID)
    got = tok.decode([t for t in rows[0] if t != TURN_END_ID]).strip()
    correct += got == answer
    if len(shown) < 3:
      shown.append((question, answer, got))
  return correct / max(1, min(limit, len(records))), shown


def split_loss(config, model, params, source_index, mesh):
  """Token-mean loss and accuracy of source `source_index`'s whole test split (summed before dividing)."""
  pipe_cfg = config_lib.pipeline_config(config, model, batch_size=16)
  pipe_cfg = pipe_cfg.replace(shuffle=False, sources=(pipe_cfg.sources[source_index],), mixture_length=None)
  step = jax.jit(step_lib.make_eval_step(model))
  trainable, frozen = {}, params
  totals = collections.Counter()
  for local in data_lib.EpochIterator(pipe_cfg, "test", 0, repeat=False):
    terms = jax.device_get(step(trainable, frozen, data_lib.global_batch(local, mesh)))
    for k in ("nll", "tokens", "correct"):
      totals[k] += float(terms[k])
  return totals["nll"] / max(totals["tokens"], 1), totals["correct"] / max(totals["tokens"], 1)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", default=os.path.join("runs", "demo"))
  ap.add_argument("--eval", type=int, default=48, help="test questions per split answered by greedy decoding")
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  config, params, step = trainer.load_run(args.workdir)
  model = config_lib.model_config(config)
  params = jax.device_get(params)
  params = peft.merge_all(params) if config.model.peft.method else params
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  first = json.loads(open(os.path.join(args.workdir, "metrics.jsonl")).readline())["loss"]
  print(f"demo model of {args.workdir} at step {step}: first training loss {first:.3f}")
  proc = config_lib.image_processor(config)
  ok = True
  for i, source in enumerate(config.data.sources):
    path = source["path"].replace("{cache}", config.data.cache_dir)
    name = os.path.basename(os.path.dirname(path))
    test_loss, test_acc = split_loss(config, model, params, i, mesh)
    train = _records(path.replace("{split}", "train"))
    test = _records(path.replace("{split}", "test"))
    answers = collections.Counter(r["conversations"][1]["value"].strip() for r in train)
    majority, _ = answers.most_common(1)[0]
    baseline = np.mean([r["conversations"][1]["value"].strip() == majority for r in test[:args.eval]])
    accuracy, shown = exact_match(model, params, test, proc, args.eval)
    print(f"{name}: test loss {test_loss:.3f}, assistant-token accuracy {test_acc:.2f}; exact match {accuracy:.2f} on "
          f"{min(args.eval, len(test))} questions (majority answer {majority!r}: {baseline:.2f})")
    for q, want, got in shown:
      print(f"    Q: {q!r}  answer {want!r}  model {got!r}")
    ok &= bool(np.isfinite(test_loss) and test_loss < first)
  print(f"evaluated in {time.perf_counter() - t0:.0f}s")
  print("demo: " + ("ok (test loss below the untrained loss)" if ok else "FAILED: the model did not learn"))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
