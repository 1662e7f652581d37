"""Sequence packing: tokens/s of real (non-padding) positions through the real train step, packed
(`data.packing=True`) against padded (length-bucketed, the pipeline's default), in the same run.

Both modes read the same epoch through the real pipeline (data/pipeline.py) and run the jitted train
step that train.py runs (`trainer.Setup.jit_step`, i.e. training/step.py make_train_step); packed
batches carry `segment_ids`, so each example runs as if alone. Every batch shape is compiled before
timing, and the two modes' steps alternate (packed, padded, packed, ...) so that both see the same load
on a shared machine. tokens/s = Σ mask / Σ step seconds; each step waits for its result.

(a) LLaVA-665K-like lengths. A synthetic sampler of llava_v1_5_mix665k.json (the phase-II data of the
    vision recipes): its components and sizes are Table 7 of Liu et al., "Improved Baselines with
    Visual Instruction Tuning" (arXiv 2310.03744), with the counts per image folder reported in
    haotian-liu/LLaVA issue #657 (coco 364,100, vg 86,417, gqa 72,140, ocr_vqa 80,000, textvqa 21,953,
    text-only 40,688; 665,298 records; Table 7 lists 630K of them, whose proportions we draw).
    Text lengths per component are our estimates, not measured from
    the file: the LLaVA-Instruct subsets from their published file sizes (docs/Data.md: conversation_58k
    126 MB, detail_23k 20.5 MB, complex_reasoning_77k 79.6 MB, about 4 bytes of JSON text per token),
    the academic VQA sets from their questions per image (LLaVA-1.5 merges all questions of one image
    into one conversation: VQAv2 ~5.4, GQA ~13, OCR-VQA ~5 turns of ~22 tokens), ShareGPT (text only)
    log-normal around 600 tokens. Every image record has 576 image tokens (SigLIP2-B/16 at 384 px),
    rows are 2048 positions (the recipe's ctx, text truncated beyond it). The recipe's pipeline settings
    (length_buckets 768/1024/1536/2048, bucket_window 16); packed also with bucket_window 64 (the same
    compiled shape) to show the waste of each window's last, partly empty, batch. Small model: RWKV-7
    2 × 128, a 1-layer 96 px SigLIP-style tower with 4 px patches (576 tokens); token ids are folded
    into a 1024-word vocabulary after batching (the cost of a 65,536-word head would hide everything
    else at this width; every batch's layout is the pipeline's).
(b) The demo mixture: configs/demo.py as train.py runs it (rows of 64, one bucket, one batch per window)
    against the same with packing (rows of 64, windows of 16 batches, at most 2 images and 2 clips per
    row), the demo model, both without the forecasting series (a forecasting head cannot be trained on
    packed rows) and the forecasting head.

Prints a table and writes benchmarks/results/packing_<backend>.json.

  python benchmarks/packing.py [--records 256] [--demo-batches 32] [--only llava|demo] [--out FILE]
"""

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np
import PIL.Image

