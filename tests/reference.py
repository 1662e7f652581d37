"""The float64 WKV-7 the op tests compare against: docs/rwkv7.md#the-wkv-7-operator in plain NumPy, forward and backward.

Per head, with the state h[key, value] (our layout; the official S = hᵀ):

    u_t   = a_tᵀ h_{t-1}                                   (the removal read-out, float[N_value])
    h_t   = diag(exp(log_w_t)) h_{t-1} + b_t u_tᵀ + k_t v_tᵀ
    out_t = h_tᵀ r_t

`wkv7` is this loop over t, vectorised over batch and heads; `wkv7_vjp` is its reverse-mode
derivative written out by hand from the same three lines, so neither borrows anything from the
JAX code under test. test_wkv7.py checks `wkv7` against the official S-layout formula and
`wkv7_vjp` against central finite differences, both in float64.
"""

import numpy as np


def _f64(*xs):
  return [np.asarray(x, np.float64) for x in xs]


def _states(r, log_w, k, v, a, b, h0):
  """(out float64[B, T, H, N], [h_0, ..., h_T] each float64[B, H, N, N])."""
  r, log_w, k, v, a, b = _f64(r, log_w, k, v, a, b)
  B, T, H, N = r.shape
  h = np.zeros((B, H, N, N)) if h0 is None else np.array(h0, np.float64)
  hs, out = [h], np.empty((B, T, H, N))
  for t in range(T):
    u = np.einsum("bhk,bhkv->bhv", a[:, t], h)
    h = (np.exp(log_w[:, t])[..., None] * h + b[:, t][..., None] * u[..., None, :]
         + k[:, t][..., None] * v[:, t][..., None, :])
    out[:, t] = np.einsum("bhk,bhkv->bhv", r[:, t], h)
    hs.append(h)
  return out, hs


def wkv7(r, log_w, k, v, a, b, h0=None):
  """The recurrence in float64.

  Args:
    r, log_w, k, v, a, b: float[B, T, H, N] (any float dtype; upcast to float64).
    h0: float[B, H, N, N] initial state h[b, h, key, value], or None for zeros.
  Returns:
    (out float64[B, T, H, N], final_state float64[B, H, N, N]).
  """
  out, hs = _states(r, log_w, k, v, a, b, h0)
  return out, hs[-1]


def wkv7_vjp(r, log_w, k, v, a, b, h0, d_out, d_state):
  """Gradients of Σ out·d_out + Σ final_state·d_state with respect to (r, log_w, k, v, a, b, h0), float64.

  Backward of one step, in reverse order over t (dh is ∂/∂h_t, accumulated from the later steps):
    dh += r_t d_out_tᵀ;  dr_t = h_t d_out_t
    dlog_w_t = exp(log_w_t) ⊙ Σ_value (dh ⊙ h_{t-1});  db_t = dh u_t;  du = dhᵀ b_t
    dk_t = dh v_t;  dv_t = dhᵀ k_t;  da_t = h_{t-1} du
    dh ← diag(exp(log_w_t)) dh + a_t duᵀ          (∂/∂h_{t-1})
  """
  out, hs = _states(r, log_w, k, v, a, b, h0)
  r, log_w, k, v, a, b, d_out, d_state = _f64(r, log_w, k, v, a, b, d_out, d_state)
  grads = {name: np.zeros_like(r) for name in ("r", "log_w", "k", "v", "a", "b")}
  dh = d_state.copy()
  for t in reversed(range(r.shape[1])):
    h_prev, h_t = hs[t], hs[t + 1]
    w = np.exp(log_w[:, t])
    grads["r"][:, t] = np.einsum("bhkv,bhv->bhk", h_t, d_out[:, t])
    dh = dh + r[:, t][..., None] * d_out[:, t][..., None, :]
    u = np.einsum("bhk,bhkv->bhv", a[:, t], h_prev)
    du = np.einsum("bhkv,bhk->bhv", dh, b[:, t])
    grads["log_w"][:, t] = w * np.sum(dh * h_prev, axis=-1)
    grads["b"][:, t] = np.einsum("bhkv,bhv->bhk", dh, u)
    grads["k"][:, t] = np.einsum("bhkv,bhv->bhk", dh, v[:, t])
    grads["v"][:, t] = np.einsum("bhkv,bhk->bhv", dh, k[:, t])
    grads["a"][:, t] = np.einsum("bhkv,bhv->bhk", h_prev, du)
    dh = w[..., None] * dh + a[:, t][..., None] * du[..., None, :]
  return grads["r"], grads["log_w"], grads["k"], grads["v"], grads["a"], grads["b"], dh
