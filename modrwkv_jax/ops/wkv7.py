"""The WKV-7 operator: RWKV-7's generalised delta-rule recurrence (docs/rwkv7.md#the-wkv-7-operator).

Per batch element and head, with the state h[key, value] (h = Sᵀ of the official S[value, key]):

    h_t   = diag(exp(log_w_t)) h_{t-1} + b_t (a_tᵀ h_{t-1}) + k_t v_tᵀ
    out_t = h_tᵀ r_t

`wkv7` is the single public entry point. It validates shapes once and dispatches to an
implementation by name; implementations register themselves in `_IMPLS` and all share the signature
`fn(r, log_w, k, v, a, b, initial_state, chunk_size, segment_ids=None) -> (out, final_state)` with a
float32 state.

Packed sequences: `segment_ids` int[B, T] marks several examples in one row (1, 2, 3, ... left to
right; 0 at padding by the data convention). Wherever the id changes (t > 0, id_t != id_{t−1}) the
state restarts from zero, so the row computes exactly what the examples compute one by one; the
initial state applies to each row's first segment, and the final state is the one after the row's
last step. The chunked implementations do this by masking inside their chunk matrices (see
ops/wkv7_chunked.py), with no sequential fallback; `segment_ids=None` runs the unsegmented code of
before, bit for bit. The op itself knows nothing of padding: a caller with padding zeroes its inputs
there (the state then passes unchanged) and must not let a padding position change the id, as
`models.rwkv7.forward` does.

  reference  `lax.scan` over time; the numerical ground truth for every faster implementation.
  chunked    WY/UT chunked form in plain JAX with a hand-written backward (ops/wkv7_chunked.py).
  scan_fwd_chunked_vjp
             the scan when the call is not differentiated, the chunked form under autodiff: a
             `jax.custom_vjp` whose primal is `wkv7_reference` and whose forward and backward rules are
             the chunked implementation's (values: the scan's; gradients: the chunked ones, bit for bit).
  pallas     the same chunk algebra as Pallas kernels (pallas_kernels/wkv7): Triton on GPUs, Mosaic
             on TPUs, interpret mode on the CPU (correct but slow: for tests).

`impl="auto"` chooses per backend and per use:

  backend    forward only (prefill, eval)   under autodiff (training)   one step (T = 1, decode)
  cpu        scan                           chunked                     scan
  gpu, tpu   pallas                         pallas                      scan
  (cpu: the "scan_fwd_chunked_vjp" implementation gives both columns; gpu/tpu: not yet measured on a GPU)

The CPU row rests on `benchmarks/wkv7.py` (benchmarks/results/wkv7-cpu.json: fp32, B 1, H 4, N 64, chunk 16).
Differentiated, the chunked form is 8.9x / 10.8x / 8.6x faster than the scan's autodiff at T = 512 / 2048 / 8192.
Forward only, the scan takes 0.76x / 1.27x / 0.35x the chunked time, so it is faster at 512 and 8192 and
slower at 2048. A single decoding step always runs the plain recurrence. Re-measure with
`python benchmarks/wkv7.py` before changing the table.

Sharding: the recurrence is independent per (batch, head). Given `partition` (the mesh axes of the
batch and head dimensions, e.g. from the logical rules) and an active mesh (`jax.set_mesh`), the
pallas implementation runs per shard under `jax.shard_map`, so a kernel never sees another
device's heads and nothing is gathered; the XLA implementations are partitioned by GSPMD.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from modrwkv_jax.ops import wkv7_chunked as chunked_lib
from modrwkv_jax.ops.wkv7_chunked import wkv7_chunked
from pallas_kernels.wkv7 import wkv7_pallas


def wkv7_reference(r, log_w, k, v, a, b, initial_state, chunk_size=None, segment_ids=None):
  """Sequential WKV-7: one `lax.scan` step per token, float32 state.

  Args:
    r, log_w, k, v, a, b: float[B, T, H, N]; log_w <= 0 is the natural log of the decay.
    initial_state: float32[B, H, N, N], layout [key, value].
    chunk_size: unused (the scan has no chunks); accepted for a uniform signature.
    segment_ids: int[B, T] or None; the state is zeroed before every step t > 0 whose id differs
      from step t − 1's.
  Returns:
    (out float[B, T, H, N] in v.dtype, final_state float32[B, H, N, N]).
  """
  del chunk_size
  f32 = lambda x: jnp.moveaxis(x.astype(jnp.float32), 1, 0)  # [T, B, H, N]
  xs = tuple(f32(x) for x in (r, log_w, k, v, a, b))
  if segment_ids is not None:
    starts = jnp.concatenate([jnp.zeros_like(segment_ids[:, :1], bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    xs = xs + (jnp.moveaxis(starts, 1, 0),)  # bool[T, B]

  def step(h, x):
    if segment_ids is not None:
      *x, start = x
      h = jnp.where(start[:, None, None, None], 0.0, h)  # a new segment starts from the zero state
    r_t, lw_t, k_t, v_t, a_t, b_t = x  # each [B, H, N]
    a_h = jnp.einsum("bhk,bhkv->bhv", a_t, h)  # aᵀ h_{t-1}
    h = (jnp.exp(lw_t)[..., None] * h + b_t[..., None] * a_h[..., None, :]
         + k_t[..., None] * v_t[..., None, :])
    out = jnp.einsum("bhk,bhkv->bhv", r_t, h)
    return h, out

  final_state, out = jax.lax.scan(step, initial_state.astype(jnp.float32), xs)
  return jnp.moveaxis(out, 0, 1).astype(v.dtype), final_state


def wkv7_scan_fwd_chunked_vjp(r, log_w, k, v, a, b, initial_state, chunk_size=16, segment_ids=None):
  """The scan's forward, the chunked implementation's gradient (same contract as `wkv7_reference`).

  Not differentiated (prefill, evaluation), this runs `wkv7_reference`, the faster forward on the CPU;
  under autodiff (training) the custom VJP's forward is `wkv7_chunked`'s, which keeps the per-chunk
  states its hand-written backward needs. Outputs are the scan's, gradients the chunked ones, bit for bit.
  """
  seg = chunked_lib.chunk_segments(segment_ids, chunk_size)
  return _scan_fwd_chunked_vjp(r, log_w, k, v, a, b, initial_state, segment_ids, seg, chunk_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(9,))
def _scan_fwd_chunked_vjp(r, log_w, k, v, a, b, initial_state, segment_ids, seg, chunk_size):
  del seg  # the chunked rules' form of segment_ids
  return wkv7_reference(r, log_w, k, v, a, b, initial_state, segment_ids=segment_ids)


def _scan_fwd_chunked_vjp_fwd(r, log_w, k, v, a, b, initial_state, segment_ids, seg, chunk_size):
  del segment_ids
  return chunked_lib.vjp_forward(r, log_w, k, v, a, b, initial_state, seg, chunk_size)


def _scan_fwd_chunked_vjp_bwd(chunk_size, residuals, cotangents):
  *grads, d_seg = chunked_lib.vjp_backward(chunk_size, residuals, cotangents)
  return (*grads, None, d_seg)  # None: segment_ids (integers, no cotangent)


_scan_fwd_chunked_vjp.defvjp(_scan_fwd_chunked_vjp_fwd, _scan_fwd_chunked_vjp_bwd)


# name -> implementation. Faster implementations (chunked, pallas) add themselves here.
_IMPLS: dict[str, Callable] = {"reference": wkv7_reference, "chunked": wkv7_chunked, "pallas": wkv7_pallas,
                               "scan_fwd_chunked_vjp": wkv7_scan_fwd_chunked_vjp}
# Preference order for impl="auto", per backend; the first registered name wins (the module docstring's table).
_AUTO_ORDER = {"gpu": ("pallas", "chunked", "reference"),
               "tpu": ("pallas", "chunked", "reference"),
               "cpu": ("scan_fwd_chunked_vjp", "chunked", "reference")}


def available_impls() -> tuple[str, ...]:
  return tuple(_IMPLS)


def resolve_impl(impl: str) -> str:
  """Maps "auto" to a registered implementation for the default backend; validates names."""
  if impl == "auto":
    order = _AUTO_ORDER.get(jax.default_backend(), ("reference",))
    return next(name for name in order if name in _IMPLS)
  if impl not in _IMPLS:
    raise ValueError(f"wkv7: unknown impl {impl!r}; available: {', '.join(('auto',) + available_impls())}")
  return impl


def _fit_axes(axes, size: int, mesh) -> tuple[str, ...] | None:
  """The prefix of mesh `axes` whose device count divides `size` (None: replicate this dimension)."""
  if axes is None:
    return None
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  kept, count = [], 1
  for name in axes:
    if name not in mesh.shape or size % (count * mesh.shape[name]):
      break
    kept.append(name)
    count *= mesh.shape[name]
  return tuple(kept) or None


def _shard_over_batch_and_heads(fn, partition, shape, segmented: bool):
  """`fn` run per shard under shard_map, or `fn` itself when no mesh/partition applies.

  fn takes (r, log_w, k, v, a, b, initial_state) and, when `segmented`, segment_ids [B, T] last."""
  mesh = jax.sharding.get_abstract_mesh()
  if partition is None or mesh.empty:
    return fn
  batch, heads = _fit_axes(partition[0], shape[0], mesh), _fit_axes(partition[2], shape[2], mesh)
  if batch is None and heads is None:
    return fn
  seq, state = P(batch, None, heads, None), P(batch, heads, None, None)
  in_specs = (seq,) * 6 + (state,) + ((P(batch, None),) if segmented else ())
  mapped = jax.shard_map(fn, in_specs=in_specs, out_specs=(seq, state), check_vma=False)
  used = [a for a in (batch or ()) + (heads or ())]
  if not any(mesh.axis_types[mesh.axis_names.index(a)] == jax.sharding.AxisType.Explicit for a in used):
    return mapped  # Auto axes (sharding.make_mesh): GSPMD moves the inputs to the specs by itself
  # Explicit axes (jax.make_mesh's default): shard_map takes inputs only in exactly its in_specs, so each
  # input (the zero initial state wkv7 creates, a differently sharded caller's array) is resharded first.
  return lambda *xs: mapped(*(jax.sharding.reshard(x, spec) for x, spec in zip(xs, in_specs)))


def wkv7(r, log_w, k, v, a, b, initial_state=None, *, impl: str = "auto", chunk_size: int = 16,
         partition: P | None = None, segment_ids=None):
  """RWKV-7 WKV recurrence over a sequence.

  Args:
    r, log_w, k, v, a, b: float[B, T, H, N] (fp32 or bf16). log_w <= 0 is the natural log of the
      per-channel decay (RWKV-7 keeps it in (-0.607, 0)); never pass the decay itself.
    initial_state: float32[B, H, N, N] in layout [key, value], or None for zeros.
    impl: "auto", or a name from `available_impls()`.
    chunk_size: chunk length for chunked implementations.
    partition: PartitionSpec of the [B, T, H, N] inputs over the active mesh (only the B and H
      entries are used); with impl "pallas" the op then runs per shard (see module docstring), on a
      mesh with Auto axes (`sharding.make_mesh`) or Explicit ones (`jax.make_mesh`'s default).
    segment_ids: int[B, T] or None. Several examples packed in a row: the state restarts from zero
      wherever the id changes (t > 0 and segment_ids[:, t] != segment_ids[:, t − 1]); initial_state
      applies to each row's first segment. None: one segment per row.
  Returns:
    (out float[B, T, H, N] with the dtype of v, final_state float32[B, H, N, N] after each row's
    last step).
  """
  if chunk_size not in (16, 32, 64):
    raise ValueError(f"wkv7: chunk_size must be 16, 32 or 64, got {chunk_size!r}")
  names = ("r", "log_w", "k", "v", "a", "b")
  arrays = (r, log_w, k, v, a, b)
  for name, x in zip(names, arrays):
    if x.ndim != 4 or x.shape != r.shape:
      raise ValueError(f"wkv7: {name} has shape {tuple(x.shape)}; expected [B, T, H, N] = {tuple(r.shape)} like r")
  batch, _, heads, size = r.shape
  if initial_state is None:
    initial_state = jnp.zeros((batch, heads, size, size), jnp.float32)
  elif initial_state.shape != (batch, heads, size, size):
    raise ValueError(f"wkv7: initial_state has shape {tuple(initial_state.shape)}; "
                     f"expected [B, H, N, N] = {(batch, heads, size, size)}")
  if segment_ids is not None:
    segment_ids = jnp.asarray(segment_ids)
    if segment_ids.shape != r.shape[:2] or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise ValueError(f"wkv7: segment_ids must be int[B, T] = {tuple(r.shape[:2])}; got "
                       f"{segment_ids.dtype}{list(segment_ids.shape)}")
  name = resolve_impl(impl)
  if r.shape[1] == 1 and impl == "auto":
    name = "reference"  # one decoding step: nothing to chunk, the plain recurrence is cheapest
  if r.shape[1] == 1:
    segment_ids = None  # a single step never starts a segment (the first one uses initial_state)
  args = (r, log_w, k, v, a, b, initial_state)
  if segment_ids is None:  # the unsegmented implementations, unchanged
    fn = lambda *xs: _IMPLS[name](*xs, chunk_size)
  else:
    fn = lambda *xs: _IMPLS[name](*xs[:7], chunk_size, segment_ids=xs[7])
    args = args + (segment_ids,)
  if name == "pallas":
    fn = _shard_over_batch_and_heads(fn, partition, r.shape, segment_ids is not None)
  return fn(*args)
