"""Pallas WKV-7 kernels (forward and backward) and their `jax.custom_vjp` wrapper.

Two kernel layouts share the per-chunk algebra of `chunk_math`:

  loop  (GPU)  grid (B·H,); each program walks its head's chunks with `lax.fori_loop`, the float32
               state is the loop carry, the entering state of every chunk is written out for the
               backward. Lowered by Triton (`compiler_params=triton.CompilerParams`) on every
               NVIDIA/AMD GPU, Hopper included: the Mosaic GPU lowering of jax 0.10 has no
               register-level dot_general (matmuls must be SMEM `wgmma`), so it cannot take
               this body; a Mosaic GPU version is future work.
  grid  (TPU)  grid (B·H, n_chunks) with ("parallel", "arbitrary") semantics; Pallas pipelines one
               [C, N] block of every input per step into VMEM and the state lives in a VMEM scratch
               that persists across the sequential chunk axis.

On the CPU both layouts run with `interpret=True` (that is how the tests exercise them). The
backward kernels walk the chunks in reverse with the state cotangent as carry/scratch and
recompute the chunk-local matrices from the inputs, so the residuals are exactly the inputs (kept in
the kernel layout, padded by < C steps) plus the per-chunk entering states (float32[B·H, n_chunks, N, N]).

Layout at the kernel boundary: [B·H, T_pad, N] (one contiguous row block per head), T padded at the
end to a multiple of C with log_w = 0 and k = v = a = b = 0, which leaves the state unchanged.

Packed rows (`segment_ids`): a variant of each kernel takes one more input, float32[B, T_pad, 1], the
chunk-local counts of segment starts (`chunk_math.segment_counts`), read by program i from batch row
i // H (so the H heads of a row share it), and masks its chunk algebra with them (chunk_math); the
state restarts from zero at every start, inside a chunk as well as at a chunk boundary. Without
segment ids the kernels take no such input and compute exactly what they computed before.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.wkv7.chunk_math import chunk_backward, chunk_forward, segment_counts

_F32 = jnp.float32
# Kernel backends: how a pallas_call is laid out and lowered.
BACKENDS = ("triton", "tpu", "interpret", "interpret_grid")


def default_backend() -> str:
  """The backend for the default JAX device: tpu, triton (NVIDIA/AMD GPUs) or interpret (CPU)."""
  platform = jax.default_backend()
  if platform == "tpu":
    return "tpu"
  if platform in ("gpu", "cuda", "rocm"):
    return "triton"
  return "interpret"


def _layout(backend: str) -> str:
  return "grid" if backend in ("tpu", "interpret_grid") else "loop"


def _call_kwargs(backend: str) -> dict:
  if backend == "triton":
    return dict(compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1))
  if backend == "tpu":
    return dict(compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")))
  if backend in ("interpret", "interpret_grid"):
    return dict(interpret=True)
  raise ValueError(f"wkv7 pallas: unknown backend {backend!r}; expected one of {BACKENDS}")


# ----------------------------------------------------------------------------------------------
# Loop layout (GPU): grid (B·H,), chunks looped inside the kernel.
#
# With segments, one more input ref `seg_ref` follows b_ref: float32[T_pad, 1] of the head's batch row
# (the chunk-local segment-start counts of `chunk_math`), shared by the H heads of that row.

def _row(i, heads):
  """The batch row of program i (grid axis over B·H): i // H as truncating division (i >= 0), because
  Python's floor division lowers through `sign`, which Mosaic TPU rejects in an index map."""
  return jax.lax.div(i, jnp.int32(heads))


def _split_seg(refs, n_in, segmented):
  """(the n_in sequence input refs, seg_ref or None, the remaining refs)."""
  if segmented:
    return refs[:n_in], refs[n_in], refs[n_in + 1:]
  return refs[:n_in], None, refs[n_in:]


def _fwd_loop_kernel(*refs, C, segmented):
  (r_ref, g_ref, k_ref, v_ref, a_ref, b_ref), seg_ref, (h0_ref, out_ref, hT_ref, hs_ref) = _split_seg(
      refs, 6, segmented)
  n_chunks = r_ref.shape[0] // C

  def body(c, h):
    rows = pl.ds(pl.multiple_of(c * C, C), C)
    x = [ref[rows, :].astype(_F32) for ref in (r_ref, g_ref, k_ref, v_ref, a_ref, b_ref)]
    seg = None if seg_ref is None else seg_ref[rows, :]
    hs_ref[c] = h
    out, h = chunk_forward(h, *x, seg=seg)
    out_ref[rows, :] = out.astype(out_ref.dtype)
    return h

  hT_ref[...] = jax.lax.fori_loop(0, n_chunks, body, h0_ref[...].astype(_F32))


