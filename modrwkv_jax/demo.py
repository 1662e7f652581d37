"""`make demo`: build the offline demo data, train a tiny ModRWKV on it, evaluate it — all on the CPU.

1. `modrwkv_jax.data.demo` renders shapes-VQA (PIL scenes of circles/squares/triangles with count,
   colour and yes/no questions) in the LLaVA format, deterministically and without network.
2. A tiny ModRWKV (random frozen SigLIP-style encoder 32 px / patch 8 → 16 tokens, vision adapter,
   2-layer RWKV-7) is trained phase-II style (adapter + RWKV; the encoder stays frozen) with Adam on
   batches from the real Grain pipeline.
3. It is evaluated on the held-out test split: loss and teacher-forced assistant-token accuracy, then
   greedy exact-match answers (prefill the inference prompt, decode to token 24) against the
   majority-answer baseline of the training split.

The point is the plumbing of the whole system on real files; a model this small learns the answer
format and the answer prior quickly, the visual counting only partly.

    python -m modrwkv_jax.demo [--data build/demo_data] [--steps 80] [--eval 48]
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
import optax

from modrwkv_jax import generate as gen
from modrwkv_jax.data import conversation, image
from modrwkv_jax.data import demo as demo_data
from modrwkv_jax.data import pipeline as pipe
from modrwkv_jax.data import transforms
from modrwkv_jax.models import modrwkv, projector, rwkv7
from modrwkv_jax.models.encoders import siglip
from modrwkv_jax.tokenizer import TURN_END_ID, world_tokenizer

IMAGE = 32


def model_config() -> modrwkv.ModRWKVConfig:
  rwkv = rwkv7.RWKV7Config(n_layer=2, n_embd=128, head_size=32, dim_w=16, dim_a=16, dim_v=8, dim_g=32, dim_ffn=256)
  vision = siglip.SiglipConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, patch_size=8,
                               image_size=IMAGE)
  return modrwkv.ModRWKVConfig(rwkv, (("image", modrwkv.ModalityConfig(
      "siglip", vision, projector.ProjectorConfig("vision", 64, 128, hidden_mult=2))),), max_length=128)


def pipeline_config(config, data_dir, batch_size):
  proc = image.default_config("siglip", size={"height": IMAGE, "width": IMAGE})
  return pipe.PipelineConfig(
      sources=pipe.SourceConfig("llava", os.path.join(data_dir, "shapes_vqa", "{split}.json")),
      batch_size=batch_size, image=transforms.ImageConfig(proc, modrwkv.pipeline_num_tokens(config, "image")),
      max_length=64, length_buckets=(64,), bucket_window=1)


def evaluate_exact_match(config, params, records, proc, limit):
  """Greedy answers to the first `limit` test questions; returns (exact-match accuracy, examples)."""
  tok = world_tokenizer()
  n_img = modrwkv.num_tokens(config, "image", IMAGE * IMAGE)
  encode = jax.jit(modrwkv.encode_items, static_argnums=(0, 2))
  correct, shown = 0, []
  for rec in records[:limit]:
    question = rec["conversations"][0]["value"].replace("<image>", "").strip()
    answer = rec["conversations"][1]["value"].strip()
    pixels = image.preprocess(rec["image_path"], proc)
    ex = conversation.inference_prompt(question, {"image": [n_img]}, tokenizer=tok)
    img_tok, _ = encode(config, params, "image", jnp.asarray(pixels)[None])
    text = rwkv7.embed(config.rwkv, params["rwkv"], jnp.asarray(ex.tokens[n_img:])[None])[0]
    x = jnp.concatenate([img_tok[0], text.astype(jnp.float32)])[None]
    rows, _ = gen.generate(config.rwkv, params["rwkv"], embeddings=x, max_new_tokens=8, stop_token=TURN_END_ID)
    got = tok.decode([t for t in rows[0] if t != TURN_END_ID]).strip()
    correct += got == answer
    if len(shown) < 4:
      shown.append((question, answer, got))
  return correct / max(1, min(limit, len(records))), shown


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--data", default=os.path.join("build", "demo_data"))
  ap.add_argument("--train", type=int, default=512, help="shapes-VQA training records to render")
  ap.add_argument("--steps", type=int, default=80)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--lr", type=float, default=2e-3)
  ap.add_argument("--eval", type=int, default=48, help="test questions answered by greedy decoding")
  args = ap.parse_args(argv)
  t_start = time.perf_counter()

  if not os.path.exists(os.path.join(args.data, "shapes_vqa", "train.json")):
    demo_data.main(["--out", args.data, "--parts", "shapes", "--shapes", str(args.train), "64", "128"])
  config = model_config()
  params = modrwkv.init_params(config, jax.random.key(0))
  trainable = {"rwkv": params["rwkv"], "projectors": params["projectors"]}
  frozen = params["encoders"]
  n = lambda t: sum(x.size for x in jax.tree.leaves(t))
  print(f"ModRWKV: RWKV-7 {config.rwkv.n_layer}x{config.rwkv.n_embd} + SigLIP-style {IMAGE}px encoder (frozen); "
        f"{n(trainable) / 1e6:.1f}M trainable, {n(frozen) / 1e6:.2f}M frozen; jax {jax.__version__} on "
        f"{jax.default_backend()}")

  schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(20, args.steps // 5), args.steps)
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule, b1=0.9, b2=0.99, eps=1e-8))
  opt_state = opt.init(trainable)

  @jax.jit
  def step(trainable, frozen, opt_state, batch):
    # Frozen weights are an argument, not constants baked into the compiled step.
    loss_fn = lambda t: modrwkv.loss(config, {**t, "encoders": frozen}, batch)
    (value, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = opt.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, metrics

  def batches(split, epoch):
    p = pipe.make_pipeline(pipeline_config(config, args.data, args.batch), split, seed=0, epoch=epoch,
                           process_index=0, process_count=1)
    return iter(p)

  keys = ("tokens", "labels", "mask", "image", "image_pos")
  done, epoch, first, t0 = 0, 0, None, time.perf_counter()
  while done < args.steps:
    for batch in batches("train", epoch):
      trainable, opt_state, metrics = step(trainable, frozen, opt_state, {k: batch[k] for k in keys})
      done += 1
      first = first if first is not None else float(metrics["loss"])
      if done % 20 == 0 or done == 1:
        print(f"step {done:4d}  loss {float(metrics['loss']):.3f}  assistant-token acc {float(metrics['accuracy']):.2f}"
              f"  ({time.perf_counter() - t0:.0f}s)")
      if done == args.steps:
        break
    epoch += 1

  params = {**trainable, "encoders": frozen}
  eval_loss = jax.jit(lambda p, b: modrwkv.loss(config, p, b)[1])
  totals = collections.Counter()
  for batch in batches("test", 0):
    m = eval_loss(params, {k: batch[k] for k in keys})
    tokens = int(m["tokens"])
    totals["tokens"] += tokens
    totals["loss"] += float(m["loss"]) * tokens
    totals["correct"] += float(m["accuracy"]) * tokens
  test_loss, test_acc = totals["loss"] / max(totals["tokens"], 1), totals["correct"] / max(totals["tokens"], 1)
  print(f"test: loss {test_loss:.3f} (first training batch {first:.3f}), assistant-token accuracy {test_acc:.2f}")

  root = os.path.join(args.data, "shapes_vqa")
  def load(split):
    with open(os.path.join(root, f"{split}.json")) as f:
      records = json.load(f)
    for r in records:
      r["image_path"] = os.path.join(root, r["image"])
    return records
  train_answers = collections.Counter(r["conversations"][1]["value"].strip() for r in load("train"))
  test = load("test")
  majority, _ = train_answers.most_common(1)[0]
  baseline = np.mean([r["conversations"][1]["value"].strip() == majority for r in test[:args.eval]])
  proc = image.default_config("siglip", size={"height": IMAGE, "width": IMAGE})
  accuracy, shown = evaluate_exact_match(config, params, test, proc, args.eval)
  for q, want, got in shown:
    print(f"  Q: {q!r}  answer {want!r}  model {got!r}")
  print(f"test exact match {accuracy:.2f} on {min(args.eval, len(test))} questions "
        f"(majority answer {majority!r}: {baseline:.2f}); total {time.perf_counter() - t_start:.0f}s")
  ok = np.isfinite(test_loss) and test_loss < first
  print("demo: " + ("ok (test loss below the untrained loss)" if ok else "FAILED: the model did not learn"))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
