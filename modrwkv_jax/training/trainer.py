"""The training run, top to bottom: config -> mesh -> model -> state (restored or initialised) -> compiled
step -> loop (log, evaluate, checkpoint, stop on preemption) -> finish. `train.py` is a thin CLI over
`train(config, workdir)`; `compile_only(config)` sizes a run without data or weights.

Resume order (the first that exists wins):
  1. the latest finished checkpoint in `workdir/checkpoints` (full state and the data iterator: the run
     continues bit-identically, as if never interrupted);
  2. `init.from_checkpoint` (another run's workdir or checkpoint): the full state when its parameter
     groups match this config, else its parameters only (e.g. phase II starting from phase I);
  3. the pretrained files (`init.rwkv_pth`, `init.encoder_hf.<m>`, `init.projectors`);
  4. random initialisation from `seed`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax import peft, sharding
from modrwkv_jax.models import modrwkv
from modrwkv_jax.training import checkpoint as ckpt
from modrwkv_jax.training import config as config_lib
from modrwkv_jax.training import data as data_lib
from modrwkv_jax.training import optimizer as optim_lib
from modrwkv_jax.training import step as step_lib

log = logging.getLogger(__name__)


class TrainingAborted(RuntimeError):
  """Too many non-finite steps in a row."""


# ---------------------------------------------------------------------------------------------
# Building blocks (each usable alone: tests and notebooks call them).

def make_mesh(config):
  """The (data, fsdp, tensor) mesh of `config.mesh`; −1 fills the devices. A mesh smaller than the
  devices of a single process uses the first ones (e.g. one device for a reference run)."""
  m = config.mesh
  n = len(jax.devices())
  sizes = [m.data, m.fsdp, m.tensor]
  fixed = math.prod(s for s in sizes if s != -1)
  if fixed > n or (-1 in sizes and n % fixed) or (-1 not in sizes and fixed < n and jax.process_count() > 1):
    raise ValueError(f"mesh data={m.data} × fsdp={m.fsdp} × tensor={m.tensor} needs {fixed} devices"
                     f"{' (or a multiple)' if -1 in sizes else ''}; {n} are available ({jax.devices()[0].platform}, "
                     f"{jax.process_count()} process(es))")
  if -1 not in sizes and fixed < n:
    return sharding.make_mesh(m.data, m.fsdp, m.tensor, devices=jax.devices()[:fixed])
  return sharding.make_mesh(m.data, m.fsdp, m.tensor)


def build(config):
  """(ModRWKVConfig, PeftConfig | None) with the config's compute dtype checks done."""
  model = config_lib.model_config(config)
  return model, config_lib.peft_config(config)


def abstract_params(model, peft_config, mesh):
  return modrwkv.abstract_params(model, peft_config, mesh=mesh)


def init_params(config, model, peft_config, mesh) -> dict:
  """Pretrained files where the config names them (`modrwkv.load`), fresh seeded parameters for the rest,
  PEFT adapters on top; every leaf on its sharding."""
  key = jax.random.key(config.seed)
  if config.init.rwkv_pth or len(config.init.encoder_hf) or config.init.projectors:
    params = modrwkv.load(model, config.init.rwkv_pth, dict(config.init.encoder_hf), config.init.projectors,
                          key=key, mesh=mesh)
    if peft_config is None:
      return params
    params["rwkv"], _ = peft.add_adapters(params["rwkv"], peft_config, jax.random.fold_in(key, 7))
    return jax.device_put(params, sharding.logical_to_mesh(modrwkv.param_logical_axes(model, peft_config), mesh))
  return modrwkv.init_params(model, key, peft_config, mesh=mesh)