def _bwd_loop_kernel(*refs, C, segmented):
  (r_ref, g_ref, k_ref, v_ref, a_ref, b_ref), seg_ref, rest = _split_seg(refs, 6, segmented)
  hs_ref, dO_ref, dhT_ref, dr_ref, dg_ref, dk_ref, dv_ref, da_ref, db_ref, dh0_ref = rest
  n_chunks = r_ref.shape[0] // C

  def body(i, dh):
    c = n_chunks - 1 - i
    rows = pl.ds(pl.multiple_of(c * C, C), C)
    x = [ref[rows, :].astype(_F32) for ref in (r_ref, g_ref, k_ref, v_ref, a_ref, b_ref, dO_ref)]
    seg = None if seg_ref is None else seg_ref[rows, :]
    *grads, dh = chunk_backward(hs_ref[c], dh, *x, seg=seg)
    for ref, grad in zip((dr_ref, dg_ref, dk_ref, dv_ref, da_ref, db_ref), grads):
      ref[rows, :] = grad.astype(ref.dtype)
    return dh

  dh0_ref[...] = jax.lax.fori_loop(0, n_chunks, body, dhT_ref[...].astype(_F32))


def _loop_seg_spec(seg, heads):
  """BlockSpecs and operands of the optional segment input: [B, T_pad, 1], row i // H for program i."""
  if seg is None:
    return [], []
  return [pl.BlockSpec((None, seg.shape[1], 1), lambda i: (_row(i, heads), 0, 0))], [seg]


def _loop_forward(xs, h0, seg, heads, C, backend):
  BH, Tp, N = xs[0].shape
  nc = Tp // C
  seq = pl.BlockSpec((None, Tp, N), lambda i: (i, 0, 0))
  mat = pl.BlockSpec((None, N, N), lambda i: (i, 0, 0))
  seg_specs, seg_args = _loop_seg_spec(seg, heads)
  return pl.pallas_call(
      functools.partial(_fwd_loop_kernel, C=C, segmented=seg is not None),
      grid=(BH,),
      in_specs=[seq] * 6 + seg_specs + [mat],
      out_specs=[seq, mat, pl.BlockSpec((None, nc, N, N), lambda i: (i, 0, 0, 0))],
      out_shape=[jax.ShapeDtypeStruct((BH, Tp, N), xs[3].dtype), jax.ShapeDtypeStruct((BH, N, N), _F32),
                 jax.ShapeDtypeStruct((BH, nc, N, N), _F32)],
      name="wkv7_fwd_loop", **_call_kwargs(backend))(*xs, *seg_args, h0)


def _loop_backward(xs, seg, heads, hs, dO, dhT, C, backend):
  BH, Tp, N = xs[0].shape
  nc = Tp // C
  seq = pl.BlockSpec((None, Tp, N), lambda i: (i, 0, 0))
  mat = pl.BlockSpec((None, N, N), lambda i: (i, 0, 0))
  seg_specs, seg_args = _loop_seg_spec(seg, heads)
  return pl.pallas_call(
      functools.partial(_bwd_loop_kernel, C=C, segmented=seg is not None),
      grid=(BH,),
      in_specs=[seq] * 6 + seg_specs + [pl.BlockSpec((None, nc, N, N), lambda i: (i, 0, 0, 0)), seq, mat],
      out_specs=[seq] * 6 + [mat],
      out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in xs] + [jax.ShapeDtypeStruct((BH, N, N), _F32)],
      name="wkv7_bwd_loop", **_call_kwargs(backend))(*xs, *seg_args, hs, dO, dhT)


# ----------------------------------------------------------------------------------------------
# Grid layout (TPU): grid (B·H, n_chunks), state in a VMEM scratch across the sequential axis.
# The optional segment input arrives as one [C, 1] block per step (last dim = the array's full dim 1).

