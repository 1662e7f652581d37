"""The train state and the training / evaluation steps, as pure functions to jit.

    state = {"step": int32[], "trainable": {...}, "frozen": {...}, "opt_state": ..., "rng": uint32[2],
             "skipped": int32[], "skipped_in_a_row": int32[]}

The objective of a (global) batch is the token-mean cross-entropy over assistant tokens, plus
`forecast_weight` × the forecasting MSE over real target values when the model has a forecasting head:

    L = Σ nll / N_tokens + w · Σ se / N_values

Gradient accumulation splits the batch into `grad_accum` micro-batches and sums ∇ of each micro-batch's
share `Σ_i nll / N_tokens + w · Σ_i se / N_values`, with N counted over the whole batch before the first
micro-batch runs: the result equals one step on the whole batch even when micro-batches hold different
numbers of label tokens. Micro-batch j holds rows j, j + A, j + 2A, …: each device keeps its rows.

A step whose loss or gradient is not finite changes nothing but the counters (`skipped`,
`skipped_in_a_row`); the loop aborts after `train.max_skipped_in_a_row` in a row.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from modrwkv_jax import peft
from modrwkv_jax.models import modrwkv

# Keys of a pipeline batch the model reads (the rest: ids, stats, are host-side only).
MODEL_KEYS = ("tokens", "labels", "mask", "segment_ids", "target", "target_mask")


def model_batch(batch: Mapping) -> dict:
  """The arrays of a pipeline batch that go to the device."""
  return {k: v for k, v in batch.items()
          if k in MODEL_KEYS or k.split("_")[0] in modrwkv.MODALITIES}


def _objective_terms(model: modrwkv.ModRWKVConfig, params, batch, label_capacity: int = 0):
  # One pass of the encoders and RWKV-7 feeds both objectives.
  hidden = modrwkv.hidden_states(model, params, batch)
  nll, n_tok, aux = modrwkv.loss_terms(model, params, batch, hidden=hidden, label_capacity=label_capacity)
  terms = {"nll": nll, "tokens": n_tok, "correct": aux["correct"]}
  if model.forecast_horizon and "target" in batch:
    se, n_val, faux = modrwkv.forecast_loss_terms(model, params, batch, hidden=hidden)
    terms.update(se=se, values=n_val, se_units=faux["se_units"], ae_units=faux["ae_units"])
  return terms


def counts(batch: Mapping, model: modrwkv.ModRWKVConfig) -> tuple[jax.Array, jax.Array]:
  """(label tokens, real forecast target values) of a batch, known before any forward pass."""
  n_tok = (jnp.asarray(batch["labels"]) >= 0).sum().astype(jnp.int32)
  n_val = jnp.zeros((), jnp.int32)
  if model.forecast_horizon and "target" in batch:
    n_val = modrwkv.forecast_target_mask(batch).sum().astype(jnp.int32)
  return n_tok, n_val


def _micro_batches(batch: Mapping, accum: int) -> dict:
  """[B, ...] -> [A, B/A, ...], micro-batch j = rows j, j + A, ... (no data moves between devices)."""
  def split(x):
    B = x.shape[0]
    return jnp.swapaxes(x.reshape(B // accum, accum, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, dict(batch))


def make_train_step(model: modrwkv.ModRWKVConfig, optimizer: optax.GradientTransformation, *, grad_accum: int = 1,
                    forecast_weight: float = 1.0, label_capacity: int = 0):
  """state, batch -> (state, metrics). Metrics are device scalars: loss, nll, tokens, accuracy,
  grad_norm, lr-independent; and forecast_mse/values when the model forecasts.

  label_capacity: K > 0 takes the vocabulary head at each row's first K label positions only (the same
  loss while no row has more than K labels, which the trainer checks on the host: `modrwkv.loss_terms`)."""

  def share(trainable, frozen, batch, n_tok, n_val):
    terms = _objective_terms(model, peft.combine(trainable, frozen), batch, label_capacity)
    value = terms["nll"] / jnp.maximum(n_tok, 1).astype(jnp.float32)
    if "se" in terms:
      value = value + forecast_weight * terms["se"] / jnp.maximum(n_val, 1).astype(jnp.float32)
    return value, terms

  grad_fn = jax.value_and_grad(share, has_aux=True)

  def step(state, batch):
    n_tok, n_val = counts(batch, model)
    trainable, frozen = state["trainable"], state["frozen"]
    if grad_accum == 1:
      (value, terms), grads = grad_fn(trainable, frozen, batch, n_tok, n_val)
    else:
      def body(carry, micro):
        (v, t), g = grad_fn(trainable, frozen, micro, n_tok, n_val)
        acc_v, acc_t, acc_g = carry
        return (acc_v + v, jax.tree.map(jnp.add, acc_t, t), jax.tree.map(jnp.add, acc_g, g)), None
      micro = _micro_batches(batch, grad_accum)
      first = jax.tree.map(lambda x: x[0], micro)
      t_shape = jax.eval_shape(lambda b: grad_fn(trainable, frozen, b, n_tok, n_val)[0][1], first)
      zeros = (jnp.zeros((), jnp.float32), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t_shape),
               jax.tree.map(jnp.zeros_like, trainable))
      (value, terms, grads), _ = jax.lax.scan(body, zeros, micro)
    grad_norm = optax.tree.norm(grads) if hasattr(optax, "tree") and hasattr(optax.tree, "norm") else optax.global_norm(grads)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state["opt_state"], trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    rng, _ = jax.random.split(jax.random.wrap_key_data(state["rng"]))
    new_state = {
        "step": state["step"] + 1,
        "trainable": keep(new_trainable, trainable),
        "frozen": frozen,
        "opt_state": keep(opt_state, state["opt_state"]),
        "rng": jax.random.key_data(rng),
        "skipped": state["skipped"] + (~finite).astype(jnp.int32),
        "skipped_in_a_row": jnp.where(finite, 0, state["skipped_in_a_row"] + 1),
    }
    metrics = {"loss": value, "nll": terms["nll"], "tokens": terms["tokens"], "correct": terms["correct"],
               "grad_norm": grad_norm, "finite": finite}
    if "se" in terms:
      metrics.update(se=terms["se"], values=terms["values"], se_units=terms["se_units"])
    return new_state, metrics

  return step


def make_eval_step(model: modrwkv.ModRWKVConfig, label_capacity: int = 0):
  """params, batch -> summed terms (nll, tokens, correct[, se, values, se_units, ae_units])."""
  def step(trainable, frozen, batch):
    return _objective_terms(model, peft.combine(trainable, frozen), batch, label_capacity)
  return step


def init_state(trainable: Mapping, frozen: Mapping, optimizer: optax.GradientTransformation, seed: int) -> dict:
  return {"step": jnp.zeros((), jnp.int32), "trainable": trainable, "frozen": frozen,
          "opt_state": optimizer.init(trainable),
          "rng": jax.random.key_data(jax.random.key(seed)),
          "skipped": jnp.zeros((), jnp.int32), "skipped_in_a_row": jnp.zeros((), jnp.int32)}
