"""Pallas WKV-7 kernels (CPU interpret mode) vs a float64 sequential recurrence; GPU/TPU lowering.

Reference: `lax.scan` of the recurrence in float64 (jax x64), differentiated by `jax.grad`.
Tolerances (DESIGN §2.1, relative RMS): fp32 < 1e-5 forward and gradients; bf16 inputs < 1e-2
forward, < 2e-2 gradients. Both kernel layouts run: "interpret" is the GPU kernel (grid over B·H,
chunk loop inside), "interpret_grid" the TPU kernel (grid over B·H × chunks, state in scratch).
Interpret mode is slow, so shapes are small but cover uneven T, all chunk sizes, N = 64 and small N.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modrwkv_jax.ops import wkv7 as ops
from pallas_kernels.wkv7 import wkv7_pallas
from helpers import rel_rms_err
from test_wkv7 import rwkv7_like_inputs

NAMES = ("r", "log_w", "k", "v", "a", "b", "initial_state")


def _recurrence(r, log_w, k, v, a, b, h0):
  """h_t = diag(e^{log_w_t}) h + b_t (a_tᵀ h) + k_t v_tᵀ, out_t = h_tᵀ r_t; in the inputs' dtype."""
  def step(h, x):
    r_t, lw_t, k_t, v_t, a_t, b_t = x
    h = (jnp.exp(lw_t)[..., None] * h + b_t[..., None] * jnp.einsum("bhk,bhkv->bhv", a_t, h)[..., None, :]
         + k_t[..., None] * v_t[..., None, :])
    return h, jnp.einsum("bhk,bhkv->bhv", r_t, h)
  final, out = jax.lax.scan(step, h0, tuple(jnp.moveaxis(x, 1, 0) for x in (r, log_w, k, v, a, b)))
  return jnp.moveaxis(out, 0, 1), final


def _weights(shape_out, shape_state):
  return (np.random.RandomState(1).randn(*shape_out), np.random.RandomState(2).randn(*shape_state))


def _float64_reference(inputs, h0):
  """(out, final_state, grads of Σ out·w_out + Σ state·w_state) in float64."""
  with jax.enable_x64(True):
    xs = [jnp.asarray(np.asarray(x, np.float64)) for x in (*inputs, h0)]
    w_out, w_state = _weights(xs[0].shape, xs[6].shape)
    loss = lambda *xs: sum(jnp.sum(y * w) for y, w in zip(_recurrence(*xs), (w_out, w_state)))
    out, final = _recurrence(*xs)
    grads = jax.grad(loss, argnums=tuple(range(7)))(*xs)
    return np.asarray(out), np.asarray(final), [np.asarray(g) for g in grads]


def _pallas_value_and_grads(inputs, h0, chunk_size, backend):
  w_out, w_state = (jnp.asarray(w, jnp.float32) for w in _weights(inputs[0].shape, h0.shape))
  def loss(*xs):
    out, final = wkv7_pallas(*xs, chunk_size, backend)
    return jnp.sum(out.astype(jnp.float32) * w_out) + jnp.sum(final * w_state)
  out, final = wkv7_pallas(*inputs, h0, chunk_size, backend)
  grads = jax.jit(jax.grad(loss, argnums=tuple(range(7))))(*inputs, h0)  # jit(grad) through custom_vjp
  return out, final, grads


@pytest.mark.parametrize("backend", ["interpret", "interpret_grid"])
@pytest.mark.parametrize("chunk_size,B,T,H,N,with_state", [
    (16, 2, 45, 3, 64, True),
    (32, 1, 100, 2, 16, False),
    (64, 1, 100, 1, 8, True),
])
def test_pallas_matches_float64_recurrence(backend, chunk_size, B, T, H, N, with_state):
  inputs, h0 = rwkv7_like_inputs(jax.random.key(chunk_size + N), B, T, H, N)
  if not with_state:
    h0 = jnp.zeros_like(h0)
  want_out, want_final, want_grads = _float64_reference(inputs, h0)
  out, final, grads = _pallas_value_and_grads(inputs, h0, chunk_size, backend)
  assert out.dtype == jnp.float32 and final.dtype == jnp.float32
  assert rel_rms_err(out, want_out) < 1e-5, rel_rms_err(out, want_out)
  assert rel_rms_err(final, want_final) < 1e-5, rel_rms_err(final, want_final)
  for name, g, w in zip(NAMES, grads, want_grads):
    assert g.shape == w.shape
    err = rel_rms_err(g, w)
    assert err < 1e-5, (name, err)