def _fwd_grid_kernel(*refs, segmented):
  (r_ref, g_ref, k_ref, v_ref, a_ref, b_ref), seg_ref, rest = _split_seg(refs, 6, segmented)
  h0_ref, out_ref, hT_ref, hs_ref, state = rest
  c = pl.program_id(1)

  @pl.when(c == 0)
  def _():
    state[...] = h0_ref[...].astype(_F32)

  h = state[...]
  hs_ref[...] = h
  seg = None if seg_ref is None else seg_ref[...]
  out, h = chunk_forward(h, *(ref[...].astype(_F32) for ref in (r_ref, g_ref, k_ref, v_ref, a_ref, b_ref)),
                         seg=seg)
  out_ref[...] = out.astype(out_ref.dtype)
  state[...] = h

  @pl.when(c == pl.num_programs(1) - 1)
  def _():
    hT_ref[...] = h


def _bwd_grid_kernel(*refs, segmented):
  (r_ref, g_ref, k_ref, v_ref, a_ref, b_ref), seg_ref, rest = _split_seg(refs, 6, segmented)
  hs_ref, dO_ref, dhT_ref, dr_ref, dg_ref, dk_ref, dv_ref, da_ref, db_ref, dh0_ref, dstate = rest
  c = pl.program_id(1)  # counts chunks from the end

  @pl.when(c == 0)
  def _():
    dstate[...] = dhT_ref[...].astype(_F32)

  x = (ref[...].astype(_F32) for ref in (r_ref, g_ref, k_ref, v_ref, a_ref, b_ref, dO_ref))
  seg = None if seg_ref is None else seg_ref[...]
  *grads, dh = chunk_backward(hs_ref[...], dstate[...], *x, seg=seg)
  for ref, grad in zip((dr_ref, dg_ref, dk_ref, dv_ref, da_ref, db_ref), grads):
    ref[...] = grad.astype(ref.dtype)
  dstate[...] = dh

  @pl.when(c == pl.num_programs(1) - 1)
  def _():
    dh0_ref[...] = dh


def _grid_seg_spec(seg, heads, C, chunk_of):
  """BlockSpecs and operands of the optional segment input: one [C, 1] block of row i // H."""
  if seg is None:
    return [], []
  return [pl.BlockSpec((None, C, 1), lambda i, c: (_row(i, heads), chunk_of(c), 0))], [seg]


def _grid_forward(xs, h0, seg, heads, C, backend):
  BH, Tp, N = xs[0].shape
  nc = Tp // C
  blk = pl.BlockSpec((None, C, N), lambda i, c: (i, c, 0))
  mat = pl.BlockSpec((None, N, N), lambda i, c: (i, 0, 0))
  seg_specs, seg_args = _grid_seg_spec(seg, heads, C, lambda c: c)
  return pl.pallas_call(
      functools.partial(_fwd_grid_kernel, segmented=seg is not None),
      grid=(BH, nc),
      in_specs=[blk] * 6 + seg_specs + [mat],
      out_specs=[blk, mat, pl.BlockSpec((None, None, N, N), lambda i, c: (i, c, 0, 0))],
      out_shape=[jax.ShapeDtypeStruct((BH, Tp, N), xs[3].dtype), jax.ShapeDtypeStruct((BH, N, N), _F32),
                 jax.ShapeDtypeStruct((BH, nc, N, N), _F32)],
      scratch_shapes=[pltpu.VMEM((N, N), _F32)],
      name="wkv7_fwd_grid", **_call_kwargs(backend))(*xs, *seg_args, h0)


def _grid_backward(xs, seg, heads, hs, dO, dhT, C, backend):
  BH, Tp, N = xs[0].shape
  nc = Tp // C
  blk = pl.BlockSpec((None, C, N), lambda i, c: (i, nc - 1 - c, 0))
  mat = pl.BlockSpec((None, N, N), lambda i, c: (i, 0, 0))
  seg_specs, seg_args = _grid_seg_spec(seg, heads, C, lambda c: nc - 1 - c)
  return pl.pallas_call(
      functools.partial(_bwd_grid_kernel, segmented=seg is not None),
      grid=(BH, nc),
      in_specs=[blk] * 6 + seg_specs + [pl.BlockSpec((None, None, N, N), lambda i, c: (i, nc - 1 - c, 0, 0)),
                                        blk, mat],
      out_specs=[blk] * 6 + [mat],
      out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in xs] + [jax.ShapeDtypeStruct((BH, N, N), _F32)],
      scratch_shapes=[pltpu.VMEM((N, N), _F32)],
      name="wkv7_bwd_grid", **_call_kwargs(backend))(*xs, *seg_args, hs, dO, dhT)


