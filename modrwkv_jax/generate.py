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


def sample_logits(logits, key, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0):
  """logits: float32[B, V] -> int32[B]. temperature 0 is greedy; top_k > 0 keeps the k best tokens,
  top_p < 1 the smallest set whose probability reaches top_p (nucleus); both can combine."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
    cutoff_index = jnp.sum(cum < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def penalize(logits, counts, presence: float, frequency: float):
  """ChatRWKV-style penalties: logits − presence·[count > 0] − frequency·count (counts int32[B, V])."""
  if presence == 0.0 and frequency == 0.0:
    return logits
  return logits - presence * (counts > 0) - frequency * counts


@functools.partial(jax.jit, static_argnums=0)
def decode_step(config, params, token, state, done):
  """One token for every row: token int32[B], done bool[B] (finished rows keep their state).

  Returns (logits float32[B, V], new state). The state is the only memory: its size is fixed.
  """
  logits, state = rwkv7.forward(config, params, token[:, None], state, mask=~done[:, None])
  return logits[:, -1], state


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "sampling"))
def _decode(config, params, logits, state, key, stop_token, *, max_new_tokens, sampling):
  temperature, top_p, top_k, presence, frequency = sampling
  batch, vocab = logits.shape

  def cond(carry):
    i, _, _, _, _, done, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    i, logits, state, key, out, done, counts = carry
    key, sub = jax.random.split(key)
    logits = penalize(logits, counts, presence, frequency)
    token = jnp.where(done, 0, sample_logits(logits, sub, temperature, top_p, top_k))
    out = out.at[:, i].set(token)
    counts = counts.at[jnp.arange(batch), token].add(jnp.where(done, 0, 1))
    # The stop token itself is fed, so the state is ready for the next chat turn; finished
    # rows are masked and keep their state.
    logits, state = rwkv7.forward(config, params, token[:, None], state, mask=~done[:, None])
    done = done | (token == stop_token)
    return i + 1, logits[:, -1], state, key, out, done, counts

  out = jnp.zeros((batch, max_new_tokens), jnp.int32)
  carry = (jnp.int32(0), logits, state, key, out, jnp.zeros((batch,), bool), jnp.zeros((batch, vocab), jnp.int32))
  _, _, state, _, out, _, _ = jax.lax.while_loop(cond, body, carry)
  return out, state


@functools.partial(jax.jit, static_argnames=("sampling",))
def _pick(logits, counts, key, *, sampling):
  temperature, top_p, top_k, presence, frequency = sampling
  return sample_logits(penalize(logits, counts, presence, frequency), key, temperature, top_p, top_k)


def _stream(config, params, logits, state, key, stop_token, max_new_tokens, sampling, callback):
  """Host loop over the jitted `decode_step`; calls callback(step, tokens int[B]) after every token."""
  batch, vocab = logits.shape
  done = np.zeros((batch,), bool)
  counts = jnp.zeros((batch, vocab), jnp.int32)
  out = np.zeros((batch, max_new_tokens), np.int32)
  for i in range(max_new_tokens):
    key, sub = jax.random.split(key)
    token = np.where(done, 0, np.asarray(_pick(logits, counts, sub, sampling=sampling)))
    out[:, i] = token
    counts = counts.at[np.arange(batch), token].add(np.where(done, 0, 1))
    callback(i, token)
    logits, state = decode_step(config, params, jnp.asarray(token), state, jnp.asarray(done))
    done = done | (token == stop_token)
    if done.all():
      break
  return out, state


_forward = jax.jit(rwkv7.forward, static_argnums=0)


def _last_real(x, mask):
  """x float[B, T, ...] -> float[B, ...] at each row's last real position. Padding leaves the state
  untouched wherever it is (left, right or inside), so each row continues from its own last token; a row
  without any real token continues from its incoming state's last slot (position T − 1)."""
  if mask is None:
    return x[:, -1]
  mask = jnp.asarray(mask, bool)
  t = jnp.arange(mask.shape[1])
  last = jnp.max(jnp.where(mask, t, -1), axis=1)
  last = jnp.where(last < 0, mask.shape[1] - 1, last)
  return jnp.take_along_axis(x, last.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]


@functools.partial(jax.jit, static_argnums=0)
def _prefill(config, params, prompt, state, embeddings=None, mask=None):
  """Reads a prompt: (logits float32[B, V] at each row's last real position, RWKV7State). The V-word head
  runs at that one position per row, not at all T (a [B, T, V] float32 array: 256 MiB for 16 × 64 tokens
  at V = 65,536)."""
  hidden, state = rwkv7.forward(config, params, prompt, state, embeddings=embeddings, mask=mask, hidden=True)
  last = _last_real(hidden, mask)
  if last.shape[0] == 1:  # XLA:CPU multiplies a 1-row bfloat16 matrix by a slow path: the row goes in twice
    return rwkv7.head(config, params, jnp.concatenate([last, last]))[:1], state
  return rwkv7.head(config, params, last), state


