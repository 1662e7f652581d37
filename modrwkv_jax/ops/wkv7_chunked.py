"""Chunked WKV-7 in plain JAX: the WY/UT form of docs/rwkv7.md#the-wkv-7-operator with a hand-written backward.

Within a chunk of C steps everything is dense C×C and C×N algebra, parallel over batch, heads and
chunks; only the state hand-off between chunks is a `lax.scan` (forward) / reverse scan (backward).
`jax.custom_vjp` keeps as residuals the inputs and the per-chunk entering states (float32), so
training memory is O(T·H·N + T/C·H·N²) instead of a per-step state history.

Notation per head and chunk (i, j index steps in the chunk, d the key channel):
  g = log_w <= 0,  Γ = inclusive cumsum of g,  Γ⁻ = Γ − g,  Γ_C = Γ at the last step,
  m = Γ at mid-chunk (centring: factorised exponents e^{Γ_i − m}·e^{m − Γ_j} stay within
      e^{±0.607·C/2}, i.e. e^{±19.4} for C = 64, far from float32 overflow at e^{88}).

Packed sequences: with `segment_ids` the state restarts from zero wherever the id changes. Inside a
chunk this is exact masking, not a sequential fallback (pallas_kernels/wkv7/chunk_math.py has the
same algebra): with s_i = the chunk-local inclusive count of segment starts,
  A_rk, A_rb, A_ak, A_ab  keep only pairs with s_i == s_j (one segment);
  r_h, a_h (read-outs of the entering state)  keep rows with s_i == 0 (before the chunk's first start);
  kg, bg (writes into the exit state)  keep rows with s_i == s_{C−1} (the chunk's last segment);
  e^{Γ_C} h (the carried state)  is kept only when s_{C−1} == 0 (no start in the chunk).
The hand-written backward uses the same masked pieces; the formulas do not change (masks are constants).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.wkv7.chunk_math import segment_counts


def _chunk(x, n_chunks, size):
  """[B, T, H, N] -> float32 [B, H, n_chunks, C, N]."""
  b, _, h, n = x.shape
  return jnp.moveaxis(x.astype(jnp.float32).reshape(b, n_chunks, size, h, n), 3, 1)


def _unchunk(x, length):
  """[B, H, n_chunks, C, N] -> [B, T, H, N] cut to `length`."""
  b, h, nc, c, n = x.shape
  return jnp.moveaxis(x, 1, 3).reshape(b, nc * c, h, n)[:, :length]


def _intra(r, g, k, v, a, b, seg=None):
  """Per-chunk quantities that do not depend on the entering state (all chunks at once).

  Inputs float32 [B, H, nC, C, N]; seg int32[B, 1, nC, C] (`segment_counts`) or None.
  Returns a dict of the pieces both passes use.
  """
  C = r.shape[-2]
  G = jnp.cumsum(g, axis=-2)  # Γ
  Gm = G - g  # Γ⁻
  Gc = G[..., -1:, :]  # Γ_C, [.., 1, N]
  mid = G[..., C // 2:C // 2 + 1, :]  # centring point m
  rc, ac = r * jnp.exp(G - mid), a * jnp.exp(Gm - mid)
  kc, bc = k * jnp.exp(mid - G), b * jnp.exp(mid - G)
  incl = jnp.tril(jnp.ones((C, C), bool))
  strict = jnp.tril(jnp.ones((C, C), bool), -1)
  eG, eGm = jnp.exp(G), jnp.exp(Gm)  # factors of the entering state's read-outs
  decay_to_end = jnp.exp(Gc - G)  # e^{Γ_C − Γ} <= 1
  decay = jnp.exp(Gc)  # e^{Γ_C}, the entering state's decay to the chunk's end, [.., 1, N]
  if seg is not None:
    same = seg[..., :, None] == seg[..., None, :]  # [B, 1, nC, C, C]: one segment
    incl, strict = incl & same, strict & same
    first = (seg == 0)[..., None]  # no start at or before i: row i reads the entering state
    last = (seg == seg[..., -1:])[..., None]  # row i is in the last segment: it writes the exit state
    keep = (seg[..., -1:] == 0)[..., None]  # [B, 1, nC, 1, 1]: no start, the entering state survives
    eG, eGm = jnp.where(first, eG, 0.0), jnp.where(first, eGm, 0.0)
    decay_to_end = jnp.where(last, decay_to_end, 0.0)
    decay = jnp.where(keep, decay, 0.0)
  mat = lambda x, y, m: jnp.where(m, jnp.einsum("...id,...jd->...ij", x, y), 0.0)
  A_rk, A_rb = mat(rc, kc, incl), mat(rc, bc, incl)
  A_ak, A_ab = mat(ac, kc, strict), mat(ac, bc, strict)
  eye = jnp.eye(C, dtype=jnp.float32)
  # T = (I − A_ab)⁻¹, unit lower triangular: forward substitution against I.
  Tm = jax.lax.linalg.triangular_solve(eye - A_ab, jnp.broadcast_to(eye, A_ab.shape), left_side=True,
                                       lower=True, unit_diagonal=True)
  a_h = a * eGm  # a ⊙ e^{Γ⁻}
  return dict(G=G, Gm=Gm, Gc=Gc, mid=mid, rc=rc, ac=ac, kc=kc, bc=bc, A_rk=A_rk, A_rb=A_rb, A_ak=A_ak,
              A_ab=A_ab, T=Tm, r_h=r * eG, a_h=a_h, kg=k * decay_to_end, bg=b * decay_to_end,
              W=Tm @ a_h, U0=Tm @ (A_ak @ v), incl=incl, strict=strict, eG=eG, eGm=eGm,
              decay_to_end=decay_to_end, decay=decay)


def _state_pass(q, v, h0):
  """Sequential over chunks: entering states h_c [nC, B, H, N, N] and the final state."""
  def step(h, x):
    W, U0, kg, bg, decay, vv = x
    U = U0 + W @ h
    h_next = decay[..., 0, :, None] * h + jnp.swapaxes(kg, -1, -2) @ vv + jnp.swapaxes(bg, -1, -2) @ U
    return h_next, h
  xs = tuple(jnp.moveaxis(x, 2, 0) for x in (q["W"], q["U0"], q["kg"], q["bg"], q["decay"], v))
  final, entering = jax.lax.scan(step, h0, xs)
  return jnp.moveaxis(entering, 0, 2), final  # [B, H, nC, N, N]


def _forward(r, log_w, k, v, a, b, h0, seg, chunk_size):
  B, T, H, N = r.shape
  nc = -(-T // chunk_size)
  pad = nc * chunk_size - T
  # Padding steps: log_w = 0 (no decay) and k = v = a = b = 0, so the state passes unchanged.
  padded = [jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (r, log_w, k, v, a, b)]
  r_, g_, k_, v_, a_, b_ = (_chunk(x, nc, chunk_size) for x in padded)
  q = _intra(r_, g_, k_, v_, a_, b_, seg)
  hs, final = _state_pass(q, v_, h0.astype(jnp.float32))
  U = q["U0"] + q["W"] @ hs
  out = q["r_h"] @ hs + q["A_rk"] @ v_ + q["A_rb"] @ U
  return _unchunk(out, T).astype(v.dtype), final, hs


def wkv7_chunked(r, log_w, k, v, a, b, initial_state, chunk_size=16, segment_ids=None):
  """Chunked WKV-7; same contract as `wkv7_reference` (see modrwkv_jax.ops.wkv7).

  Args:
    r, log_w, k, v, a, b: float[B, T, H, N]; initial_state: float32[B, H, N, N] [key, value].
    chunk_size: C.
    segment_ids: int[B, T] or None (one segment per row): the state restarts from zero wherever the
      id changes; initial_state applies to each row's first segment.
  Returns:
    (out float[B, T, H, N] in v.dtype, final_state float32[B, H, N, N] after each row's last step).
  """
  return _wkv7_chunked(r, log_w, k, v, a, b, initial_state, chunk_segments(segment_ids, chunk_size), chunk_size)


def chunk_segments(segment_ids, chunk_size: int):
  """int[B, T] segment ids (or None) -> the chunk-local inclusive start counts s [B, 1, nC, C] (or None)."""
  if segment_ids is None:
    return None
  B, T = segment_ids.shape
  nc = -(-T // chunk_size)
  return segment_counts(segment_ids, nc * chunk_size, chunk_size).reshape(B, 1, nc, chunk_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _wkv7_chunked(r, log_w, k, v, a, b, initial_state, seg, chunk_size):
  out, final, _ = _forward(r, log_w, k, v, a, b, initial_state, seg, chunk_size)
  return out, final


def _fwd(r, log_w, k, v, a, b, initial_state, seg, chunk_size):
  out, final, hs = _forward(r, log_w, k, v, a, b, initial_state, seg, chunk_size)
  return (out, final), (r, log_w, k, v, a, b, initial_state, seg, hs)


def _bwd(chunk_size, res, cotangents):
  r, log_w, k, v, a, b, h0, seg, hs = res
  d_out, d_final = cotangents
  B, T, H, N = r.shape
  nc = hs.shape[2]
  pad = nc * chunk_size - T
  padded = [jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (r, log_w, k, v, a, b, d_out)]
  r_, g_, k_, v_, a_, b_, dO = (_chunk(x, nc, chunk_size) for x in padded)
  q = _intra(r_, g_, k_, v_, a_, b_, seg)
  U = q["U0"] + q["W"] @ hs
  tr = lambda x: jnp.swapaxes(x, -1, -2)
  P = tr(q["A_rb"]) @ dO  # A_rbᵀ dO
  Q = tr(q["r_h"]) @ dO  # (r⊙e^Γ)ᵀ dO

  # Reverse pass over chunks: dh' entering each chunk from its successor.
  def step(dh_next, x):
    P_c, Q_c, T_c, bg, a_h, decay = x
    dX = tr(T_c) @ (P_c + bg @ dh_next)
    dh = Q_c + tr(a_h) @ dX + decay[..., 0, :, None] * dh_next
    return dh, dh_next
  xs = tuple(jnp.moveaxis(x, 2, 0) for x in (P, Q, q["T"], q["bg"], q["a_h"], q["decay"]))
  d_h0, dh_next = jax.lax.scan(step, d_final.astype(jnp.float32), xs, reverse=True)
  dhp = jnp.moveaxis(dh_next, 0, 2)  # dh' of every chunk, [B, H, nC, N, N]

  dU = P + q["bg"] @ dhp
  dX = tr(q["T"]) @ dU
  incl, strict = q["incl"], q["strict"]
  dA_rk = jnp.where(incl, dO @ tr(v_), 0.0)
  dA_rb = jnp.where(incl, dO @ tr(U), 0.0)
  dA_ak = jnp.where(strict, dX @ tr(v_), 0.0)
  dA_ab = jnp.where(strict, dX @ tr(U), 0.0)
  G, Gm, mid = q["G"], q["Gm"], q["mid"]
  decay_to_end = q["decay_to_end"]
  dv = tr(q["A_rk"]) @ dO + tr(q["A_ak"]) @ dX + q["kg"] @ dhp
  dr = (dA_rk @ q["kc"] + dA_rb @ q["bc"]) * jnp.exp(G - mid) + (dO @ tr(hs)) * q["eG"]
  da = (dA_ak @ q["kc"] + dA_ab @ q["bc"]) * jnp.exp(Gm - mid) + (dX @ tr(hs)) * q["eGm"]
  V_dh = v_ @ tr(dhp)  # [.., C, N_k]
  U_dh = U @ tr(dhp)
  dk = (tr(dA_rk) @ q["rc"] + tr(dA_ak) @ q["ac"]) * jnp.exp(mid - G) + V_dh * decay_to_end
  db = (tr(dA_rb) @ q["rc"] + tr(dA_ab) @ q["ac"]) * jnp.exp(mid - G) + U_dh * decay_to_end
  dG = dr * r_ - dk * k_ - db * b_  # dΓ_i
  dGm = da * a_  # dΓ⁻_i
  dGc = (V_dh * q["kg"] + U_dh * q["bg"]).sum(-2) + q["decay"][..., 0, :] * (hs * dhp).sum(-1)  # [.., N_k]
  # Γ_i = Σ_{t<=i} g_t, Γ⁻_i = Σ_{t<i} g_t, Γ_C = Σ_t g_t.
  rev_cumsum = lambda x: jnp.flip(jnp.cumsum(jnp.flip(x, -2), -2), -2)
  dg = rev_cumsum(dG) + rev_cumsum(dGm) - dGm + dGc[..., None, :]
  grads = [_unchunk(x, T) for x in (dr, dg, dk, dv, da, db)]
  grads = [g.astype(x.dtype) for g, x in zip(grads, (r, log_w, k, v, a, b))]
  return (*grads, d_h0.astype(h0.dtype), None)


_wkv7_chunked.defvjp(_fwd, _bwd)

# The custom VJP's rules, for implementations that share this gradient with another primal
# (ops/wkv7.py's "scan_fwd_chunked_vjp": the scan's forward, this backward). Arguments as `_wkv7_chunked`'s,
# `seg` from `chunk_segments`.
vjp_forward, vjp_backward = _fwd, _bwd