# ----------------------------------------------------------------------------------------------
# Public op: [B, T, H, N] in and out, custom_vjp over the kernels.

def _to_heads(x, Tp):
  """[B, T, H, N] -> [B·H, T_pad, N], zero-padded at the end of T."""
  B, T, H, N = x.shape
  x = jnp.pad(x, ((0, 0), (0, Tp - T), (0, 0), (0, 0)))
  return jnp.swapaxes(x, 1, 2).reshape(B * H, Tp, N)


def _from_heads(x, B, H, T):
  """[B·H, T_pad, N] -> [B, T, H, N]."""
  BH, Tp, N = x.shape
  return jnp.swapaxes(x.reshape(B, H, Tp, N), 1, 2)[:, :T]


def _forward(r, log_w, k, v, a, b, h0, seg, chunk_size, backend):
  B, T, H, N = r.shape
  Tp = -(-T // chunk_size) * chunk_size
  xs = [_to_heads(x, Tp) for x in (r, log_w, k, v, a, b)]
  run = _grid_forward if _layout(backend) == "grid" else _loop_forward
  out, final, hs = run(xs, h0.reshape(B * H, N, N).astype(_F32), seg, H, chunk_size, backend)
  return _from_heads(out, B, H, T), final.reshape(B, H, N, N), (xs, hs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _wkv7_pallas(r, log_w, k, v, a, b, initial_state, seg, chunk_size, backend):
  out, final, _ = _forward(r, log_w, k, v, a, b, initial_state, seg, chunk_size, backend)
  return out, final


def wkv7_pallas(r, log_w, k, v, a, b, initial_state, chunk_size=16, backend=None, segment_ids=None):
  """WKV-7 through the Pallas kernels; the contract of `modrwkv_jax.ops.wkv7` (docs/rwkv7.md#the-wkv-7-operator).

  Args:
    r, log_w, k, v, a, b: float[B, T, H, N] (fp32 or bf16; computed in fp32 inside the kernel).
    initial_state: float32[B, H, N, N], layout [key, value].
    chunk_size: C in {16, 32, 64}.
    backend: one of `BACKENDS`, or None for `default_backend()`.
    segment_ids: int[B, T] or None. Where the id changes (t > 0) the state restarts from zero;
      initial_state applies to each row's first segment. None: one segment per row (no extra input,
      the kernels of before).
  Returns:
    (out float[B, T, H, N] in v.dtype, final_state float32[B, H, N, N] after each row's last step).
  """
  backend = backend or default_backend()
  _call_kwargs(backend)  # raises on an unknown backend name
  seg = None
  if segment_ids is not None:
    Tp = -(-r.shape[1] // chunk_size) * chunk_size
    # float32[B, T_pad, 1]: small integers, exact; a float column lowers on every backend.
    seg = segment_counts(segment_ids, Tp, chunk_size).astype(_F32)[..., None]
  return _wkv7_pallas(r, log_w, k, v, a, b, initial_state, seg, chunk_size, backend)


def _fwd(r, log_w, k, v, a, b, initial_state, seg, chunk_size, backend):
  # Residuals: the inputs already in the kernels' head-major padded layout (so the backward does not
  # transpose them again), the segment counts, the initial state and the per-chunk entering states.
  out, final, (xs, hs) = _forward(r, log_w, k, v, a, b, initial_state, seg, chunk_size, backend)
  return (out, final), (xs, seg, initial_state, hs)


def _bwd(chunk_size, backend, res, cotangents):
  xs, seg, h0, hs = res
  d_out, d_final = cotangents
  B, T, H, N = d_out.shape
  Tp = hs.shape[1] * chunk_size
  run = _grid_backward if _layout(backend) == "grid" else _loop_backward
  *grads, dh0 = run(xs, seg, H, hs, _to_heads(d_out.astype(_F32), Tp),
                    d_final.reshape(B * H, N, N).astype(_F32), chunk_size, backend)
  grads = [_from_heads(g, B, H, T) for g in grads]
  return (*grads, dh0.reshape(B, H, N, N).astype(h0.dtype), None)


_wkv7_pallas.defvjp(_fwd, _bwd)