def _check_settings(max_new_tokens, temperature, top_p, top_k, presence_penalty, frequency_penalty):
  """Sampling settings are checked before anything is compiled: a NaN would silently sample garbage."""
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
    raise ValueError(f"generate: max_new_tokens must be an int >= 0; got {max_new_tokens!r}")
  if not (np.isfinite(temperature) and temperature >= 0):
    raise ValueError(f"generate: temperature must be finite and >= 0 (0 = greedy); got {temperature!r}")
  if not (np.isfinite(top_p) and 0 < top_p <= 1):
    raise ValueError(f"generate: top_p must be in (0, 1]; got {top_p!r}")
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
    raise ValueError(f"generate: top_k must be an int >= 0 (0 = off); got {top_k!r}")
  for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
    if not np.isfinite(value):
      raise ValueError(f"generate: {name} must be finite; got {value!r}")


def generate(config: rwkv7.RWKV7Config, params, prompt=None, *, embeddings=None, mask=None, state=None,
             max_new_tokens: int = 500, stop_token: int | None = TURN_END_ID, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
             seed: int = 0, callback=None):
  """Generates continuations of a batch of prompts.

  Args:
    prompt: int[B, T] token ids (or a list of ids for B = 1); pad a ragged batch on either side (or
      inside) and pass `mask` (True at real tokens): every row continues from its own last real token.
    embeddings: float[B, T, D] instead of `prompt` (e.g. modality tokens + text embeddings).
    state: RWKV7State to continue from (multi-turn chat), or None.
    stop_token: id that ends a row (fed to the model, then the row stops); None never stops.
    temperature, top_p, top_k: sampling (temperature 0 = greedy).
    presence_penalty, frequency_penalty: subtracted from the logits of tokens generated so far
      (once per distinct token / once per occurrence), as ChatRWKV does.
    callback: None (the whole decode loop is one jitted while_loop), or callback(step, tokens int[B])
      called after every token (streaming; a host loop over the jitted `decode_step`).
  Returns:
    (list of B token lists, each cut after its stop token, final RWKV7State).
  """
  _check_settings(max_new_tokens, temperature, top_p, top_k, presence_penalty, frequency_penalty)
  if prompt is not None and not hasattr(prompt, "ndim"):
    if len(prompt) == 0:
      raise ValueError("generate: the prompt is empty")
    prompt = np.asarray([prompt], np.int32)
  if prompt is not None:
    rwkv7.check_tokens(config, prompt, "generate: prompt")  # the boundary: the jitted model does no value checks
    prompt = jnp.asarray(prompt, jnp.int32)
  last, state = _prefill(config, params, prompt, state, embeddings=embeddings, mask=mask)
  if max_new_tokens == 0:  # the prompt is absorbed into the state; nothing is generated
    return [[] for _ in range(last.shape[0])], state
  sampling = (float(temperature), float(top_p), int(top_k), float(presence_penalty), float(frequency_penalty))
  stop = -1 if stop_token is None else stop_token
  if callback is None:
    out, state = _decode(config, params, last, state, jax.random.key(seed), jnp.int32(stop),
                         max_new_tokens=max_new_tokens, sampling=sampling)
  else:
    out, state = _stream(config, params, last, state, jax.random.key(seed), stop, max_new_tokens,
                         sampling, callback)
  rows = []
  for row in np.asarray(out).tolist():
    if stop_token is not None and stop_token in row:
      row = row[: row.index(stop_token) + 1]
    rows.append(row)
  return rows, state


def score(config: rwkv7.RWKV7Config, params, prompt=None, candidates=(), *, embeddings=None, state=None):
  """Log-likelihood of each candidate continuation after one prompt (multiple-choice ranking).

  The prompt is run once; every candidate continues from a copy of its state.
  Args:
    prompt: list of token ids (or None with `embeddings` float[1, T, D]).
    candidates: sequence of non-empty token-id lists.
  Returns:
    float64[len(candidates)]: Σ log p(candidate tokens | prompt); divide by lengths for a mean.
  """
  if not candidates or any(len(c) == 0 for c in candidates):
    raise ValueError("score: give at least one candidate, each a non-empty list of token ids")
  if prompt is not None:
    rwkv7.check_tokens(config, np.asarray(prompt), "score: prompt")
    prompt = jnp.asarray([prompt], jnp.int32)
  for c in candidates:
    rwkv7.check_tokens(config, np.asarray(c), "score: candidate")
  last, state = _prefill(config, params, prompt, state, embeddings=embeddings)
  first = jax.nn.log_softmax(last[0])
  longest = max(len(c) for c in candidates)
  ids = np.zeros((len(candidates), longest), np.int32)
  mask = np.zeros((len(candidates), longest), bool)
  for i, c in enumerate(candidates):
    ids[i, :len(c)], mask[i, :len(c)] = c, True
  batch_state = jax.tree.map(lambda x: jnp.repeat(x, len(candidates), axis=1), state)
  rest, _ = _forward(config, params, jnp.asarray(ids), batch_state, mask=jnp.asarray(mask))  # every position
  logp = jax.nn.log_softmax(rest[:, :-1], axis=-1)
  nxt = np.asarray(jnp.take_along_axis(logp, jnp.asarray(ids[:, 1:, None]), axis=-1)[..., 0])
  total = np.asarray(first)[ids[:, 0]].astype(np.float64) + np.where(mask[:, 1:], nxt, 0.0).sum(-1)
  return total
