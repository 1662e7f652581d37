"""One chunk of WKV-7, forward and backward, as straight-line array algebra for Pallas kernel bodies.

These functions hold the WY/UT formulas of docs/rwkv7.md#the-wkv-7-operator for a single (batch, head) pair and a single
chunk of C steps. They take and return plain arrays (already loaded from refs), so the same code is
the body of every kernel layout (GPU chunk loop, TPU chunk grid, CPU interpret mode).

Only primitives that every Pallas backend lowers are used: matmuls with float32 accumulation
(`lax.dot_general`, transposes expressed as contracting dimensions), elementwise math, `where` on
iota masks and full-axis sums. In particular
  * cumulative sums are matmuls with a triangular 0/1 matrix (Mosaic TPU has no cumsum);
  * T = (I − A_ab)⁻¹ is the finite Neumann product (I + A)(I + A²)(I + A⁴)…, exact because A_ab is
    strictly lower triangular (A^C = 0): log2(C) − 1 squarings instead of a C-step substitution;
  * no value slicing: a row of Γ (the centring row m = Γ_{C/2}, the chunk total Γ_C) is a masked
    column sum.

Shapes (one head, one chunk): r, g, k, v, a, b, dO: float32[C, N]; h, dh: float32[N, N] with layout
[key, value]. g = log_w ≤ 0.

Packed sequences (segments): `seg` float32[C, 1] (or None: one segment) is the chunk-local inclusive
count of segment starts, seg_i = #{t ≤ i in this chunk : the state restarts from zero before step t}.
The recurrence restarted at a start only drops terms, so the chunk algebra stays the same with
  * the pair matrices A_rk, A_rb, A_ak, A_ab masked to pairs of one segment (seg_i == seg_j);
  * the entering state h read only by rows before the chunk's first start (seg_i == 0: r_h, a_h);
  * the exit state written only by rows of the chunk's last segment (seg_j == seg_{C−1}: kg, bg),
    and h carried into it only when the chunk has no start at all (seg_{C−1} == 0).
Γ stays the plain cumsum: masked pairs never form e^{Γ_i − Γ_j} across a start, and the gradient
formulas hold unchanged because the masks are constants. The masks are built with iota, `where` and
full-axis sums only (a column vector becomes a row as the column sum of its diagonal matrix), so
they lower wherever the rest does; they cost O(C²) elementwise work against the O(C²·N) matmuls. Exponent ranges: RWKV-7 keeps g ≥ −0.607, so the centred factors
e^{±(Γ_i − m)} stay within e^{±0.607·C/2} = e^{±19.4} at C = 64 and e^{Γ} ≥ e^{−38.9} — all far
from float32 overflow (e^{88}) and underflow (e^{−87}).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_F32 = jnp.float32


def segment_counts(segment_ids, T_pad: int, chunk_size: int):
  """The segment form every chunked kernel reads (plain JAX, outside the kernels).

  Args:
    segment_ids: int[B, T]; the state restarts from zero at every t > 0 with
      segment_ids[:, t] != segment_ids[:, t − 1].
    T_pad: the padded length, a multiple of chunk_size (>= T; the end padding starts nothing).
  Returns:
    int32[B, T_pad]: at step i of chunk c, #{segment starts in chunk c at steps <= i}.
  """
  B, T = segment_ids.shape
  starts = jnp.concatenate([jnp.zeros((B, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  starts = jnp.pad(starts, ((0, 0), (0, T_pad - T))).astype(jnp.int32)
  return jnp.cumsum(starts.reshape(B, T_pad // chunk_size, chunk_size), axis=-1).reshape(B, T_pad)


def _mm(x, y):
  """x @ y, float32 accumulation."""
  return jax.lax.dot_general(x, y, (((1,), (0,)), ((), ())), preferred_element_type=_F32)


def _mm_tn(x, y):
  """xᵀ @ y without materialising the transpose."""
  return jax.lax.dot_general(x, y, (((0,), (0,)), ((), ())), preferred_element_type=_F32)


def _mm_nt(x, y):
  """x @ yᵀ without materialising the transpose."""
  return jax.lax.dot_general(x, y, (((1,), (1,)), ((), ())), preferred_element_type=_F32)


def _masks(C):
  row = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
  col = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
  return row >= col, row > col


def _unit_lower_inverse(A, C):
  """(I − A)⁻¹ for strictly lower-triangular A[C, C]: Π_{i<log2 C} (I + A^{2^i}) = Σ_{j<C} A^j."""
  eye = jnp.where(_masks(C)[0] & ~_masks(C)[1], 1.0, 0.0).astype(_F32)
  inv = eye + A
  power = A
  for _ in range(max(C.bit_length() - 2, 0)):  # C = 2^m needs powers up to A^{2^{m−1}}
    power = _mm(power, power)
    inv = inv + _mm(inv, power)
  return inv


def _segment_masks(seg, incl, strict, C):
  """Masks of one chunk with segment starts (see the module docstring); seg: float32[C, 1]."""
  row = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
  col = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
  seg_row = jnp.sum(jnp.where(row == col, seg, 0.0), axis=0)[None, :]  # seg as a row, [1, C]
  same = seg == seg_row  # [C, C]: rows i and j lie in one segment (the count is monotone in the chunk)
  rows = jax.lax.broadcasted_iota(jnp.int32, (C, 1), 0)
  seg_last = jnp.sum(jnp.where(rows == C - 1, seg, 0.0), axis=0, keepdims=True)  # [1, 1]
  # first: no start at or before i, so row i still sees the entering state; last: i is in the
  # chunk's last segment, so it writes into the exit state; keep: the entering state survives.
  return incl & same, strict & same, seg == 0.0, seg == seg_last, seg_last == 0.0


def _intra(r, g, k, a, b, seg=None):
  """State-independent pieces of one chunk; seg: float32[C, 1] segment-start counts or None."""
  C, N = r.shape
  incl, strict = _masks(C)
  tri = jnp.where(incl, 1.0, 0.0).astype(_F32)
  G = _mm(tri, g)  # Γ_i = Σ_{t<=i} g_t
  Gm = G - g  # Γ⁻
  rows = jax.lax.broadcasted_iota(jnp.int32, (C, N), 0)
  row_of_G = lambda i: jnp.sum(jnp.where(rows == i, G, 0.0), axis=0)  # G[i] without value slicing
  mid = row_of_G(C // 2)[None, :]  # centring point m = Γ_{C/2}, [1, N]
  # Γ_C must be bit-identical to the last row of G, so that e^{Γ_C − Γ_{C−1}} is exactly 1: the
  # newest write into the state is not rescaled by the rounding difference of two summation orders.
  Gc_col = row_of_G(C - 1)[:, None]  # [N, 1], scales the key rows of the state
  Gc = Gc_col.reshape(1, N)
  eG, eGm = jnp.exp(G), jnp.exp(Gm)  # factors of the entering state's read-outs
  to_end = jnp.exp(Gc - G)  # e^{Γ_C − Γ} <= 1
  decay_col, decay = jnp.exp(Gc_col), jnp.exp(Gc)  # e^{Γ_C}: the entering state's decay to the exit
  if seg is not None:
    incl, strict, first, last, keep = _segment_masks(seg, incl, strict, C)
    eG, eGm = jnp.where(first, eG, 0.0), jnp.where(first, eGm, 0.0)
    to_end = jnp.where(last, to_end, 0.0)
    decay_col, decay = jnp.where(keep, decay_col, 0.0), jnp.where(keep, decay, 0.0)
  rc, ac = r * jnp.exp(G - mid), a * jnp.exp(Gm - mid)
  kc, bc = k * jnp.exp(mid - G), b * jnp.exp(mid - G)
  A_rk = jnp.where(incl, _mm_nt(rc, kc), 0.0)
  A_rb = jnp.where(incl, _mm_nt(rc, bc), 0.0)
  A_ak = jnp.where(strict, _mm_nt(ac, kc), 0.0)
  A_ab = jnp.where(strict, _mm_nt(ac, bc), 0.0)
  return dict(tri=tri, incl=incl, strict=strict, G=G, Gm=Gm, mid=mid, rc=rc, ac=ac, kc=kc, bc=bc,
              A_rk=A_rk, A_rb=A_rb, A_ak=A_ak, A_ab=A_ab, T=_unit_lower_inverse(A_ab, C), eG=eG, eGm=eGm,
              r_h=r * eG, a_h=a * eGm, kg=k * to_end, bg=b * to_end, to_end=to_end, decay_col=decay_col,
              decay=decay)


def chunk_forward(h, r, g, k, v, a, b, seg=None):
  """Advances the state over one chunk.

  Args:
    h: float32[N, N] entering state [key, value].
    r, g, k, v, a, b: float32[C, N].
    seg: float32[C, 1] chunk-local inclusive count of segment starts, or None (no start).
  Returns:
    (out float32[C, N], h_next float32[N, N]).
  """
  q = _intra(r, g, k, a, b, seg)
  U = _mm(q["T"], _mm(q["A_ak"], v) + _mm(q["a_h"], h))  # U_i = a_iᵀ h_{i−1}
  out = _mm(q["r_h"], h) + _mm(q["A_rk"], v) + _mm(q["A_rb"], U)
  h_next = q["decay_col"] * h + _mm_tn(q["kg"], v) + _mm_tn(q["bg"], U)
  return out, h_next


def chunk_backward(h, dh_next, r, g, k, v, a, b, dO, seg=None):
  """Backward of `chunk_forward` given the chunk's entering state and the cotangent of its exit state.

  Args:
    h: float32[N, N] entering state (saved by the forward); dh_next: float32[N, N] cotangent of h_next.
    r, g, k, v, a, b: float32[C, N] the chunk's inputs; dO: float32[C, N] cotangent of out.
    seg: float32[C, 1] segment-start counts as in `chunk_forward`, or None.
  Returns:
    (dr, dg, dk, dv, da, db float32[C, N], dh float32[N, N] the cotangent of the entering state).
  """
  q = _intra(r, g, k, a, b, seg)
  U = _mm(q["T"], _mm(q["A_ak"], v) + _mm(q["a_h"], h))
  dU = _mm_tn(q["A_rb"], dO) + _mm(q["bg"], dh_next)
  dX = _mm_tn(q["T"], dU)
  dh = _mm_tn(q["r_h"], dO) + _mm_tn(q["a_h"], dX) + q["decay_col"] * dh_next
  dv = _mm_tn(q["A_rk"], dO) + _mm_tn(q["A_ak"], dX) + _mm(q["kg"], dh_next)
  dA_rk = jnp.where(q["incl"], _mm_nt(dO, v), 0.0)
  dA_rb = jnp.where(q["incl"], _mm_nt(dO, U), 0.0)
  dA_ak = jnp.where(q["strict"], _mm_nt(dX, v), 0.0)
  dA_ab = jnp.where(q["strict"], _mm_nt(dX, U), 0.0)
  G, Gm, mid = q["G"], q["Gm"], q["mid"]
  dr = (_mm(dA_rk, q["kc"]) + _mm(dA_rb, q["bc"])) * jnp.exp(G - mid) + _mm_nt(dO, h) * q["eG"]
  da = (_mm(dA_ak, q["kc"]) + _mm(dA_ab, q["bc"])) * jnp.exp(Gm - mid) + _mm_nt(dX, h) * q["eGm"]
  V_dh, U_dh = _mm_nt(v, dh_next), _mm_nt(U, dh_next)  # [C, N_key]
  dk = (_mm_tn(dA_rk, q["rc"]) + _mm_tn(dA_ak, q["ac"])) * jnp.exp(mid - G) + V_dh * q["to_end"]
  db = (_mm_tn(dA_rb, q["rc"]) + _mm_tn(dA_ab, q["ac"])) * jnp.exp(mid - G) + U_dh * q["to_end"]
  dG = dr * r - dk * k - db * b  # ∂/∂Γ_i
  dGm = da * a  # ∂/∂Γ⁻_i
  dGc = (jnp.sum(V_dh * q["kg"] + U_dh * q["bg"], axis=0, keepdims=True)
         + q["decay"] * jnp.sum(h * dh_next, axis=1)[None, :])  # [1, N_key]
  # Γ_i = Σ_{t<=i} g_t, Γ⁻_i = Σ_{t<i} g_t, Γ_C = Σ_t g_t  =>  dg_t = Σ_{i>=t} dΓ_i + Σ_{i>t} dΓ⁻_i + dΓ_C.
  dg = _mm_tn(q["tri"], dG + dGm) - dGm + dGc
  return dr, dg, dk, dv, da, db, dh
