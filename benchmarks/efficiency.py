"""Inference cost against context length: ModRWKV beside a matched Transformer (Flax) and HF LLaVA (PyTorch).

For contexts of 1k to 32k positions (one image's 576 tokens, then text), batch 1, the same dtype, one
process:

  prefill_s            the prompt (image encoder + adapter + LM) up to the first generated token; median of
                       repeated runs (`common.timed_runs`); the three systems in turn at each context.
  decode_ms_per_token  median over 64 generated tokens, each timed alone (greedy: the argmax is fed back).
                       Every system keeps its state (RNN state or KV cache) of every context, and the
                       tokens are timed round robin in blocks of 8 per (system, context): all decode numbers
                       come from the same minutes of the shared machine, so the 1k-vs-32k comparison is
                       not a comparison of two different loads.
  peak_bytes           the most memory held during prefill or a decode step (the larger), see below.

ModRWKV also reads the prompt in 4k pieces with its state carried (`modrwkv_prefill_in_pieces`): an
RNN's prefill memory need not grow with the context, a KV cache's must.

Systems (benchmarks/matched.py builds all three to one shape):
  modrwkv      this project: `modrwkv.embed_inputs` + `rwkv7.forward` (WKV impl "auto") for the prompt, then
               the jitted `generate.decode_step`. The prompt keeps the hidden states and projects only the
               last position to logits, as Hugging Face's generate does (`logits_to_keep=1`).
  transformer  the decoder-only Llama-style Transformer of the same D, L, V and parameter count in Flax,
               behind ModRWKV's own encoder and adapter, with a preallocated KV cache.
  llava        Hugging Face LlavaForConditionalGeneration (PyTorch, SDPA attention, its default
               DynamicCache) from a config of the same sizes, random weights.

Peak memory, per framework (the JSON's `memory_method`):
  JAX          XLA's compiled memory analysis of each program: arguments (params, inputs, state or KV
               cache) + outputs + temporaries − donated (aliased) bytes.
  PyTorch      the same terms counted by hand: bytes of the params and inputs (prefill) or params and
               cache (decode) + the peak of the allocations made during the call, from the PyTorch
               profiler's memory events (profile_memory=True, a warm-up call that is not timed).

Sizes: on an accelerator the paper's 0.4B shape (D 1024, L 24, V 65536, SigLIP2-B/16-384, bf16); on a CPU
`--shape auto` picks the largest reduced shape (matched.SHAPES) whose estimated run time (a FLOP model
against the matmul throughput measured at start) fits `--budget-s`. The JSON records the shape, the
parameter counts, the estimate and the time the run took.

Threads: PyTorch is run with OMP_WAIT_POLICY=PASSIVE (set here unless already set): on a shared, busy
CPU its OpenMP threads otherwise spin-wait and a 1k prefill takes 10× longer (measured: 4 s against
0.3 s), which would measure the machine's other jobs, not LLaVA.

  python benchmarks/efficiency.py [--shape auto] [--contexts 1024 2048 4096 8192 16384 32768]
      [--decode 64] [--budget-s 600] [--out PATH | --overwrite]

Writes benchmarks/results/efficiency-<device>.json and .png (under build/benchmarks/ when the committed
file exists, unless --overwrite or BENCH_OVERWRITE=1: benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime (docstring)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import matched  # noqa: E402
from modrwkv_jax import generate  # noqa: E402
from modrwkv_jax.models import modrwkv, rwkv7  # noqa: E402
from modrwkv_jax.ops.wkv7 import resolve_impl  # noqa: E402
from modrwkv_jax.training import flops  # noqa: E402

CONTEXTS = (1024, 2048, 4096, 8192, 16384, 32768)
SYSTEMS = ("modrwkv", "transformer", "llava")
DECODE_BLOCK = 8  # consecutive decode tokens of one system and context between switches


# ---------------------------------------------------------------------------------------------
# Sizes.

def estimate_seconds(shape: matched.Shape, contexts, decode: int, flops_per_s: float) -> float:
  """A rough run time of the whole benchmark at `shape`: prefill FLOPs of the three systems (the
  Transformers' causal attention 2·T²·D per layer; ModRWKV's WKV as ~100·N FLOPs per channel and token,
  its measured CPU cost) at ~3 runs each and 70 % of the matmul throughput (what the blocked attention
  reaches on this CPU), decode as memory traffic,
  plus ~8 s of compilation per compiled program. Only used to pick a shape; the JSON keeps the real time."""
  D, L = shape.width, shape.layers
  block = 12 * D * D  # per layer and token, both kinds of LM (matched parameter count)
  enc = 2 * shape.image_tokens * 12 * shape.encoder_width ** 2 * shape.encoder_layers
  total = 0.0
  for T in contexts:
    lm = 2 * T * L * block + enc
    attention = 2 * T * T * D * L
    wkv = 100 * matched.HEAD_SIZE * D * L * T
    total += 3 * ((lm + wkv) + 2 * (lm + attention)) / (0.7 * flops_per_s)
    cache_bytes = 2 * L * (T + 128) * D * 4
    total += (decode + 1) * 2 * cache_bytes * 2 / 5e9  # two Transformers, ~5 GB/s on a busy CPU
  programs = 3 * len(contexts) + 2  # prefill ×2 and the Transformer's decode per context; ModRWKV's decode
  return total + 8.0 * programs + 60.0  # + init


def pick_shape(name: str, contexts, decode: int, budget_s: float) -> tuple[matched.Shape, dict]:
  """The shape to run and how it was chosen (for the JSON)."""
  if name != "auto":
    return matched.SHAPES[name], {"rule": f"--shape {name}"}
  if jax.default_backend() != "cpu":
    return matched.SHAPES["0.4B"], {"rule": "accelerator: the paper's 0.4B shape"}
  peak = flops.measure_cpu_matmul_flops()
  candidates = [s for s in matched.SHAPES.values() if s.name.startswith("cpu-")]
  estimates = {s.name: estimate_seconds(s, contexts, decode, peak) for s in candidates}
  fits = [s for s in candidates if estimates[s.name] <= budget_s]
  shape = fits[0] if fits else candidates[-1]
  return shape, {"rule": f"largest CPU shape whose estimated run time fits --budget-s {budget_s:g}",
                 "measured_matmul_flops": peak, "estimated_seconds": estimates}


# ---------------------------------------------------------------------------------------------
# Measurement helpers.

def compiled_bytes(compiled) -> int:
  """XLA's memory analysis of a compiled program: arguments + outputs + temporaries − aliased."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def aot(fn, *args):
  """(compiled program, compile seconds) of jitted `fn` at these arguments."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def torch_peak_alloc(fn):
  """(fn's result, peak bytes allocated during fn above what was allocated before, seconds): the running
  sum of the PyTorch profiler's memory events (allocations +, frees −) over the call."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.profiler import ProfilerActivity, profile  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
    out = fn()
  seconds = time.perf_counter() - t0
  events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
  running = peak = 0
  for _, nbytes in events:
    running += nbytes
    peak = max(peak, running)
  del torch
  return out, peak, seconds


def tree_bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def decode_times(step, n: int) -> list[float]:
  """Seconds of n calls of step() (each blocks until its token is ready)."""
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return times


# ---------------------------------------------------------------------------------------------
# The systems. `prefill(context)` times the prompt and returns (row, decoder); the decoder's `step()`
# generates one token (blocking) and `finish()` returns the decode half of the row. main() times the
# steps of all systems and contexts interleaved (module docstring).

class ModRWKV:
  def __init__(self, config: modrwkv.ModRWKVConfig, params):
    self.config, self.params = config, params
    lm = config.rwkv

    def prefill(params, batch):
      x, _, _ = modrwkv.embed_inputs(config, params, batch)
      h, state = rwkv7.forward(lm, params["rwkv"], embeddings=x, hidden=True)
      logits = jnp.dot(h[:, -1].astype(lm.compute_dtype), params["rwkv"]["head"]["kernel"].astype(lm.compute_dtype),
                       preferred_element_type=jnp.float32)
      return jnp.argmax(logits, -1).astype(jnp.int32), state

    def step(params, token, state):
      logits, state = generate.decode_step(lm, params, token, state, jnp.zeros(token.shape, bool))
      return jnp.argmax(logits, -1).astype(jnp.int32), state

    self.prefill_fn, self.step_fn = jax.jit(prefill), jax.jit(step)
    self.step_compiled, self.step_compile_s = None, 0.0

  def prefill(self, context: int, timing: dict):
    batch = jax.device_put(matched.modrwkv_batch(self.config, context))
    prefill, compile_s = aot(self.prefill_fn, self.params, batch)
    out = {}

    def run():
      out["state"] = jax.block_until_ready(prefill(self.params, batch))

    times = common.timed_runs(run, **timing)
    token, rnn = out["state"]
    step_compile_s = 0.0
    if self.step_compiled is None:  # one program for every context: the state has a fixed size
      self.step_compiled, step_compile_s = aot(self.step_fn, self.params["rwkv"], token, rnn)
    carry = [token, rnn]
    params = self.params["rwkv"]

    def step():
      carry[0], carry[1] = jax.block_until_ready(self.step_compiled(params, carry[0], carry[1]))

    step()  # warm-up
    decode_bytes = compiled_bytes(self.step_compiled)
    row = {"prefill_s": common.median(times), "prefill_runs_s": times, "prefill_peak_bytes": compiled_bytes(prefill),
           "decode_peak_bytes": decode_bytes, "state_bytes": tree_bytes(rnn),
           "compile_s": {"prefill": compile_s, "decode_step": step_compile_s}}
    return row, step


class ModRWKVPieces:
  """ModRWKV reading the prompt in pieces of `piece` positions, the state carried between them
  (`rwkv7.forward(..., state)`; the first piece holds the image): what an RNN allows and a KV cache does
  not. Prefill memory is then one piece's, whatever the context. Contexts up to one piece are skipped."""

  def __init__(self, config: modrwkv.ModRWKVConfig, params, piece: int):
    self.config, self.params, self.piece = config, params, piece
    lm = config.rwkv

    def last_token(params, h):
      logits = jnp.dot(h[:, -1].astype(lm.compute_dtype), params["head"]["kernel"].astype(lm.compute_dtype),
                       preferred_element_type=jnp.float32)
      return jnp.argmax(logits, -1).astype(jnp.int32)

    def first(params, batch):
      x, _, _ = modrwkv.embed_inputs(config, params, batch)
      h, state = rwkv7.forward(lm, params["rwkv"], embeddings=x, hidden=True)
      return last_token(params["rwkv"], h), state

    def rest(params, tokens, state):
      h, state = rwkv7.forward(lm, params, tokens, state, hidden=True)
      return last_token(params, h), state

    self.first_fn, self.rest_fn = jax.jit(first), jax.jit(rest)
    self.programs = None

  def prefill(self, context: int, timing: dict):
    P = self.piece
    if context <= P or context % P:
      return None
    full = matched.modrwkv_batch(self.config, context)
    head = {k: (v[:, :P] if k != "image" else v) for k, v in full.items()}
    pieces = [jnp.asarray(full["tokens"][:, i:i + P]) for i in range(P, context, P)]
    head = jax.device_put(head)
    compile_s = 0.0
    if self.programs is None:  # two programs for every context
      first, c1 = aot(self.first_fn, self.params, head)
      _, state = first(self.params, head)
      rest, c2 = aot(self.rest_fn, self.params["rwkv"], pieces[0], state)
      self.programs, compile_s = (first, rest), c1 + c2
    first, rest = self.programs

    def run():
      _, state = first(self.params, head)
      for tokens in pieces:
        token, state = rest(self.params["rwkv"], tokens, state)
      jax.block_until_ready((token, state))

    times = common.timed_runs(run, **timing)
    prefill_bytes = max(compiled_bytes(first), compiled_bytes(rest))
    return {"piece": P, "prefill_s": common.median(times), "prefill_runs_s": times,
            "prefill_peak_bytes": prefill_bytes, "compile_s": {"prefill": compile_s}}


class Transformer:
  def __init__(self, mconfig: modrwkv.ModRWKVConfig, mparams, tconfig: matched.TransformerConfig, tparams):
    self.mconfig, self.tconfig, self.tparams = mconfig, tconfig, tparams
    # The image tokens are ModRWKV's encoder and adapter: only their params go in (not RWKV-7's).
    self.enc = {"encoders": mparams["encoders"], "projectors": mparams["projectors"]}

    def prefill(tparams, mparams, batch, cache_length):
      x = matched.transformer_inputs(mconfig, tconfig, mparams, tparams, batch)
      logits, cache = matched.transformer_prefill(tconfig, tparams, x, cache_length)
      return jnp.argmax(logits, -1).astype(jnp.int32), cache

    def step(tparams, token, cache, position):
      logits, entries = matched.transformer_decode(tconfig, tparams, token, cache, position)
      return jnp.argmax(logits, -1).astype(jnp.int32), entries

    self.prefill_fn = jax.jit(prefill, static_argnums=3)
    self.step_fn = jax.jit(step)
    self.write_fn = jax.jit(matched.write_cache, donate_argnums=0)

  def prefill(self, context: int, timing: dict, decode: int):
    batch = jax.device_put(matched.modrwkv_batch(self.mconfig, context))
    length = context + 128 * math.ceil((decode + 2) / 128)
    prefill, compile_s = aot(self.prefill_fn, self.tparams, self.enc, batch, length)
    out = {}

    def run():
      out["state"] = jax.block_until_ready(prefill(self.tparams, self.enc, batch))

    times = common.timed_runs(run, **timing)
    token, cache = out.pop("state")
    position = jnp.int32(context)
    step_fn, step_compile_s = aot(self.step_fn, self.tparams, token, cache, position)
    _, entries = step_fn(self.tparams, token, cache, position)
    write_fn, write_compile_s = aot(self.write_fn, cache, entries, position)
    carry = [token, cache, context]

    def step():
      pos = jnp.int32(carry[2])
      token, entries = step_fn(self.tparams, carry[0], carry[1], pos)
      carry[0], carry[1], carry[2] = token, write_fn(carry[1], entries, pos), carry[2] + 1
      jax.block_until_ready((carry[0], carry[1]))

    step()  # warm-up
    row = {"prefill_s": common.median(times), "prefill_runs_s": times, "prefill_peak_bytes": compiled_bytes(prefill),
           "decode_peak_bytes": max(compiled_bytes(step_fn), compiled_bytes(write_fn)),  # run one after the other
           "kv_cache_bytes": tree_bytes(cache), "kv_cache_positions": length,
           "compile_s": {"prefill": compile_s, "decode_step": step_compile_s + write_compile_s}}
    return row, step


class Llava:
  def __init__(self, shape: matched.Shape, tconfig: matched.TransformerConfig, mconfig, max_positions: int):
    import torch  # pylint: disable=g-import-not-at-top
    self.torch = torch
    self.model = matched.llava_model(shape, tconfig, max_positions)
    self.mconfig, self.image_token = mconfig, tconfig.vocab_size - 1
    self.param_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())

  def prefill(self, context: int, timing: dict):
    torch, model = self.torch, self.model
    ids, pixels = matched.llava_inputs(matched.modrwkv_batch(self.mconfig, context), self.image_token)
    input_bytes = ids.numel() * ids.element_size() + pixels.numel() * pixels.element_size()
    out = {}

    def run():
      out["state"] = model(input_ids=ids, pixel_values=pixels, use_cache=True, logits_to_keep=1)

    with torch.inference_mode():
      _, prefill_alloc, first = torch_peak_alloc(run)  # the warm-up, profiled for memory
      times = common.timed_runs(run, first=first, **timing)
      o = out.pop("state")
      carry = [o.logits[:, -1].argmax(-1), o.cache]
      del o
      cache_bytes = sum(t.numel() * t.element_size() for layer in carry[1].layers for t in (layer.keys, layer.values))

      def step():
        with torch.inference_mode():
          o = model(input_ids=carry[0][:, None], cache=carry[1], use_cache=True, logits_to_keep=1)
          carry[0], carry[1] = o.logits[:, -1].argmax(-1), o.cache

      _, step_alloc, _ = torch_peak_alloc(step)  # warm-up, profiled for memory
    row = {"prefill_s": common.median(times), "prefill_runs_s": times,
           "prefill_peak_bytes": self.param_bytes + input_bytes + prefill_alloc,
           "decode_peak_bytes": self.param_bytes + cache_bytes + step_alloc, "kv_cache_bytes": cache_bytes}
    return row, step