from common import machine, write_result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (component, thousands of conversations (Table 7; LLaVA-Instruct split by its files), has an image,
# median text tokens (our estimate, module docstring), log-normal sigma).
LLAVA_665K = [
    ("llava_instruct conversation", 58, True, 450, 0.35),
    ("llava_instruct detail", 23, True, 180, 0.30),
    ("llava_instruct complex_reasoning", 77, True, 200, 0.30),
    ("sharegpt (text only)", 40, False, 600, 0.90),
    ("vqav2", 83, True, 120, 0.40),
    ("gqa", 72, True, 290, 0.40),
    ("okvqa", 9, True, 30, 0.30),
    ("ocr_vqa", 80, True, 100, 0.40),
    ("a-okvqa", 50, True, 60, 0.30),
    ("textcaps", 22, True, 40, 0.30),
    ("refcoco", 30, True, 120, 0.40),
    ("vg", 86, True, 300, 0.40),
]
IMAGE_TOKENS = 576
CONTEXT = 2048


def sample_llava_665k(n: int, seed: int = 0) -> list[tuple[str, bool, int]]:
  """n (component, has_image, text tokens) drawn like llava_v1_5_mix665k (module docstring)."""
  rng = np.random.default_rng(seed)
  weights = np.array([c[1] for c in LLAVA_665K], np.float64)
  picks = rng.choice(len(LLAVA_665K), size=n, p=weights / weights.sum())
  out = []
  for k in picks:
    name, _, image, median, sigma = LLAVA_665K[k]
    out.append((name, image, max(8, int(round(median * np.exp(sigma * rng.standard_normal()))))))
  return out


def write_llava_665k(folder: str, n: int) -> str:
  """A llava JSON of n synthetic records with the sampled lengths: "word word ..." (one World token
  per word) split 60 / 40 between question and answer, one shared 96 × 96 image."""
  PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(
      os.path.join(folder, "image.png"))
  records = []
  for i, (name, image, text) in enumerate(sample_llava_665k(n)):
    q, a = max(1, int(0.6 * text) - 8), max(1, text - int(0.6 * text) - 8)  # ~8 tokens of turn markers each
    rec = {"id": f"{i}", "conversations": [
        {"from": "human", "value": ("<image>\n" if image else "") + "word" + " word" * (q - 1)},
        {"from": "gpt", "value": "word" + " word" * (a - 1)}]}
    if image:
      rec["image"] = "image.png"
    records.append(rec)
  path = os.path.join(folder, "train.json")
  with open(path, "w") as f:
    json.dump(records, f)
  return path


def llava_config(data_path: str):
  from modrwkv_jax.training.config import base_config
  c = base_config()
  c.name = "packing_benchmark_llava665k"
  c.model.rwkv = dict(vocab_size=1024, n_layer=2, n_embd=128, head_size=32, dim_w=16, dim_a=16, dim_v=8, dim_g=32,
                      dim_ffn=512, dtype="float32", scan_layers=True)
  c.model.max_length = CONTEXT
  c.model.modalities = dict(image=dict(
      encoder="siglip", encoder_config=dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                                            patch_size=4, image_size=96),
      projector=dict(kind="vision", compressor=None, hidden_mult=2)))
  c.data.sources = [dict(kind="llava", path=data_path)]
  c.data.max_length = CONTEXT
  c.data.truncate = True
  c.data.length_buckets = (768, 1024, 1536, 2048)
  c.data.bucket_window = 16
  c.data.image.size = 96
  c.data.image.max_items = 1
  c.train.batch_size = 8
  c.train.trainable = ("adapter", "rwkv")
  c.mesh.data = 1
  return c


def epoch_batches(config, model, *, index_limit: int | None = None, fold_vocab: int | None = None) -> list[dict]:
  """The local batches of one epoch of `config`'s real pipeline, or those of its first `index_limit` batch
  indices (packed: whole windows of bucket_window indices; both modes then cover the same records)."""
  from modrwkv_jax.data import pipeline as pipe
  from modrwkv_jax.training import config as config_lib
  pipeline = pipe.make_pipeline(config_lib.pipeline_config(config, model, batch_size=config.train.batch_size),
                                config.data.train_split, seed=config.seed, epoch=0, process_index=0, process_count=1)
  it = iter(pipeline)
  out = []
  for local in it:
    if index_limit is not None and it.get_state()["next_index"] > index_limit:
      break
    if fold_vocab:
      local["tokens"] = local["tokens"] % fold_vocab
      local["labels"] = np.where(local["labels"] >= 0, local["labels"] % fold_vocab, local["labels"])
    out.append(local)
  return out


def compare(config, modes: dict, batches: dict) -> dict:
  """Alternates the modes' steps (each mode its own state) and returns tokens/s per mode."""
  from modrwkv_jax.models import modrwkv
  from modrwkv_jax.training import data as data_lib, trainer
  mesh = trainer.make_mesh(config)
  setup = trainer.Setup(config, mesh)
  step, _ = setup.jit_step()
  params = modrwkv.init_params(setup.model, jax.random.key(0))
  states = {m: setup.init_state(params) for m in modes}
  t0 = time.perf_counter()
  for m in modes:  # compile every shape first
    shapes = {}
    for local in batches[m]:
      shapes.setdefault(tuple(local["tokens"].shape) + tuple(local["image"].shape), local)
    for local in shapes.values():
      states[m], metrics = step(states[m], data_lib.global_batch(local, mesh))
      jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - t0
  seconds = {m: 0.0 for m in modes}
  for i in range(max(len(b) for b in batches.values())):
    for m in modes:
      if i < len(batches[m]):
        batch = data_lib.global_batch(batches[m][i], mesh)
        t = time.perf_counter()
        states[m], metrics = step(states[m], batch)
        jax.block_until_ready(metrics)
        seconds[m] += time.perf_counter() - t
  out = {"warmup_and_compile_seconds": compile_seconds}
  for m in modes:
    real = sum(int(b["mask"].sum()) for b in batches[m])
    positions = sum(int(b["mask"].size) for b in batches[m])
    examples = sum(int(b["segment_ids"].max(axis=1).sum()) if "segment_ids" in b else int(b["mask"].any(1).sum())
                   for b in batches[m])
    out[m] = {"batches": len(batches[m]), "examples": examples, "real_tokens": real, "positions": positions,
              "padding_fraction": 1 - real / positions, "step_seconds": seconds[m],
              "seconds_per_step": seconds[m] / len(batches[m]), "tokens_per_sec": real / seconds[m],
              "shapes": sorted({tuple(b["tokens"].shape) for b in batches[m]})}
  return out


