"""Text generation: one parallel prefill, then constant-memory decoding.

The RNN state is the only thing carried between steps (L·B·(2D + H·N²) floats), so memory per
generated token does not grow with the context. The whole decode loop is one `lax.while_loop`
inside one jit: no host round-trip per token.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax.models import rwkv7
from modrwkv_jax.tokenizer import TURN_END_ID


def sample_logits(logits, key, temperature: float = 0.0, top_p: float = 1.0):
  """logits: float32[B, V] -> int32[B]. temperature 0 is greedy; top_p < 1 is nucleus sampling."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
    cutoff_index = jnp.sum(cum < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "temperature", "top_p"))
def _decode(config, params, logits, state, key, stop_token, *, max_new_tokens, temperature, top_p):
  batch = logits.shape[0]

  def cond(carry):
    i, _, _, _, _, done = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    i, logits, state, key, out, done = carry
    key, sub = jax.random.split(key)
    token = jnp.where(done, 0, sample_logits(logits, sub, temperature, top_p))
    out = out.at[:, i].set(token)
    # The stop token itself is fed, so the state is ready for the next chat turn; finished
    # rows are masked and keep their state.
    logits, state = rwkv7.forward(config, params, token[:, None], state, mask=~done[:, None])
    done = done | (token == stop_token)
    return i + 1, logits[:, -1], state, key, out, done

  out = jnp.zeros((batch, max_new_tokens), jnp.int32)
  carry = (jnp.int32(0), logits, state, key, out, jnp.zeros((batch,), bool))
  _, _, state, _, out, _ = jax.lax.while_loop(cond, body, carry)
  return out, state


_prefill = jax.jit(rwkv7.forward, static_argnums=0)


def generate(config: rwkv7.RWKV7Config, params, prompt=None, *, embeddings=None, mask=None, state=None,
             max_new_tokens: int = 500, stop_token: int | None = TURN_END_ID, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0):
  """Generates continuations of a batch of prompts.

  Args:
    prompt: int[B, T] token ids (or a list of ids for B = 1); left-pad a ragged batch and pass
      `mask` (True at real tokens) so every row ends at its last real token.
    embeddings: float[B, T, D] instead of `prompt` (e.g. modality tokens + text embeddings).
    state: RWKV7State to continue from (multi-turn chat), or None.
    stop_token: id that ends a row (fed to the model, then the row stops); None never stops.
  Returns:
    (list of B token lists, each cut after its stop token, final RWKV7State).
  """
  if prompt is not None and not hasattr(prompt, "ndim"):
    prompt = np.asarray([prompt], np.int32)
  if prompt is not None:
    prompt = jnp.asarray(prompt, jnp.int32)
  logits, state = _prefill(config, params, prompt, state, embeddings=embeddings, mask=mask)
  out, state = _decode(config, params, logits[:, -1], state, jax.random.key(seed),
                       jnp.int32(-1 if stop_token is None else stop_token), max_new_tokens=max_new_tokens,
                       temperature=float(temperature), top_p=float(top_p))
  rows = []
  for row in np.asarray(out).tolist():
    if stop_token is not None and stop_token in row:
      row = row[: row.index(stop_token) + 1]
    rows.append(row)
  return rows, state