# ---------------------------------------------------------------------------------------------
# Derived numbers.

def crossover(contexts, ours, theirs) -> dict:
  """Where ModRWKV's prefill becomes faster: the smallest measured context from which it is faster at
  every larger one, and the log-log interpolated crossing of the time ratio (None if not bracketed)."""
  faster = [o < t for o, t in zip(ours, theirs)]
  measured = next((c for i, c in enumerate(contexts) if all(faster[i:])), None)
  interpolated = None
  if measured is not None and measured != contexts[0]:
    i = contexts.index(measured)
    c0, c1 = contexts[i - 1], contexts[i]
    r0, r1 = math.log(ours[i - 1] / theirs[i - 1]), math.log(ours[i] / theirs[i])  # r0 >= 0 > r1
    interpolated = math.exp(math.log(c0) + (math.log(c1) - math.log(c0)) * r0 / (r0 - r1))
  return {"faster_from_context": measured, "interpolated_context": interpolated,
          "faster_at_every_context": all(faster)}


def derive(contexts, rows) -> dict:
  """Ratios against ModRWKV per context, the issue's targets, and the prefill crossovers."""
  get = lambda system, key: [rows[system][str(c)][key] for c in contexts]
  out = {"per_context": {}}
  for c in contexts:
    base = rows["modrwkv"][str(c)]
    out["per_context"][str(c)] = {
        f"{other}_over_modrwkv": {k: rows[other][str(c)][k] / base[k]
                                  for k in ("prefill_s", "decode_ms_per_token", "peak_bytes", "decode_peak_bytes")}
        for other in SYSTEMS[1:] if other in rows}
  lo, hi = str(contexts[0]), str(contexts[-1])
  m = rows["modrwkv"]
  out["modrwkv_decode_ms_last_over_first"] = m[hi]["decode_ms_per_token"] / m[lo]["decode_ms_per_token"]
  out["modrwkv_decode_peak_bytes_last_over_first"] = m[hi]["decode_peak_bytes"] / m[lo]["decode_peak_bytes"]
  out["modrwkv_peak_bytes_last_over_first"] = m[hi]["peak_bytes"] / m[lo]["peak_bytes"]
  for other in SYSTEMS[1:]:
    if other in rows:
      out[f"prefill_crossover_vs_{other}"] = crossover(list(contexts), get("modrwkv", "prefill_s"), get(other, "prefill_s"))
      out[f"{other}_decode_ms_last_over_first"] = (rows[other][hi]["decode_ms_per_token"]
                                                   / rows[other][lo]["decode_ms_per_token"])
  out["targets"] = {
      "decode_last_within_1.10x_of_first": out["modrwkv_decode_ms_last_over_first"] <= 1.10,
      "decode_memory_flat": out["modrwkv_decode_peak_bytes_last_over_first"] <= 1.01,
      "decodes_faster_than_both_at_last": all(m[hi]["decode_ms_per_token"] < rows[o][hi]["decode_ms_per_token"]
                                              for o in SYSTEMS[1:] if o in rows),
  }
  return out


def plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  contexts = result["contexts"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
  panels = [("prefill_s", "prefill (s)", 1.0), ("decode_ms_per_token", "decode (ms / token, median of "
            f"{result['decode_tokens']})", 1.0), ("peak_bytes", "peak memory (MiB)", 2 ** -20)]
  styles = {"modrwkv": ("ModRWKV (RWKV-7, JAX)", "C0", "o"), "transformer": ("Transformer + KV cache (Flax)", "C1", "s"),
            "llava": ("HF LLaVA (PyTorch)", "C2", "^")}
  for ax, (key, label, scale) in zip(axes, panels):
    for system, rows in result["results"].items():
      name, color, marker = styles[system]
      ys = [rows[str(c)][key] * scale for c in contexts]
      ax.plot(contexts, ys, marker=marker, color=color, label=name)
      if key == "peak_bytes":
        ax.plot(contexts, [rows[str(c)]["decode_peak_bytes"] * scale for c in contexts], ls="--", color=color,
                marker=marker, mfc="none", label=f"{name}: decode step")
    pieces = result.get("modrwkv_prefill_in_pieces") or {}
    if pieces and key in ("prefill_s", "peak_bytes"):
      cs = [c for c in contexts if str(c) in pieces]
      field = "prefill_s" if key == "prefill_s" else "prefill_peak_bytes"
      ax.plot(cs, [pieces[str(c)][field] * scale for c in cs], ls=":", color="C0", marker="o", mfc="none",
              label=f"ModRWKV: prompt in {pieces[str(cs[0])]['piece'] // 1024}k pieces")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(contexts, [f"{c // 1024}k" for c in contexts])
    ax.set_xlabel("context (576 image tokens + text)")
    ax.set_title(label)
    ax.grid(True, which="both", alpha=0.3)
  axes[2].legend(fontsize=7)
  s = result["shape"]
  fig.suptitle(f"{result['machine']['device']} ({result['machine']['cpus']} cpus), batch 1, {s['dtype']}: "
               f"D {s['width']}, L {s['layers']}, V {s['vocab']}, SigLIP {s['encoder_width']}×{s['encoder_layers']}",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def print_table(result: dict) -> None:
  contexts, rows = result["contexts"], result["results"]
  print(f"\n{'context':>8} | " + " | ".join(f"{s:^31}" for s in rows))
  print(f"{'':>8} | " + " | ".join(f"{'prefill s':>9} {'ms/tok':>8} {'peak MiB':>10}" for _ in rows))
  for c in contexts:
    cells = [f"{r[str(c)]['prefill_s']:9.3f} {r[str(c)]['decode_ms_per_token']:8.2f} "
             f"{r[str(c)]['peak_bytes'] / 2 ** 20:10.1f}" for r in rows.values()]
    print(f"{c:>8} | " + " | ".join(cells))
  d = result["derived"]
  last = str(contexts[-1])
  print(f"\nModRWKV decode {last} / {contexts[0]}: {d['modrwkv_decode_ms_last_over_first']:.3f}x "
        f"(target <= 1.10), decode-step memory {d['modrwkv_decode_peak_bytes_last_over_first']:.3f}x")
  pieces = result.get("modrwkv_prefill_in_pieces") or {}
  for c, row in pieces.items():
    print(f"ModRWKV, prompt in {row['piece']}-position pieces, {c}: prefill {row['prefill_s']:.3f} s, "
          f"peak {row['prefill_peak_bytes'] / 2**20:.1f} MiB")
  for other in SYSTEMS[1:]:
    if other in rows:
      r = d["per_context"][last][f"{other}_over_modrwkv"]
      x = d[f"prefill_crossover_vs_{other}"]
      print(f"at {last}: {other} / ModRWKV: prefill {r['prefill_s']:.2f}x, decode {r['decode_ms_per_token']:.2f}x, "
            f"peak memory {r['peak_bytes']:.2f}x; ModRWKV prefill faster from {x['faster_from_context']} "
            f"(interpolated {x['interpolated_context'] and round(x['interpolated_context'])})")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--shape", default="auto", choices=["auto", *matched.SHAPES])
  ap.add_argument("--contexts", type=int, nargs="+", default=list(CONTEXTS))
  ap.add_argument("--decode", type=int, default=64, help="decode tokens timed per context (median)")
  ap.add_argument("--budget-s", type=float, default=600.0, help="run-time budget that --shape auto fits")
  ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
  ap.add_argument("--max-runs", type=int, default=5, help="prefill runs at most (median); at least 2")
  ap.add_argument("--run-seconds", type=float, default=8.0, help="stop repeating a prefill after this long")
  ap.add_argument("--prefill-piece", type=int, default=4096,
                  help="also time ModRWKV reading the prompt in pieces of this many positions (0: off)")
  common.add_output_args(ap)
  args = ap.parse_args(argv)
  if "modrwkv" not in args.systems:
    ap.error("--systems must include modrwkv (every ratio is against it)")
  start, load_at_start = time.perf_counter(), os.getloadavg()[0]
  contexts = sorted(args.contexts)
  shape, choice = pick_shape(args.shape, contexts, args.decode, args.budget_s)
  timing = {"min_runs": min(2, args.max_runs), "max_runs": args.max_runs, "max_seconds": args.run_seconds}
  print(f"shape {shape.name}: D {shape.width}, L {shape.layers}, V {shape.vocab}, {shape.dtype} "
        f"({choice['rule']})", flush=True)

  mconfig = matched.modrwkv_config(shape, contexts[-1])
  tconfig = matched.transformer_config(mconfig)
  mparams = modrwkv.init_params(mconfig, jax.random.key(0))
  tparams = matched.init_transformer(tconfig, jax.random.key(1))
  systems = {"modrwkv": ModRWKV(mconfig, mparams)}
  if "transformer" in args.systems:
    systems["transformer"] = Transformer(mconfig, mparams, tconfig, tparams)
  if "llava" in args.systems:
    systems["llava"] = Llava(shape, tconfig, mconfig, contexts[-1] + 256)
  params = {"modrwkv_lm": matched.count(mparams["rwkv"]), "transformer_lm": matched.count(tparams),
            "image_encoder": matched.count(mparams["encoders"]), "image_adapter": matched.count(mparams["projectors"])}
  if "llava" in systems:
    m = systems["llava"].model
    params["llava_lm"] = sum(p.numel() for p in m.model.language_model.parameters()) + m.lm_head.weight.numel()
    params["llava_vision"] = sum(p.numel() for p in m.model.vision_tower.parameters())
    params["llava_projector"] = sum(p.numel() for p in m.model.multi_modal_projector.parameters())
  print("parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in params.items()), flush=True)

  rows = {name: {} for name in systems}
  pieces = ModRWKVPieces(mconfig, mparams, args.prefill_piece) if args.prefill_piece else None
  piece_rows = {}
  decoders = {}
  for c in contexts:
    if pieces is not None and (row := pieces.prefill(c, timing)) is not None:
      piece_rows[str(c)] = row
      print(f"{'modrwkv ' + str(args.prefill_piece // 1024) + 'k pieces':>11} {c:>6}: prefill {row['prefill_s']:8.3f} s "
            f"({len(row['prefill_runs_s'])} runs), peak {row['prefill_peak_bytes'] / 2**20:.1f} MiB", flush=True)
    for name, system in systems.items():
      t0 = time.perf_counter()
      extra = {"decode": args.decode} if name == "transformer" else {}
      rows[name][str(c)], decoders[name, c] = system.prefill(c, timing, **extra)
      row = rows[name][str(c)]
      row["prefill_wall_s"] = time.perf_counter() - t0
      print(f"{name:>11} {c:>6}: prefill {row['prefill_s']:8.3f} s ({len(row['prefill_runs_s'])} runs) "
            f"[{row['prefill_wall_s']:.0f} s with compilation]", flush=True)
  # Decoding, interleaved: blocks of DECODE_BLOCK consecutive tokens per system and context, round robin,
  # so that every context of every system is timed in the same minutes of the shared machine.
  t0 = time.perf_counter()
  steps = {key: [] for key in decoders}
  for _ in range(math.ceil(args.decode / DECODE_BLOCK)):
    for key, step in decoders.items():
      steps[key] += decode_times(step, min(DECODE_BLOCK, args.decode - len(steps[key])))
  for (name, c), times in steps.items():
    row = rows[name][str(c)]
    row.update(decode_ms_per_token=1e3 * common.median(times), decode_ms_min=1e3 * min(times),
               decode_ms_p90=1e3 * float(np.percentile(times, 90)), peak_bytes=max(row["prefill_peak_bytes"],
                                                                                row["decode_peak_bytes"]))
  print(f"decoding: {args.decode} tokens × {len(decoders)} (system, context) pairs, interleaved "
        f"[{time.perf_counter() - t0:.0f} s]", flush=True)
  del decoders

  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  result = {
      "benchmark": "efficiency", "machine": common.machine(), "shape": vars(shape) | {"image_tokens": shape.image_tokens},
      "shape_choice": choice, "contexts": contexts, "batch_size": 1, "decode_tokens": args.decode,
      "prefill_timing": timing | {"statistic": "median"},
      "decode_timing": {"statistic": "median over the timed tokens", "interleaved_blocks_of": DECODE_BLOCK},
      "wkv_impl": {"prefill": resolve_impl(mconfig.rwkv.wkv_impl), "decode": "reference (T = 1)"},
      "modrwkv_rwkv_config": {k: getattr(mconfig.rwkv, k) for k in ("n_layer", "n_embd", "head_size", "vocab_size",
                                                                       "dim_w", "dim_a", "dim_v", "dim_g", "dim_ffn")},
      "transformer_config": vars(tconfig) | {"n_head": tconfig.n_head}, "parameters": params,
      "memory_method": {
          "jax": "XLA compiled memory analysis per program: argument + output + temp - alias bytes; peak_bytes = "
                 "max(prefill program, decode-step program(s))",
          "torch": "bytes of params + inputs (prefill) or params + KV cache (decode) + peak running sum of the "
                   "PyTorch profiler's memory events (profile_memory=True) during an untimed warm-up call"},
      "threads": {"torch": torch.get_num_threads(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
      "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
      "results": rows,
      "modrwkv_prefill_in_pieces": piece_rows,
  }
  result["derived"] = derive(contexts, rows)
  if len(piece_rows) > 1:
    ps = sorted(piece_rows, key=int)
    result["derived"]["modrwkv_pieces_prefill_peak_bytes_last_over_first"] = (
        piece_rows[ps[-1]]["prefill_peak_bytes"] / piece_rows[ps[0]]["prefill_peak_bytes"])
  result["elapsed_s"] = time.perf_counter() - start
  result["machine"]["load_average_1m"] = os.getloadavg()[0]
  result["machine"]["load_average_1m_at_start"] = load_at_start
  print_table(result)
  path = common.write_json(result, common.output_path(f"efficiency-{common.device_tag()}.json", args.out, args.overwrite))
  png = common.sibling_path(path, ".png")
  plot(result, png)
  print(f"\n{result['elapsed_s']:.0f} s in all -> {path}, {png}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
