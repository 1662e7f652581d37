"""Chunked WKV-7 (plain-JAX WY form, forward and hand-written backward) vs the float64 recurrence.

Reference: tests/reference.py (`wkv7`, and `wkv7_vjp` for the gradients of Σ out·d_out + Σ state·d_state),
never our own scan. docs/rwkv7.md#the-wkv-7-operator tolerances (relative RMS vs float64): fp32 < 1e-5 forward and
gradients; bf16 inputs < 1e-2 forward, < 2e-2 gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from helpers import check, wkv7_inputs
from modrwkv_jax.ops import wkv7 as ops

NAMES = ("r", "log_w", "k", "v", "a", "b", "initial_state")


def _cotangents(inputs, h0):
  rng = np.random.RandomState(11)
  return rng.randn(*inputs[0].shape), rng.randn(*h0.shape)


def _float64(inputs, h0):
  """(out, final_state, grads) of the float64 reference for the cotangents of `_cotangents`."""
  d_out, d_state = _cotangents(inputs, h0)
  return (*reference.wkv7(*inputs, h0), reference.wkv7_vjp(*inputs, h0, d_out, d_state))


def _chunked(inputs, h0, chunk_size):
  """(out, final_state, grads) of impl="chunked", compiled once per shape."""
  d_out, d_state = (jnp.asarray(d, jnp.float32) for d in _cotangents(inputs, h0))
  def loss(*xs):
    out, state = ops.wkv7(*xs[:6], xs[6], impl="chunked", chunk_size=chunk_size)
    return jnp.sum(out.astype(jnp.float32) * d_out) + jnp.sum(state * d_state)
  @jax.jit
  def run(*xs):
    return (*ops.wkv7(*xs[:6], xs[6], impl="chunked", chunk_size=chunk_size),
            jax.grad(loss, argnums=tuple(range(7)))(*xs))
  return run(*inputs, h0)


# T deliberately not a multiple of the chunk: the end padding is exercised every time.
@pytest.mark.parametrize("chunk_size,T", [(16, 37), (32, 45), (64, 70)])
def test_chunked_matches_float64(chunk_size, T):
  inputs, h0 = wkv7_inputs(jax.random.key(chunk_size), 2, T, 2, 16)
  want_out, want_state, want_grads = _float64(inputs, h0)
  out, state, grads = _chunked(inputs, h0, chunk_size)
  assert out.dtype == jnp.float32 and state.dtype == jnp.float32
  check(f"chunked C={chunk_size} out", out, want_out, 1e-5)
  check(f"chunked C={chunk_size} state", state, want_state, 1e-5)
  for name, g, w in zip(NAMES, grads, want_grads):
    check(f"chunked C={chunk_size} d{name}", g, w, 1e-5)


def test_chunked_zero_initial_state():
  inputs, _ = wkv7_inputs(jax.random.key(3), 1, 50, 2, 8)
  out, state = ops.wkv7(*inputs, impl="chunked", chunk_size=16)
  want_out, want_state = reference.wkv7(*inputs)
  check("chunked, no initial state, out", out, want_out, 1e-5)
  check("chunked, no initial state, state", state, want_state, 1e-5)


def test_chunked_bf16_inputs():
  inputs, h0 = wkv7_inputs(jax.random.key(5), 1, 40, 2, 16)
  want_out, _, want_grads = _float64(inputs, h0)
  out, state, grads = _chunked([x.astype(jnp.bfloat16) for x in inputs], h0, 16)
  assert out.dtype == jnp.bfloat16 and state.dtype == jnp.float32
  check("chunked bf16 out", out, want_out, 1e-2)
  for name, g, w in zip(NAMES, grads, want_grads):
    assert g.dtype == (jnp.float32 if name == "initial_state" else jnp.bfloat16), name
    check(f"chunked bf16 d{name}", g, w, 2e-2)


def test_chunked_padding_leaves_state_unchanged():
  inputs, s0 = wkv7_inputs(jax.random.key(6), 1, 16, 1, 8)
  r, _, _, v, a, _ = inputs
  zeros = jnp.zeros_like(r)
  _, state = ops.wkv7(r, zeros, zeros, v, a, zeros, s0, impl="chunked")
  np.testing.assert_array_equal(state, s0)


def test_bad_chunk_size():
  inputs, s0 = wkv7_inputs(jax.random.key(6), 1, 4, 1, 8)
  with pytest.raises(ValueError, match="chunk_size must be 16, 32 or 64, got 12"):
    ops.wkv7(*inputs, s0, impl="chunked", chunk_size=12)


def test_chunked_residuals_are_inputs_plus_chunk_states():
  """jax.vjp's residuals (the leaves of the returned vjp function) bound the training memory."""
  B, T, H, N, C = 1, 128, 2, 16, 16
  inputs, s0 = wkv7_inputs(jax.random.key(7), B, T, H, N)
  def saved(impl):
    _, vjp_fn = jax.vjp(lambda *xs: ops.wkv7(*xs[:6], xs[6], impl=impl, chunk_size=C), *inputs, s0)
    return sum(x.size for x in jax.tree.leaves(vjp_fn))
  bound = 6 * B * T * H * N + (T // C + 1) * B * H * N * N  # inputs + entering states + initial state
  assert saved("chunked") <= bound
  assert saved("reference") > T * B * H * N * N  # the scan keeps every step's state


def _scan_lengths(jaxpr) -> list[int]:
  """Lengths of every `scan` in a closed jaxpr, nested ones included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      found.append(eqn.params["length"])
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
        if hasattr(sub, "eqns"):
          found += _scan_lengths(sub)
  return found


@pytest.mark.parametrize("packed", [False, True], ids=["one-segment", "packed"])
def test_scan_fwd_chunked_vjp(packed):
  """The CPU's "auto": the scan's forward when not differentiated, the chunked gradient under autodiff.

  Both against float64; which algorithm runs is read from the traced program: the per-step scan has
  length T, the chunked state pass length ⌈T/C⌉ (docs: ops/wkv7.py's choice table)."""
  T, C = 37, 16
  inputs, h0 = wkv7_inputs(jax.random.key(21), 2, T, 2, 8)
  seg = np.repeat([[1] * 15 + [2] * 12 + [3] * 10], 2, 0).astype(np.int32) if packed else None
  fn = lambda *xs: ops.wkv7(*xs, impl="scan_fwd_chunked_vjp", chunk_size=C, segment_ids=seg)
  d_out, d_state = (jnp.asarray(d, jnp.float32) for d in _cotangents(inputs, h0))
  def loss(*xs):
    o, s = fn(*xs)
    return jnp.sum(o * d_out) + jnp.sum(s * d_state)
  out, state = jax.jit(fn)(*inputs, h0)
  grads = jax.jit(jax.grad(loss, argnums=tuple(range(7))))(*inputs, h0)

  if seg is None:
    want_out, want_state, want_grads = _float64(inputs, h0)
    check("scan_fwd_chunked_vjp out", out, want_out, 1e-5)
    check("scan_fwd_chunked_vjp state", state, want_state, 1e-5)
    for name, g, w in zip(NAMES, grads, want_grads):
      check(f"scan_fwd_chunked_vjp d{name}", g, w, 1e-5)
  else:  # packed: against the plain scan's values and autodiff (themselves checked against float64 elsewhere)
    ref = lambda *xs: ops.wkv7(*xs, impl="reference", segment_ids=seg)
    def ref_loss(*xs):
      o, s = ref(*xs)
      return jnp.sum(o * d_out) + jnp.sum(s * d_state)
    want_out, want_state = ref(*inputs, h0)
    check("packed scan_fwd_chunked_vjp out vs scan", out, want_out, 1e-5)
    check("packed scan_fwd_chunked_vjp state vs scan", state, want_state, 1e-5)
    for name, g, w in zip(NAMES, grads, jax.grad(ref_loss, argnums=tuple(range(7)))(*inputs, h0)):
      check(f"packed scan_fwd_chunked_vjp d{name} vs scan autodiff", g, w, 1e-5)

  assert _scan_lengths(jax.make_jaxpr(fn)(*inputs, h0).jaxpr) == [T]  # forward only: the per-step scan
  grad_scans = _scan_lengths(jax.make_jaxpr(jax.grad(loss, argnums=tuple(range(7))))(*inputs, h0).jaxpr)
  assert T not in grad_scans and -(-T // C) in grad_scans, grad_scans  # differentiated: chunked only


def test_auto_picks_per_use_on_cpu():
  assert jax.default_backend() != "cpu" or ops.resolve_impl("auto") == "scan_fwd_chunked_vjp"