def test_pallas_bf16_inputs():
  inputs, h0 = rwkv7_like_inputs(jax.random.key(5), 1, 40, 2, 16)
  want_out, _, want_grads = _float64_reference(inputs, h0)
  bf = [x.astype(jnp.bfloat16) for x in inputs]
  out, final, grads = _pallas_value_and_grads(bf, h0, 16, "interpret")
  assert out.dtype == jnp.bfloat16 and final.dtype == jnp.float32
  assert rel_rms_err(out, want_out) < 1e-2
  for name, g, w in zip(NAMES, grads, want_grads):
    assert g.dtype == (jnp.float32 if name == "initial_state" else jnp.bfloat16), name
    assert rel_rms_err(g, w) < 2e-2, name


def test_strongest_decay_at_chunk_64_stays_finite():
  """log_w at RWKV-7's bound −0.607 everywhere: Γ spans −38.9 per chunk; no overflow, no NaN."""
  inputs, h0 = rwkv7_like_inputs(jax.random.key(9), 1, 128, 1, 16)
  inputs = (inputs[0], jnp.full_like(inputs[1], -0.6065306597), *inputs[2:])
  want_out, want_final, want_grads = _float64_reference(inputs, h0)
  out, final, grads = _pallas_value_and_grads(inputs, h0, 64, "interpret")
  assert all(bool(jnp.isfinite(x).all()) for x in (out, final, *grads))
  assert rel_rms_err(out, want_out) < 1e-5 and rel_rms_err(final, want_final) < 1e-5
  assert max(rel_rms_err(g, w) for g, w in zip(grads, want_grads)) < 1e-5


def test_pallas_through_public_op_and_residual_memory():
  """`wkv7(impl="pallas")` dispatches here; the vjp keeps only inputs + per-chunk entering states."""
  B, T, H, N, C = 1, 64, 2, 16, 16
  inputs, h0 = rwkv7_like_inputs(jax.random.key(7), B, T, H, N)
  out, final = ops.wkv7(*inputs, h0, impl="pallas", chunk_size=C)
  want_out, want_final = ops.wkv7(*inputs, h0, impl="reference")
  assert rel_rms_err(out, want_out) < 1e-5 and rel_rms_err(final, want_final) < 1e-5
  _, vjp_fn = jax.vjp(lambda *xs: ops.wkv7(*xs[:6], xs[6], impl="pallas", chunk_size=C), *inputs, h0)
  saved = sum(x.size for x in jax.tree.leaves(vjp_fn))
  assert saved <= 6 * B * T * H * N + (T // C + 1) * B * H * N * N


@pytest.mark.parametrize("backend,platform", [("triton", "cuda"), ("tpu", "tpu")])
def test_kernels_lower_for_gpu_and_tpu(backend, platform):
  """Forward and backward kernels trace and lower (Triton IR / Mosaic TPU) without the device."""
  inputs, h0 = rwkv7_like_inputs(jax.random.key(0), 1, 64, 2, 64)
  inputs = [x.astype(jnp.bfloat16) for x in inputs]
  loss = lambda *xs: wkv7_pallas(*xs, 32, backend)[0].astype(jnp.float32).sum()
  lowered = jax.jit(jax.grad(loss, argnums=tuple(range(7)))).trace(*inputs, h0).lower(
      lowering_platforms=(platform,))
  text = lowered.as_text()
  marker = "__gpu$xla.gpu.triton" if backend == "triton" else "tpu_custom_call"
  assert text.count(marker) == 2, f"expected forward + backward kernels in the {platform} module"


def test_unknown_backend():
  inputs, h0 = rwkv7_like_inputs(jax.random.key(0), 1, 16, 1, 8)
  with pytest.raises(ValueError, match="unknown backend 'cuda'"):
    wkv7_pallas(*inputs, h0, 16, "cuda")