def llava_665k(records: int) -> dict:
  from modrwkv_jax.training import config as config_lib
  with tempfile.TemporaryDirectory() as folder:
    base = llava_config(write_llava_665k(folder, records))
    model = config_lib.model_config(base)
    variants = {"padded": base, "packed": config_lib.apply_overrides(base, ["data.packing=True"]),
                "packed_window64": config_lib.apply_overrides(base, ["data.packing=True", "data.bucket_window=64"])}
    t0 = time.perf_counter()
    batches = {m: epoch_batches(c, model, fold_vocab=1024) for m, c in variants.items()}
    pipeline_seconds = time.perf_counter() - t0
    result = compare(base, variants, batches)
  lengths = [IMAGE_TOKENS * image + text for _, image, text in sample_llava_665k(records)]
  result.update(records=records, pipeline_seconds=pipeline_seconds,
                lengths={"mean": float(np.mean(lengths)), "median": float(np.median(lengths)),
                         "p90": float(np.percentile(lengths, 90)), "max": int(np.max(lengths)),
                         "over_2048": int(np.sum(np.array(lengths) > CONTEXT))})
  return result


def demo(batches_per_mode: int) -> dict:
  from modrwkv_jax.training import config as config_lib, data as data_lib
  base = config_lib.load_config_file(os.path.join(ROOT, "configs", "demo.py"))
  base.data.cache_dir = os.path.join(ROOT, "build", "data")
  data_lib.prepare(base)
  # Forecasting batches cannot be packed (config.check_packing): both modes leave out the series sources
  # and the forecasting head; the rest of the mixture (images, spoken digits, image + audio records) stays.
  dropped = [s["path"] for s in base.data.sources if s["kind"] == "series"]
  base.data.sources = [dict(s) for s in base.data.sources if s["kind"] != "series"]
  base.model.forecast_horizon = 0
  base.train.trainable = tuple(g for g in base.train.trainable if g != "head")
  model = config_lib.model_config(base)
  # Packing needs windows of many batches (a window packs into at most bucket_window batches). Records
  # are 25 to 64 positions with at most one image and one clip, so a row of 64 holds at most two: the
  # item dimensions are 2 (data.<m>.row_items), twice the padded batch's encoder inputs per row.
  packed = config_lib.apply_overrides(base, ["data.packing=True", "data.bucket_window=16", "data.image.row_items=2",
                                             "data.audio.row_items=2"])
  variants = {"padded": base, "packed": packed}
  batches = {m: epoch_batches(c, model, index_limit=batches_per_mode) for m, c in variants.items()}
  result = compare(base, variants, batches)
  result.update(batches_per_mode=batches_per_mode, series_sources_left_out=dropped,
                sources=[s["path"] for s in base.data.sources])
  return result


def table(name: str, r: dict) -> None:
  print(f"{'data':<16s} {'mode':<16s} {'batches':>7s} {'examples':>8s} {'padding':>8s} {'s/step':>7s} "
        f"{'real tokens/s':>13s} {'vs padded':>9s}")
  for mode in [m for m in r if isinstance(r[m], dict) and "tokens_per_sec" in r[m]]:
    x = r[mode]
    x["speedup_vs_padded"] = x["tokens_per_sec"] / r["padded"]["tokens_per_sec"]
    print(f"{name:<16s} {mode:<16s} {x['batches']:7d} {x['examples']:8d} {x['padding_fraction']:8.3f} "
          f"{x['seconds_per_step']:7.3f} {x['tokens_per_sec']:13.0f} {x['speedup_vs_padded']:8.2f}x", flush=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--records", type=int, default=256, help="records of the LLaVA-665K-like epoch")
  ap.add_argument("--demo-batches", type=int, default=32,
                  help="padded batches of the demo mixture (a multiple of 16: packed covers the same records)")
  ap.add_argument("--out", default=None, help="the JSON to write (default: benchmarks/results/packing_<backend>.json)")
  ap.add_argument("--only", choices=("llava", "demo"), default=None, help="run one of the two comparisons")
  args = ap.parse_args()
  result = {}
  if args.only != "demo":
    result["llava_665k_like"] = llava_665k(args.records)
    table("llava_665k_like", result["llava_665k_like"])
  if args.only != "llava":
    result["demo"] = demo(args.demo_batches)
    table("demo", result["demo"])
  result["machine"] = machine()
  print("wrote", write_result(result, "packing", args.out))


if __name__ == "__main__":
  main()
