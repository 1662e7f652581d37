"""WKV-7 op (impl="reference", the lax.scan) vs the float64 NumPy recurrence of tests/reference.py.

The reference itself is checked first: against the official formula in its own layout S[value, key]
(docs/rwkv7.md#the-wkv-7-operator), S_t = S_{t-1} (diag(w_t) + a_t b_tᵀ) + v_t k_tᵀ, o_t = S_t r_t, and its hand-written
backward against central finite differences, both in float64 (agreement < 1e-9 and < 1e-6).
Tolerances for the op (relative RMS vs float64, docs/rwkv7.md#the-wkv-7-operator): fp32 < 1e-5; bf16 inputs < 1e-2
forward, < 2e-2 gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from helpers import check, wkv7_inputs
from modrwkv_jax.ops import wkv7 as ops

NAMES = ("r", "log_w", "k", "v", "a", "b", "initial_state")


def official_layout_f64(r, log_w, k, v, a, b, h0):
  """The recurrence as RWKV-LM writes it, state S[value, key] = hᵀ, one (batch, head) at a time."""
  r, log_w, k, v, a, b = (np.asarray(x, np.float64) for x in (r, log_w, k, v, a, b))
  B, T, H, N = r.shape
  S = np.swapaxes(np.asarray(h0, np.float64), -1, -2).copy()
  out = np.zeros((B, T, H, N))
  for t in range(T):
    for bi in range(B):
      for h in range(H):
        w = np.exp(log_w[bi, t, h])
        S[bi, h] = S[bi, h] @ (np.diag(w) + np.outer(a[bi, t, h], b[bi, t, h])) + np.outer(v[bi, t, h], k[bi, t, h])
        out[bi, t, h] = S[bi, h] @ r[bi, t, h]
  return out, np.swapaxes(S, -1, -2)


@pytest.fixture(scope="module")
def case():
  return wkv7_inputs(jax.random.key(0), 2, 21, 2, 8)


def test_reference_is_the_official_recurrence(case):
  inputs, h0 = case
  out, state = reference.wkv7(*inputs, h0)
  want_out, want_state = official_layout_f64(*inputs, h0)
  check("float64 reference vs official S-layout loop, out", out, want_out, 1e-9)
  check("float64 reference vs official S-layout loop, state", state, want_state, 1e-9)


def test_reference_backward_matches_finite_differences():
  inputs, h0 = wkv7_inputs(jax.random.key(1), 1, 5, 1, 4)
  xs = [np.asarray(x, np.float64) for x in (*inputs, h0)]
  rng = np.random.RandomState(0)
  d_out, d_state = rng.randn(*xs[0].shape), rng.randn(*xs[6].shape)
  loss = lambda *xs: sum(np.sum(y * d) for y, d in zip(reference.wkv7(*xs), (d_out, d_state)))
  grads = reference.wkv7_vjp(*xs, d_out, d_state)
  eps = 1e-6
  for i, name in enumerate(NAMES):
    fd = np.zeros_like(xs[i])
    for idx in np.ndindex(xs[i].shape):
      plus = [x.copy() for x in xs]; plus[i][idx] += eps
      minus = [x.copy() for x in xs]; minus[i][idx] -= eps
      fd[idx] = (loss(*plus) - loss(*minus)) / (2 * eps)
    check(f"reference d{name} vs central differences", grads[i], fd, 1e-6)


def test_scan_matches_float64(case):
  inputs, h0 = case
  out, state = ops.wkv7(*inputs, h0, impl="reference")
  want_out, want_state = reference.wkv7(*inputs, h0)
  assert out.dtype == jnp.float32 and state.dtype == jnp.float32
  check("scan out vs float64", out, want_out, 1e-5)
  check("scan state vs float64", state, want_state, 1e-5)


def test_zero_initial_state_is_default(case):
  inputs, _ = case
  out, state = ops.wkv7(*inputs)
  want_out, want_state = reference.wkv7(*inputs)
  check("default-state out vs float64", out, want_out, 1e-5)
  check("default-state state vs float64", state, want_state, 1e-5)


def test_split_sequence_carries_state(case):
  inputs, h0 = case
  out1, mid = ops.wkv7(*[x[:, :8] for x in inputs], h0)
  out2, end = ops.wkv7(*[x[:, 8:] for x in inputs], mid)
  want_out, want_state = reference.wkv7(*inputs, h0)
  check("two calls joined, out vs float64", np.concatenate([out1, out2], 1), want_out, 1e-5)
  check("two calls joined, state vs float64", end, want_state, 1e-5)


def test_scan_gradients_match_float64():
  inputs, h0 = wkv7_inputs(jax.random.key(1), 2, 13, 2, 8)
  rng = np.random.RandomState(1)
  d_out, d_state = rng.randn(*inputs[0].shape), rng.randn(*h0.shape)
  def loss(*xs):
    out, state = ops.wkv7(*xs[:6], xs[6], impl="reference")
    return jnp.sum(out * d_out.astype(np.float32)) + jnp.sum(state * d_state.astype(np.float32))
  grads = jax.grad(loss, argnums=tuple(range(7)))(*inputs, h0)
  want = reference.wkv7_vjp(*inputs, h0, d_out, d_state)
  for name, g, w in zip(NAMES, grads, want):
    check(f"scan d{name} vs float64", g, w, 1e-5)


def test_bf16_inputs_within_tolerance(case):
  inputs, h0 = case
  out, state = ops.wkv7(*[x.astype(jnp.bfloat16) for x in inputs], h0)
  assert out.dtype == jnp.bfloat16 and state.dtype == jnp.float32
  check("bf16 inputs, out vs float64", out, reference.wkv7(*inputs, h0)[0], 1e-2)


def test_bad_shapes_and_impl(case):
  inputs, h0 = case
  with pytest.raises(ValueError, match=r"wkv7: k has shape \(2, 20, 2, 8\); expected \[B, T, H, N\]"):
    ops.wkv7(inputs[0], inputs[1], inputs[2][:, :20], *inputs[3:])
  with pytest.raises(ValueError, match=r"initial_state has shape \(2, 2, 8, 7\)"):
    ops.wkv7(*inputs, h0[..., :7])
  with pytest.raises(ValueError, match=r"unknown impl 'fast'; available: auto, .*reference"):
    ops.wkv7(*inputs, impl="fast")
  assert ops.resolve_impl("auto") in ops.available_impls()
