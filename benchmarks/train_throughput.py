"""Training throughput of the phase-II step: ModRWKV against the matched Transformer, in the same run.

ModRWKV: the paper's phase-II recipe, configs/modrwkv_0.4b_siglip2_phase2.py (SigLIP frozen; the vision
adapter and every RWKV-7 parameter trained; Adam(0.9, 0.99), clip 1.0; scanned, rematerialised blocks),
built by `trainer.Setup` into the jitted `training.step.make_train_step` step that train.py runs. On an
accelerator at the 0.4B shape (bf16, ctx 2048); on a CPU at a reduced shape of `benchmarks/matched.py`
(float32: XLA's CPU bf16 matmuls are emulated, and the CPU peak is a measured float32 one) and a shorter
context.

Transformer: the Flax decoder-only Transformer of the same D, L, V and parameter count (matched.py)
behind the same frozen encoder and trained adapter, trained by a step that mirrors `make_train_step`
(token-mean cross-entropy over the label positions, gradients of adapter + LM, the same optimizer built
from the same `config.optim`, the same non-finite guard), its blocks rematerialised like ModRWKV's.
Attention is `jax.nn.dot_product_attention(is_causal=True)`.

Rematerialisation: the recipe runs every block under `jax.checkpoint` (remat "block"), and so does
this benchmark on accelerators. On the CPU it runs without (--remat none, both systems alike): with
jaxlib 0.10.2, XLA:CPU stalls for good at a random step of the rematerialised ModRWKV step (d256,
batch 2 × 1024: all threads idle, the main one in block_until_ready; in 6 of 6 runs within 1–17
steps, also with --xla_cpu_multi_thread_eigen=false, --xla_cpu_experimental_ynn_fusion_type= or
synchronous dispatch; 30 steps without remat and 60 at d128 × batch 1 with it ran clean).

Both get the same batches: B rows of one image (576 tokens) then text to T positions, labels on the
text (no packing). Each step is timed alone after 2 warm-up steps (compile + one); the median is
reported. tokens/s counts every position (B·T per step, no padding); MFU = model FLOPs per step /
step time / peak. Model FLOPs: `training/flops.py` (`step_flops`) for ModRWKV; for the Transformer the
same rules (a trained part costs 3× its forward; attention products count 2× forward in backward; the
full T×T score matrix, as computed), encoder and adapter counted by the same functions. Peak: the
device's dense bf16 peak from `flops.peak_flops_per_device`, on a CPU the float32 matmul throughput
measured in this run (`flops.measure_cpu_matmul_flops`), so CPU MFU is an estimate.

  python benchmarks/train_throughput.py [--shape cpu-d256] [--context 1024] [--batch 2] [--steps 8]
      [--remat none|recipe] [--out PATH | --overwrite]

Writes benchmarks/results/train_throughput-<device>.json (under build/benchmarks/ when the committed
file exists, unless --overwrite or BENCH_OVERWRITE=1: benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import matched  # noqa: E402
from modrwkv_jax import peft  # noqa: E402
from modrwkv_jax.models import modrwkv  # noqa: E402
from modrwkv_jax.ops.wkv7 import resolve_impl  # noqa: E402
from modrwkv_jax.training import config as config_lib  # noqa: E402
from modrwkv_jax.training import flops, trainer  # noqa: E402
from modrwkv_jax.training import optimizer as optim_lib  # noqa: E402
from modrwkv_jax.training import step as step_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "configs", "modrwkv_0.4b_siglip2_phase2.py")


def recipe(shape: matched.Shape, batch: int, context: int, remat: str | None = None):
  """The phase-II config at `shape`: the recipe's model.rwkv preset with D, L, V, FFN and LoRA ranks of
  matched.modrwkv_config, its SigLIP with the shape's width and depth, batch and context as given;
  `remat` replaces the recipe's ("block") when given."""
  c = config_lib.load_config_file(RECIPE)
  if remat is not None:
    c.model.rwkv.remat = remat
  lm = matched.modrwkv_config(shape, context).rwkv
  for k in ("vocab_size", "n_layer", "n_embd", "dim_ffn", "dim_w", "dim_a", "dim_v", "dim_g", "dtype"):
    c.model.rwkv[k] = getattr(lm, k)
  enc = c.model.modalities.image.encoder_config
  enc.update(hidden_size=shape.encoder_width, intermediate_size=4 * shape.encoder_width,
             num_layers=shape.encoder_layers, num_heads=shape.encoder_width // matched.HEAD_SIZE, dtype=shape.dtype)
  c.model.max_length = context
  c.data.max_length = context
  c.train.batch_size = batch
  c.train.grad_accum = 1
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
  return c


def make_batch(model: modrwkv.ModRWKVConfig, batch: int, context: int, seed: int = 0) -> dict:
  """Rows of one image then text; labels = the next text token (−100 on the image and the last position)."""
  b = matched.modrwkv_batch(model, context, batch, seed)
  labels = np.full_like(b["tokens"], modrwkv.IGNORE)
  L = model.modality("image").encoder_config.num_positions
  labels[:, L:-1] = b["tokens"][:, L + 1:]
  return b | {"labels": labels}


# ---------------------------------------------------------------------------------------------
# The Transformer's phase-II step (mirrors training/step.py).

def transformer_train_step(mconfig, tconfig: matched.TransformerConfig, optimizer: optax.GradientTransformation):
  """state, batch -> (state, metrics); trainable {"lm", "projectors"}, frozen {"encoders"}."""

  def loss(trainable, frozen, batch):
    parts = {"encoders": frozen["encoders"], "projectors": trainable["projectors"]}
    x = matched.transformer_inputs(mconfig, tconfig, parts, trainable["lm"], batch)
    logits = matched.transformer_forward(tconfig, trainable["lm"], x)
    labels = jnp.asarray(batch["labels"], jnp.int32)
    valid = labels >= 0
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    count = valid.sum()
    return jnp.where(valid, nll, 0.0).sum() / jnp.maximum(count, 1), count

  grad_fn = jax.value_and_grad(loss, has_aux=True)

  def step(state, batch):
    trainable = state["trainable"]
    (value, count), grads = grad_fn(trainable, state["frozen"], batch)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state["opt_state"], trainable)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = dict(state, step=state["step"] + 1, trainable=keep(optax.apply_updates(trainable, updates), trainable),
                     opt_state=keep(opt_state, state["opt_state"]))
    return new_state, {"loss": value, "tokens": count, "grad_norm": grad_norm}

  return step