def state_shardings(abstract_state, param_shardings_flat: Mapping, mesh):
  """Shardings of every state leaf: params and their optimizer moments by the parameter's logical axes
  (an optimizer leaf takes the sharding of the parameter whose path ends its own path), the rest
  replicated."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  def pick(kp, leaf):
    keys = [str(k.key) for k in kp if hasattr(k, "key")]
    for i in range(len(keys)):
      found = param_shardings_flat.get("/".join(keys[i:]))
      if found is not None:
        sh, shape = found
        return sh if tuple(leaf.shape) == tuple(shape) else replicated
    return replicated
  return jax.tree_util.tree_map_with_path(pick, abstract_state)


def _flat_shardings(params_abstract) -> dict:
  return {optim_lib.path_str(kp): (leaf.sharding, leaf.shape)
          for kp, leaf in jax.tree_util.tree_leaves_with_path(params_abstract)}


def abstract_batch(config, model, batch_size: int, length: int | None = None) -> dict:
  """jax.ShapeDtypeStruct of a global batch at the longest length (for --compile_only).

  With data.packing: rows of the packed row length (data.max_length rounded up to its bucket), with
  segment_ids, and per modality the packed item dimension: data.<m>.row_items, else for images the
  T // (tokens of one image) the pipeline uses, else 1 (a pipeline without row_items sizes audio and
  series items per batch).
  """
  from modrwkv_jax.data.audio import WhisperFeatureConfig
  from modrwkv_jax.data.transforms import padded_length
  d = config.data
  packing = bool(d.get("packing", False))
  if packing:
    T = length or (padded_length(d.max_length, d.pad_multiple, tuple(d.length_buckets)) if d.max_length
                   else max(d.length_buckets))
  else:
    T = length or d.max_length
  B = batch_size
  S = jax.ShapeDtypeStruct
  out = {"tokens": S((B, T), jnp.int32), "labels": S((B, T), jnp.int32), "mask": S((B, T), jnp.bool_)}
  if packing:
    out["segment_ids"] = S((B, T), jnp.int32)

  def items(name):
    if not packing:
      return 1
    if d[name].get("row_items"):
      return int(d[name].row_items)
    return max(1, T // modrwkv.num_tokens(model, "image", 0)) if name == "image" else 1

  for name, m in model.modalities:
    out[f"{name}_pos"] = S((B, T), jnp.int32)
    out[f"{name}_count"] = S((B,), jnp.int32)
    I = items(name)
    if name == "image":
      size = config.data.image.size or getattr(m.encoder_config, "image_size", None) or 384
      out["image"] = S((B, I, size, size, 3), jnp.float32)
    elif name == "audio":
      if config.data.audio.frontend == "whisper":
        w = WhisperFeatureConfig(feature_size=config.data.audio.feature_size,
                                 chunk_length=config.data.audio.chunk_length)
        out["audio"] = S((B, I, w.n_frames, w.feature_size), jnp.float32)
        out["audio_mask"] = S((B, I, w.n_frames), jnp.bool_)
      else:
        n = int(16000 * (config.data.audio.max_seconds or 30))
        out["audio"], out["audio_mask"] = S((B, I, n), jnp.float32), S((B, I, n), jnp.bool_)
    elif name == "series":
      L = config.data.series.length or 720
      out["series"], out["series_mask"] = S((B, I, L), jnp.float32), S((B, I, L), jnp.bool_)
      if model.forecast_horizon:
        out["target"] = S((B, I, model.forecast_horizon), jnp.float32)
        out["target_mask"] = S((B, I, model.forecast_horizon), jnp.bool_)
  return out


def _with_sharding(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Setup:
  """Everything the loop needs, built from a config on a mesh (no arrays allocated)."""

  def __init__(self, config, mesh):
    self.config, self.mesh = config, mesh
    self.model, self.peft = build(config)
    self.axes = modrwkv.param_logical_axes(self.model, self.peft)
    self.abstract = modrwkv.abstract_params(self.model, self.peft, mesh=mesh)
    self.mask = optim_lib.trainable_mask(self.abstract, tuple(config.train.trainable), self.model)
    abs_t, abs_f = optim_lib.split(self.abstract, self.mask)
    axes_t = _select(self.axes, self.mask)
    self.optimizer = optim_lib.make_optimizer(config.optim, config.train.steps, abs_t, axes_t)
    self.step_fn = step_lib.make_train_step(self.model, self.optimizer, grad_accum=config.train.grad_accum,
                                            forecast_weight=config.train.forecast_weight,
                                            label_capacity=_label_capacity(config))
    abstract_state = jax.eval_shape(
        lambda t, f: step_lib.init_state(t, f, self.optimizer, config.seed), abs_t, abs_f)
    self.state_shardings = state_shardings(abstract_state, _flat_shardings(self.abstract), mesh)
    self.abstract_state = _with_sharding(abstract_state, self.state_shardings)
    self.batch_sharding = data_lib.batch_sharding(mesh)

  def counts(self) -> dict:
    """Parameter counts: total and trainable, per part (rwkv, encoders/<m>, projectors, forecast_head)."""
    out = {}
    for kp, leaf in jax.tree_util.tree_leaves_with_path(self.abstract):
      path = optim_lib.path_str(kp)
      part = "/".join(path.split("/")[:2]) if path.startswith("encoders/") else path.split("/")[0]
      total, trained = out.get(part, (0, 0))
      out[part] = (total + leaf.size, trained + (leaf.size if _lookup(self.mask, kp) else 0))
    return out

  def jit_step(self):
    def batch_shardings(batch):
      return jax.tree.map(lambda x: jax.sharding.NamedSharding(
          self.mesh, jax.sharding.PartitionSpec(*self.batch_sharding.spec, *([None] * (x.ndim - 1)))), batch)
    return jax.jit(self.step_fn, in_shardings=(self.state_shardings, None), out_shardings=(self.state_shardings, None),
                   donate_argnums=(0,)), batch_shardings

  def init_state(self, params: Mapping) -> dict:
    trainable, frozen = optim_lib.split(params, self.mask)
    init = jax.jit(lambda t, f: step_lib.init_state(t, f, self.optimizer, self.config.seed),
                   out_shardings=self.state_shardings)
    return init(trainable, frozen)


def _lookup(tree, kp):
  for k in kp:
    tree = tree[k.key]
  return tree


def _select(tree, mask):
  """The subtree of `tree` (any leaves) where the bool tree `mask` is True (same structure as split)."""
  out = {}
  for k, v in mask.items():
    if isinstance(v, Mapping):
      sub = _select(tree[k], v)
      if sub:
        out[k] = sub
    elif v:
      out[k] = tree[k]
  return out


# ---------------------------------------------------------------------------------------------
# The run.

def train(config, workdir: str, *, config_file_diff: Mapping | None = None) -> dict:
  """Trains `config`, writing checkpoints, metrics.jsonl, TensorBoard events and config.json to `workdir`.
  Returns the last logged metrics (and {"preempted": True} when stopped by SIGTERM/SIGINT)."""
  from modrwkv_jax.training import flops as flops_lib
  from modrwkv_jax.training import metrics as metrics_lib

  t_start = time.perf_counter()
  primary = jax.process_index() == 0
  config_lib.check_values(config)
  config_lib.check_files(config)
  os.makedirs(workdir, exist_ok=True)
  if primary:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config_lib.to_json(config))

  mesh = make_mesh(config)
  per_host_batch, micro = data_lib.check_batch(config, mesh)
  setup = Setup(config, mesh)
  model = setup.model

  # ---- state: resume, from_checkpoint, pretrained files, random -------------------------------
  mngr = ckpt.manager(workdir, keep=config.train.keep_checkpoints)
  meta = {"name": config.name, "trainable": sorted(optim_lib.path_str(kp) for kp, v in
                                                   jax.tree_util.tree_leaves_with_path(setup.mask) if v)}
  data_state, source = None, None
  latest = mngr.latest_step()
  if latest is not None:
    state, data_state, _ = ckpt.restore(mngr, latest, setup.abstract_state)
    source = f"resumed from {mngr.directory}/{latest}"
  elif config.init.from_checkpoint:
    state, source = _from_checkpoint(config, setup)
  else:
    state = setup.init_state(init_params(config, model, setup.peft, mesh))
    source = "pretrained files" if (config.init.rwkv_pth or len(config.init.encoder_hf)) else f"random (seed {config.seed})"
  start = int(jax.device_get(state["step"]))

  # ---- data --------------------------------------------------------------------------------------
  data_lib.prepare(config)
  train_it, eval_cfg = data_lib.make_iterators(config, model, mesh, seed=config.seed, start_step=start)
  if data_state is not None:
    train_it.set_state(data_state)

  # ---- summary -----------------------------------------------------------------------------------
  counts = setup.counts()
  total = sum(t for t, _ in counts.values())
  trained = sum(n for _, n in counts.values())
  if primary:
    print(f"modrwkv-jax train: {config.name or 'run'} -> {workdir}")
    print(f"  devices: {jax.device_count()} × {jax.devices()[0].device_kind} ({jax.process_count()} process(es)); "
          f"mesh {dict(mesh.shape)}")
    print(f"  parameters: {total / 1e6:.3f}M total, {trained / 1e6:.3f}M trainable")
    for part, (t, n) in counts.items():
      print(f"    {part:<22s} {t:>14,d}  trainable {n:>14,d}")
    print(f"  batch {config.train.batch_size} (global) = {config.train.grad_accum} × {micro}; {per_host_batch} rows "
          f"per host; steps {start} -> {config.train.steps}; state: {source}")
    first = 0
    for k, (n, sources) in enumerate(config_lib.curriculum(config)):
      print(f"  data.curriculum[{k}]: {len(sources)} source(s) for steps {first} -> {first + n}")
      first += n
    if first:
      print(f"  data.sources: {len(config.data.sources)} source(s) for steps {first} -> {config.train.steps}")
    if config_file_diff:
      print("  overrides: " + ", ".join(f"{k}={b!r}" for k, (a, b) in config_file_diff.items()))

  # ---- compile -----------------------------------------------------------------------------------
  step_jit, _ = setup.jit_step()
  eval_jit = jax.jit(step_lib.make_eval_step(model, _label_capacity(config)))
  peak = config.train.peak_flops or flops_lib.peak_flops_per_device(jax.devices()[0])
  if peak is None and jax.devices()[0].platform == "cpu":
    peak = flops_lib.measure_cpu_matmul_flops()
  trainable_parts = _trainable_parts(setup, model)

  writer = metrics_lib.MetricsWriter(workdir, enabled=primary, resume_step=start)
  progress = metrics_lib.Progress(config.train.steps, initial=start,
                                  disable=not (primary and config.train.progress))
  stop = {"signal": None}
  def on_signal(signum, frame):
    stop["signal"] = signum
  old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

  last, t_log, tokens_since, steps_since = {}, None, 0, 0
  max_bad = config.train.max_skipped_in_a_row
  profile = tuple(config.train.profile_steps)
  step = start
  try:
    while step < config.train.steps and stop["signal"] is None:
      local = next(train_it)
      modrwkv.check_label_capacity(local["labels"], _label_capacity(config),
                                   where=f"train.py: the batch of step {step + 1}")
      batch = data_lib.global_batch(local, mesh)
      if profile and step == profile[0]:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
      state, m = step_jit(state, batch)
      step += 1
      if profile and step == profile[-1] + 1:
        jax.block_until_ready(state["step"])
        jax.profiler.stop_trace()
      tokens_since += int(local["mask"].sum()) * jax.process_count()
      steps_since += 1
      if step % config.train.log_every == 0 or step == config.train.steps or step == start + 1:
        m = jax.device_get(m)
        now = time.perf_counter()
        row = _row(m, state, setup, step, config)
        if t_log is not None:  # the first logged step includes compilation: no throughput for it
          dt = (now - t_log) / steps_since
          flops_per_step = flops_lib.step_flops(model, _batch_shape(batch, model, _label_capacity(config)),
                                                trainable_parts,
                                                peft_config=setup.peft)["total"]
          row.update(step_time=dt, tokens_per_sec=tokens_since / steps_since / dt,
                     mfu=flops_lib.mfu(flops_per_step, dt, jax.device_count(), peak) if peak else None)
        row["skipped_records"] = train_it.skipped
        row = {k: v for k, v in row.items() if v is not None}  # e.g. mfu on a device without a known peak
        t_log, tokens_since, steps_since = time.perf_counter(), 0, 0
        writer.write(step, row)
        progress.update(step, loss=row["loss"], tokens_per_sec=row.get("tokens_per_sec"))
        last = row
      # Reading the counter waits for the step: done every min(log_every, K) steps, so a run of K skips
      # stops within 2K − 1 steps without a device sync per step.
      if step % min(config.train.log_every, max_bad) == 0 and int(jax.device_get(state["skipped_in_a_row"])) >= max_bad:
        raise TrainingAborted(f"{max_bad} steps in a row had a non-finite loss or gradient (last at step {step}); "
                              "lower optim.lr, check the data, or raise train.max_skipped_in_a_row")
      if jax.process_count() > 1:  # every host stops at the same step, even if only one got the signal
        stop["signal"] = _any_host(stop["signal"])
      if eval_cfg is not None and config.train.eval_every and step % config.train.eval_every == 0:
        ev = evaluate(eval_jit, state, eval_cfg, config, mesh)
        writer.write(step, ev)
        last.update(ev)
      every = config.train.checkpoint_every  # 0: at the end (and on a signal) only
      if (every and step % every == 0) or step == config.train.steps:
        ckpt.save(mngr, step, state, train_it.get_state(), meta)
    if stop["signal"] is not None:
      ckpt.save(mngr, step, state, train_it.get_state(), meta, force=True)
      last["preempted"] = True
      if primary:
        print(f"\nstopped by signal {stop['signal']} at step {step}: checkpoint written", flush=True)
  finally:
    ckpt.wait(mngr)
    mngr.close()
    writer.close()
    progress.close()
    for s, h in old_handlers.items():
      signal.signal(s, h)
  if primary and not last and step == start:
    print(f"nothing to do: the run is at step {step} of train.steps={config.train.steps}", flush=True)
  elif primary and not last.get("preempted"):
    print(f"done: step {step}, loss {last.get('loss', float('nan')):.4f}, "
          f"{time.perf_counter() - t_start:.0f}s total", flush=True)
  last["step"] = step
  return last


def _any_host(signum):
  """The signal number any process received (0 for none), agreed by all processes."""
  from jax.experimental import multihost_utils
  got = multihost_utils.process_allgather(np.asarray(signum or 0, np.int32))
  return int(np.max(got)) or None


def _trainable_parts(setup, model) -> dict:
  """Which parts train, as flops.step_flops takes it."""
  paths = [optim_lib.path_str(kp) for kp, v in jax.tree_util.tree_leaves_with_path(setup.mask) if v]
  selected = lambda group: any(optim_lib.GROUPS[group](p) for p in paths)
  return {"rwkv": selected("rwkv"), "peft": selected("peft"),
          "encoders": {n: any(p.startswith(f"encoders/{n}/") for p in paths) for n, _ in model.modalities},
          "projectors": selected("adapter") or selected("head")}


def _label_capacity(config) -> int:
  """train.label_capacity (0, every position, for a run config written before the key existed)."""
  return int(config.train.get("label_capacity", 0))


def _batch_shape(batch, model, label_capacity: int = 0) -> dict:
  B, T = batch["tokens"].shape
  out = {"B": B, "T": T}
  if label_capacity > 0:  # the positions the vocabulary head runs at
    out["head_T"] = min(T, label_capacity)
  for name, _ in model.modalities:
    if name in batch:
      out[name] = (batch[name].shape[1], batch[name].shape[2])
  return out


def _row(m, state, setup, step, config) -> dict:
  tokens = int(m["tokens"])
  row = {"loss": float(m["loss"]), "nll": float(m["nll"]) / max(tokens, 1), "accuracy": int(m["correct"]) / max(tokens, 1),
         "lr": float(optim_lib.schedule(config.optim, config.train.steps)(max(step - 1, 0))),
         "grad_norm": float(m["grad_norm"]), "tokens": tokens,
         "skipped_steps": int(jax.device_get(state["skipped"]))}
  if "se" in m:
    row["forecast_mse"] = float(m["se"]) / max(int(m["values"]), 1)
  return row


def evaluate(eval_jit, state, eval_cfg, config, mesh) -> dict:
  """Validation over the first `train.eval_batches` batches of the eval split: token-mean loss and
  accuracy (and forecasting MSE), summed over batches before dividing."""
  it = data_lib.EpochIterator(eval_cfg, config.data.eval_split, config.seed, repeat=False)
  totals: dict[str, float] = {}
  for i, local in enumerate(it):
    if i >= config.train.eval_batches:
      break
    modrwkv.check_label_capacity(local["labels"], _label_capacity(config),
                                 where=f"train.py: validation batch {i}")
    terms = jax.device_get(eval_jit(state["trainable"], state["frozen"], data_lib.global_batch(local, mesh)))
    for k, v in terms.items():
      totals[k] = totals.get(k, 0) + float(v)
  out = {"eval_loss": totals.get("nll", 0.0) / max(totals.get("tokens", 0), 1),
         "eval_accuracy": totals.get("correct", 0.0) / max(totals.get("tokens", 0), 1),
         "eval_tokens": int(totals.get("tokens", 0))}
  if "se" in totals:
    out["eval_forecast_mse"] = totals["se"] / max(totals["values"], 1)
  return out


def load_run(path: str, mesh=None, step: int | None = None):
  """(config, params, step) of a training run: its config.json and the params (trainable and frozen,
  one tree) of its latest (or given) finished checkpoint, placed on `mesh` (default: all devices on
  the data axis). `path` is the run's workdir, its checkpoints folder or a step folder."""
  import ml_collections
  workdir = ckpt.run_folder(path)
  config_file = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_file):
    raise FileNotFoundError(f"{path}: no config.json in the run folder {workdir}; is it a train.py workdir?")
  with open(config_file) as f:
    run_config = ml_collections.ConfigDict(json.load(f))
  if step is None and os.path.basename(os.path.abspath(path)).isdigit():
    step = int(os.path.basename(os.path.abspath(path)))
  mesh = mesh if mesh is not None else sharding.make_mesh()
  setup = Setup(run_config, mesh)
  mngr = ckpt.manager(workdir, keep=1, read_only=True)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{path}: no finished checkpoint in {mngr.directory}")
  state, _, _ = ckpt.restore(mngr, step, setup.abstract_state)
  mngr.close()
  return run_config, peft.combine(state["trainable"], state["frozen"]), step


