"""WKV-7 op vs a float64 NumPy loop written in the official layout S[value, key] (DESIGN §2.1):

    S_t = S_{t-1} (diag(w_t) + a_t b_tᵀ) + v_t k_tᵀ,   o_t = S_t r_t,   w_t = exp(log_w_t)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modrwkv_jax.ops import wkv7 as ops
from helpers import rel_rms_err


def official_recurrence_f64(r, log_w, k, v, a, b, s0_hkv):
  """float64 loop; inputs [B, T, H, N], s0 in our layout [B, H, key, value]; returns ours' layout."""
  r, log_w, k, v, a, b = (np.asarray(x, np.float64) for x in (r, log_w, k, v, a, b))
  B, T, H, N = r.shape
  S = np.swapaxes(np.asarray(s0_hkv, np.float64), -1, -2).copy()  # -> S[b, h, value, key]
  out = np.zeros((B, T, H, N))
  for t in range(T):
    for bi in range(B):
      for h in range(H):
        w = np.exp(log_w[bi, t, h])
        S[bi, h] = S[bi, h] @ (np.diag(w) + np.outer(a[bi, t, h], b[bi, t, h])) + np.outer(v[bi, t, h], k[bi, t, h])
        out[bi, t, h] = S[bi, h] @ r[bi, t, h]
  return out, np.swapaxes(S, -1, -2)


def rwkv7_like_inputs(key, B, T, H, N):
  """Drawn like RWKV-7 does: log_w = -0.6065·σ(2·N(0,1)), κ̂ L2-normalised, a = -κ̂, b = κ̂·σ(·)."""
  ks = jax.random.split(key, 7)
  r, k, v = (jax.random.normal(kk, (B, T, H, N)) for kk in ks[:3])
  log_w = -0.6065306597 * jax.nn.sigmoid(2 * jax.random.normal(ks[3], (B, T, H, N)))
  kappa = jax.random.normal(ks[4], (B, T, H, N))
  kappa = kappa / jnp.linalg.norm(kappa, axis=-1, keepdims=True)
  alpha = jax.nn.sigmoid(jax.random.normal(ks[5], (B, T, H, N)))
  s0 = 0.3 * jax.random.normal(ks[6], (B, H, N, N))
  return (r, log_w, k, v, -kappa, kappa * alpha), s0


@pytest.fixture(scope="module")
def case():
  return rwkv7_like_inputs(jax.random.key(0), 2, 21, 2, 8)


def test_reference_matches_float64_official_recurrence(case):
  inputs, s0 = case
  out, state = ops.wkv7(*inputs, s0, impl="reference")
  ref_out, ref_state = official_recurrence_f64(*inputs, s0)
  assert out.dtype == jnp.float32 and state.dtype == jnp.float32
  assert rel_rms_err(out, ref_out) < 1e-5
  assert rel_rms_err(state, ref_state) < 1e-5


def test_zero_initial_state_is_default(case):
  inputs, _ = case
  out, state = ops.wkv7(*inputs)
  ref_out, ref_state = official_recurrence_f64(*inputs, np.zeros((2, 2, 8, 8)))
  assert rel_rms_err(out, ref_out) < 1e-5 and rel_rms_err(state, ref_state) < 1e-5


def test_split_sequence_carries_state(case):
  inputs, s0 = case
  full_out, full_state = ops.wkv7(*inputs, s0)
  first = [x[:, :8] for x in inputs]
  second = [x[:, 8:] for x in inputs]
  out1, mid = ops.wkv7(*first, s0)
  out2, end = ops.wkv7(*second, mid)
  np.testing.assert_allclose(np.concatenate([out1, out2], 1), full_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(end, full_state, rtol=1e-5, atol=1e-5)


def test_bf16_inputs_within_tolerance(case):
  inputs, s0 = case
  bf = [x.astype(jnp.bfloat16) for x in inputs]
  out, state = ops.wkv7(*bf, s0)
  assert out.dtype == jnp.bfloat16 and state.dtype == jnp.float32
  ref_out, _ = official_recurrence_f64(*inputs, s0)
  assert rel_rms_err(out, ref_out) < 1e-2


def test_gradients_match_float64_finite_differences():
  inputs, s0 = rwkv7_like_inputs(jax.random.key(1), 1, 5, 1, 4)
  def loss(*xs):
    out, state = ops.wkv7(*xs[:6], xs[6], impl="reference")
    return jnp.sum(out * jnp.cos(out)) + jnp.sum(state**2)
  grads = jax.grad(loss, argnums=tuple(range(7)))(*inputs, s0)
  def loss64(*xs):
    out, state = official_recurrence_f64(*xs[:6], xs[6])
    return np.sum(out * np.cos(out)) + np.sum(state**2)
  xs = [np.asarray(x, np.float64) for x in (*inputs, s0)]
  eps = 1e-6
  for i, g in enumerate(grads):
    fd = np.zeros_like(xs[i])
    for idx in np.ndindex(xs[i].shape):
      plus = [x.copy() for x in xs]; plus[i][idx] += eps
      minus = [x.copy() for x in xs]; minus[i][idx] -= eps
      fd[idx] = (loss64(*plus) - loss64(*minus)) / (2 * eps)
    assert rel_rms_err(g, fd) < 1e-4, i


def test_bad_shapes_and_impl(case):
  inputs, s0 = case
  with pytest.raises(ValueError, match=r"wkv7: k has shape \(2, 20, 2, 8\); expected \[B, T, H, N\]"):
    ops.wkv7(inputs[0], inputs[1], inputs[2][:, :20], *inputs[3:])
  with pytest.raises(ValueError, match=r"initial_state has shape \(2, 2, 8, 7\)"):
    ops.wkv7(*inputs, s0[..., :7])
  with pytest.raises(ValueError, match=r"unknown impl 'fast'; available: auto, .*reference"):
    ops.wkv7(*inputs, impl="fast")
  assert ops.resolve_impl("auto") in ops.available_impls()