def transformer_step_flops(mconfig, tconfig: matched.TransformerConfig, B: int, T: int) -> float:
  """Model FLOPs of one Transformer phase-II step by the rules of flops.step_flops: the frozen encoder
  forward only; the trained adapter and LM forward + activation gradient (weight + 2·interaction) +
  weight gradient; attention as the full T×T (QKᵀ and PV: 2·2·T²·D per layer and row)."""
  m = mconfig.modality("image")
  enc, enc_length = flops.encoder_parts(m, B, None)
  adapter = flops.projector_forward_flops(m.projector, B, enc_length)
  D, L, F, V = tconfig.n_embd, tconfig.n_layer, tconfig.mlp_dim, tconfig.vocab_size
  tokens = B * T
  weight = L * 2 * tokens * (4 * D * D + 3 * D * F) + 2 * tokens * D * V
  interaction = L * 2 * 2 * B * T * T * D
  trained = lambda w, i: (w + i) + (w + 2 * i) + w
  return enc.total + trained(adapter, 0) + trained(weight, interaction)


# ---------------------------------------------------------------------------------------------
# Timing.

def time_steps(step, state, batch, steps: int):
  """(median seconds per step, all step times, final state): 2 untimed warm-up steps first."""
  for _ in range(2):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  return common.median(times), times, state, metrics


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  accel = jax.default_backend() != "cpu"
  ap.add_argument("--shape", default="0.4B" if accel else "cpu-d256", choices=list(matched.SHAPES))
  ap.add_argument("--context", type=int, default=2048 if accel else 1024, help="positions per row")
  ap.add_argument("--batch", type=int, default=8 if accel else 2, help="rows per step")
  ap.add_argument("--steps", type=int, default=8, help="timed steps per system (median)")
  ap.add_argument("--remat", default="recipe" if accel else "none",
                  help="the blocks' rematerialisation: 'recipe' keeps the config's ('block'); on a CPU the default "
                       "is 'none' (module docstring: XLA:CPU hangs)")
  common.add_output_args(ap)
  args = ap.parse_args(argv)
  start, load_at_start = time.perf_counter(), os.getloadavg()[0]
  shape = matched.SHAPES[args.shape]
  B, T = args.batch, args.context

  # ModRWKV: the recipe's own step, as train.py builds it.
  config = recipe(shape, B, T, None if args.remat == "recipe" else args.remat)
  mesh = trainer.make_mesh(config)
  setup = trainer.Setup(config, mesh)
  mconfig = setup.model
  params = modrwkv.init_params(mconfig, jax.random.key(0), mesh=mesh)
  batch = jax.device_put(step_lib.model_batch(make_batch(mconfig, B, T)))
  parts = trainer._trainable_parts(setup, mconfig)  # pylint: disable=protected-access
  rows = {}
  step, _ = setup.jit_step()
  state = setup.init_state(params)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  seconds, times, _, metrics = time_steps(compiled, state, batch, args.steps)
  model_flops = flops.step_flops(mconfig, {"B": B, "T": T, "image": (1, None)}, parts)["total"]
  counts = setup.counts()
  rows["modrwkv"] = {"seconds_per_step": seconds, "step_times_s": times, "compile_s": compile_s,
                     "model_flops_per_step": model_flops, "loss": float(metrics["loss"]),
                     "trainable_parameters": sum(t for _, t in counts.values()),
                     "parameters": sum(n for n, _ in counts.values())}
  print(f"modrwkv    : {seconds:.3f} s/step (median of {args.steps}), compile {compile_s:.0f} s", flush=True)
  del compiled

  # The Transformer: same frozen encoder and adapter init, same optimizer config, remat like ModRWKV.
  tconfig = matched.transformer_config(mconfig, remat=mconfig.rwkv.remat != "none")
  trainable = {"lm": matched.init_transformer(tconfig, jax.random.key(1)), "projectors": params["projectors"]}
  frozen = {"encoders": params["encoders"]}
  optimizer = optim_lib.make_optimizer(config.optim, config.train.steps, trainable, {})
  tstep = jax.jit(transformer_train_step(mconfig, tconfig, optimizer), donate_argnums=0)
  state = step_lib.init_state(*jax.tree.map(jnp.copy, (trainable, frozen)), optimizer, config.seed)
  t0 = time.perf_counter()
  compiled = tstep.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  seconds, times, _, metrics = time_steps(compiled, state, batch, args.steps)
  rows["transformer"] = {"seconds_per_step": seconds, "step_times_s": times, "compile_s": compile_s,
                         "model_flops_per_step": transformer_step_flops(mconfig, tconfig, B, T),
                         "loss": float(metrics["loss"]),
                         "trainable_parameters": peft.count_params(trainable),
                         "parameters": peft.count_params(trainable) + peft.count_params(frozen)}
  print(f"transformer: {seconds:.3f} s/step (median of {args.steps}), compile {compile_s:.0f} s", flush=True)

  device = jax.devices()[0]
  peak = flops.peak_flops_per_device(device) or flops.measure_cpu_matmul_flops()
  for row in rows.values():
    row["tokens_per_s"] = B * T / row["seconds_per_step"]
    row["model_flops_per_s"] = row["model_flops_per_step"] / row["seconds_per_step"]
    row["mfu"] = flops.mfu(row["model_flops_per_step"], row["seconds_per_step"], 1, peak)
  result = {
      "benchmark": "train_throughput", "machine": common.machine(), "recipe": os.path.relpath(RECIPE, ROOT),
      "shape": vars(shape), "batch_size": B, "context": T, "image_tokens": shape.image_tokens,
      "tokens_per_step": B * T, "steps_timed": args.steps, "statistic": "median step time after 2 warm-up steps",
      "trainable": parts, "rwkv_scan_layers": mconfig.rwkv.scan_layers, "remat": mconfig.rwkv.remat,
      "wkv_impl": resolve_impl(mconfig.rwkv.wkv_impl),
      "transformer_config": vars(tconfig), "peak_flops_per_device": peak,
      "peak_is_measured_cpu_matmul": device.platform == "cpu", "results": rows,
      "modrwkv_over_transformer_tokens_per_s": rows["modrwkv"]["tokens_per_s"] / rows["transformer"]["tokens_per_s"],
      "elapsed_s": time.perf_counter() - start,
  }
  result["machine"]["load_average_1m_at_start"] = load_at_start
  print(f"\nphase-II train step, {shape.name} (D {shape.width}, L {shape.layers}, V {shape.vocab}, {shape.dtype}), "
        f"batch {B} × {T} ({shape.image_tokens} image tokens + text), {device.platform}")
  print(f"{'system':<12}{'s/step':>9}{'tokens/s':>10}{'GFLOP/step':>12}{'MFU':>7}{'params M':>10}")
  for name, r in rows.items():
    print(f"{name:<12}{r['seconds_per_step']:9.3f}{r['tokens_per_s']:10.0f}{r['model_flops_per_step'] / 1e9:12.1f}"
          f"{r['mfu']:7.3f}{r['parameters'] / 1e6:10.2f}")
  print(f"ModRWKV / Transformer tokens/s: {result['modrwkv_over_transformer_tokens_per_s']:.2f}x "
        f"(MFU against {'the measured fp32 matmul' if device.platform == 'cpu' else 'the bf16 peak'}: "
        f"{peak / 1e9:.1f} GFLOP/s)")
  path = common.write_json(result, common.output_path(f"train_throughput-{common.device_tag()}.json", args.out,
                                                      args.overwrite))
  print(f"-> {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