def _from_checkpoint(config, setup):
  """The full state of another run when its parameter groups and optimizer match, else its parameters
  with a fresh optimizer (e.g. phase II from phase I; PEFT adapters are added when the run had none)."""
  path = config.init.from_checkpoint
  run_config, params, step = load_run(path, setup.mesh)
  same_model = build(run_config)[0] == setup.model
  if not same_model:
    raise ValueError(f"init.from_checkpoint={path!r}: that run trained another model "
                     f"({build(run_config)[0]}) than this config ({setup.model})")
  if build(run_config)[1] is None and setup.peft is not None:
    params["rwkv"], _ = peft.add_adapters(params["rwkv"], setup.peft, jax.random.fold_in(jax.random.key(config.seed), 7))
  elif build(run_config)[1] != setup.peft:
    raise ValueError(f"init.from_checkpoint={path!r}: that run's PEFT config {build(run_config)[1]} differs from "
                     f"this one's {setup.peft}")
  params = jax.device_put(params, sharding.logical_to_mesh(setup.axes, setup.mesh))
  same_groups = tuple(run_config.train.trainable) == tuple(config.train.trainable) and \
      run_config.optim.to_dict() == config.optim.to_dict()
  if same_groups:
    mngr = ckpt.manager(ckpt.run_folder(path), keep=1, read_only=True)
    state, _, _ = ckpt.restore(mngr, step, setup.abstract_state)
    mngr.close()
    return state, f"full state of {path} (step {step})"
  state = setup.init_state(params)
  return state, f"params of {path} (step {step}), fresh optimizer state"


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compilation.

