"""Chunked WKV-7 (forward and hand-written backward) vs the lax.scan reference and a float64 loop.

DESIGN §2.1 tolerances (relative RMS): fp32 < 1e-5 forward and gradients; bf16 inputs vs the fp32
reference < 1e-2 forward, < 2e-2 gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modrwkv_jax.ops import wkv7 as ops
from helpers import rel_rms_err
from test_wkv7 import official_recurrence_f64, rwkv7_like_inputs

ARGS = tuple(range(7))


def _loss(impl, chunk_size, w_out, w_state):
  def loss(r, log_w, k, v, a, b, s0):
    out, state = ops.wkv7(r, log_w, k, v, a, b, s0, impl=impl, chunk_size=chunk_size)
    return jnp.sum(out.astype(jnp.float32) * w_out) + jnp.sum(state * w_state)
  return loss


def _value_and_grads(impl, chunk_size, inputs, s0):
  out, state = ops.wkv7(*inputs, s0, impl=impl, chunk_size=chunk_size)
  w_out = jax.random.normal(jax.random.key(11), out.shape)
  w_state = jax.random.normal(jax.random.key(12), state.shape)
  grads = jax.grad(_loss(impl, chunk_size, w_out, w_state), argnums=ARGS)(*inputs, s0)
  return out, state, grads


# T deliberately not a multiple of the chunk: the end padding is exercised every time.
@pytest.mark.parametrize("chunk_size,T", [(16, 37), (32, 45), (64, 70)])
def test_chunked_matches_reference_fp32(chunk_size, T):
  inputs, s0 = rwkv7_like_inputs(jax.random.key(chunk_size), 2, T, 2, 16)
  want = _value_and_grads("reference", chunk_size, inputs, s0)
  got = jax.jit(lambda *xs: _value_and_grads("chunked", chunk_size, xs[:6], xs[6]))(*inputs, s0)
  assert rel_rms_err(got[0], want[0]) < 1e-5
  assert rel_rms_err(got[1], want[1]) < 1e-5
  for name, g, w in zip(("r", "log_w", "k", "v", "a", "b", "state"), got[2], want[2]):
    err = rel_rms_err(g, w)
    assert err < 1e-5, (name, err)


def test_chunked_matches_float64_loop():
  inputs, s0 = rwkv7_like_inputs(jax.random.key(3), 1, 50, 2, 8)
  out, state = ops.wkv7(*inputs, s0, impl="chunked", chunk_size=16)
  ref_out, ref_state = official_recurrence_f64(*inputs, s0)
  assert rel_rms_err(out, ref_out) < 1e-5 and rel_rms_err(state, ref_state) < 1e-5


def test_chunked_bf16_inputs():
  inputs, s0 = rwkv7_like_inputs(jax.random.key(5), 1, 40, 2, 16)
  want = _value_and_grads("reference", 16, inputs, s0)
  bf = [x.astype(jnp.bfloat16) for x in inputs]
  got = _value_and_grads("chunked", 16, bf, s0)
  assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.float32
  assert rel_rms_err(got[0], want[0]) < 1e-2
  for name, g, w in zip(("r", "log_w", "k", "v", "a", "b", "state"), got[2], want[2]):
    assert g.dtype == (jnp.float32 if name == "state" else jnp.bfloat16)
    assert rel_rms_err(g, w) < 2e-2, name


def test_chunked_padding_leaves_state_unchanged():
  inputs, s0 = rwkv7_like_inputs(jax.random.key(6), 1, 16, 1, 8)
  r, _, _, v, a, _ = inputs
  zeros = jnp.zeros_like(r)
  _, state = ops.wkv7(r, zeros, zeros, v, a, zeros, s0, impl="chunked")
  np.testing.assert_array_equal(state, s0)


def test_bad_chunk_size():
  inputs, s0 = rwkv7_like_inputs(jax.random.key(6), 1, 4, 1, 8)
  with pytest.raises(ValueError, match="chunk_size must be 16, 32 or 64, got 12"):
    ops.wkv7(*inputs, s0, impl="chunked", chunk_size=12)


def test_chunked_residuals_are_inputs_plus_chunk_states():
  """jax.vjp's residuals (the leaves of the returned vjp function) bound the training memory."""
  B, T, H, N, C = 1, 128, 2, 16, 16
  inputs, s0 = rwkv7_like_inputs(jax.random.key(7), B, T, H, N)
  def saved(impl):
    _, vjp_fn = jax.vjp(lambda *xs: ops.wkv7(*xs[:6], xs[6], impl=impl, chunk_size=C), *inputs, s0)
    return sum(x.size for x in jax.tree.leaves(vjp_fn))
  bound = 6 * B * T * H * N + (T // C + 1) * B * H * N * N  # inputs + entering states + initial state
  assert saved("chunked") <= bound
  assert saved("reference") > T * B * H * N * N  # the scan keeps every step's state