def compile_only(config) -> dict:
  """Compiles the train step for `config.mesh` on the devices present (simulated CPU devices under
  `train.py --compile_only`) and reports XLA's per-device memory analysis and FLOP count."""
  mesh = make_mesh(config)
  data_lib.check_batch(config, mesh)
  setup = Setup(config, mesh)
  step_jit, batch_shardings = setup.jit_step()
  batch = abstract_batch(config, setup.model, config.train.batch_size)
  batch = _with_sharding(batch, batch_shardings(batch))
  t0 = time.perf_counter()
  compiled = step_jit.lower(setup.abstract_state, batch).compile()
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  counts = setup.counts()
  from modrwkv_jax.training import flops as flops_lib
  model_flops = flops_lib.step_flops(setup.model, _batch_shape(batch, setup.model, _label_capacity(config)),
                                     _trainable_parts(setup, setup.model),
                                     peft_config=setup.peft)["total"]
  out = {"mesh": dict(mesh.shape), "devices": jax.device_count(), "compile_seconds": seconds,
         "model_flops_per_step": model_flops,
         "params_total": sum(t for t, _ in counts.values()), "params_trainable": sum(n for _, n in counts.values()),
         "flops_per_step_xla": float(cost.get("flops", float("nan"))) if cost else None}
  if mem is not None:
    for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "generated_code_size_in_bytes",
              "alias_size_in_bytes"):
      out[k] = int(getattr(mem, k, 0))
    out["peak_bytes_per_device"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                    - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
  return out
