"""Packed rows (`segment_ids`): the WKV-7 op and the RWKV-7 model restart at every new example.

References:
  * op: the float64 NumPy recurrence of tests/reference.py run on each segment separately (the row's
    first segment from the initial state, the others from zero), outputs concatenated; gradients
    from its hand-written `wkv7_vjp` per segment. Every implementation available on the CPU is
    compared with it: the lax.scan, the plain-JAX chunked form and both Pallas kernel layouts in
    interpret mode, with segments that start mid-chunk, exactly at a chunk boundary, of length 1 and
    at the last step, and a non-zero initial state.
  * model: the same tiny random RWKV-7 run on each example alone (padded rows, `mask`), compared
    position by position with a batch of packed rows, incl. leading padding and padding between
    examples; gradients of a loss over all real positions w.r.t. every parameter.
Tolerance: relative RMS error (tests/README.md) < 1e-5 for fp32 against float64 and between paths.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from helpers import check, fp32_sum_tol, wkv7_inputs
from modrwkv_jax.models import rwkv7
from modrwkv_jax.ops import wkv7 as ops
from pallas_kernels.wkv7 import wkv7_pallas

NAMES = ("r", "log_w", "k", "v", "a", "b", "initial_state")
B, T, H, N = 3, 45, 2, 8


def _ids_from_starts(starts_per_row):
  """int32[B, T] segment ids 1, 2, ... from the start step of every segment after the first."""
  ids = np.ones((len(starts_per_row), T), np.int32)
  for row, starts in enumerate(starts_per_row):
    for s in starts:
      ids[row, s:] += 1
  return ids


# Chunk boundaries are at 16 and 32 (C = 16), 32 (C = 32); T = 45 is not a multiple of any chunk.
SEGMENT_IDS = _ids_from_starts([
    [5, 16, 17, 32, 44],  # mid-chunk; at a boundary with length 1; at a boundary; length 1 at the very end
    [1, 2, 30],  # a first segment of one step (the only one that sees the initial state), then one more
    [],  # one segment: the initial state flows through the whole row
])


def _segments(ids_row):
  """[(start, end)] of one row's segments."""
  cuts = [0] + [t for t in range(1, len(ids_row)) if ids_row[t] != ids_row[t - 1]] + [len(ids_row)]
  return list(zip(cuts[:-1], cuts[1:]))


def _float64_per_segment(inputs, h0, ids, d_out, d_state):
  """(out, final_state, grads) with every segment run alone in float64."""
  xs = [np.asarray(x, np.float64) for x in inputs]
  out, final = np.zeros(xs[0].shape), np.zeros(np.shape(h0))
  grads = [np.zeros(x.shape) for x in xs] + [np.zeros(np.shape(h0))]
  for row in range(ids.shape[0]):
    for n, (s, e) in enumerate(_segments(ids[row])):
      seg = [x[row:row + 1, s:e] for x in xs]
      start = np.asarray(h0[row:row + 1], np.float64) if n == 0 else np.zeros((1, H, N, N))
      out[row:row + 1, s:e], state = reference.wkv7(*seg, start)
      last = e == ids.shape[1]
      g = reference.wkv7_vjp(*seg, start, d_out[row:row + 1, s:e],
                             d_state[row:row + 1] if last else np.zeros((1, H, N, N)))
      for i in range(6):
        grads[i][row:row + 1, s:e] = g[i]
      if n == 0:
        grads[6][row:row + 1] = g[6]
      if last:
        final[row:row + 1] = state
  return out, final, grads


@pytest.fixture(scope="module")
def case():
  inputs, h0 = wkv7_inputs(jax.random.key(42), B, T, H, N)
  rng = np.random.RandomState(3)
  d_out, d_state = rng.randn(B, T, H, N), rng.randn(B, H, N, N)
  want = _float64_per_segment(inputs, h0, SEGMENT_IDS, d_out, d_state)
  return inputs, h0, d_out, d_state, want


def _run(fn, inputs, h0, d_out, d_state):
  """(out, final_state, grads of Σ out·d_out + Σ state·d_state) of fn(*xs) -> (out, state), one compile."""
  d_out, d_state = jnp.asarray(d_out, jnp.float32), jnp.asarray(d_state, jnp.float32)
  def loss(*xs):
    out, state = fn(*xs)
    return jnp.sum(out * d_out) + jnp.sum(state * d_state), (out, state)
  grads, (out, state) = jax.jit(jax.grad(loss, argnums=tuple(range(7)), has_aux=True))(*inputs, h0)
  return out, state, grads


IMPLS = {  # name -> fn(chunk size, segment ids) -> fn(*inputs, h0)
    "reference": lambda C, ids: lambda *xs: ops.wkv7(*xs[:6], xs[6], impl="reference", segment_ids=ids),
    "chunked": lambda C, ids: lambda *xs: ops.wkv7(*xs[:6], xs[6], impl="chunked", chunk_size=C, segment_ids=ids),
    "pallas_loop": lambda C, ids: lambda *xs: wkv7_pallas(*xs, C, "interpret", segment_ids=ids),  # GPU kernel
    "pallas_grid": lambda C, ids: lambda *xs: wkv7_pallas(*xs, C, "interpret_grid", segment_ids=ids),  # TPU kernel
}


@pytest.mark.parametrize("impl,chunk_size", [("reference", 16), ("chunked", 16), ("chunked", 64),
                                             ("pallas_loop", 16), ("pallas_grid", 32)])
def test_packed_rows_equal_segments_run_alone(case, impl, chunk_size):
  inputs, h0, d_out, d_state, (want_out, want_state, want_grads) = case
  fn = IMPLS[impl](chunk_size, jnp.asarray(SEGMENT_IDS))
  out, state, grads = _run(fn, inputs, h0, d_out, d_state)
  what = f"{impl} C={chunk_size} packed vs float64 per segment"
  check(f"{what}, out", out, want_out, 1e-5)
  check(f"{what}, final state", state, want_state, 1e-5)
  for name, g, w in zip(NAMES, grads, want_grads):
    check(f"{what}, d{name}", g, w, 1e-5)


@pytest.mark.parametrize("impl", ["reference", "chunked", "pallas"])
def test_no_segment_ids_is_the_unsegmented_op(case, impl):
  """segment_ids=None traces to the very computation of a call without it, forward and backward (so
  the results are bit-identical); one id per row computes the same values through the segmented code."""
  inputs, h0 = case[:2]
  def loss(ids=None, **kw):
    return lambda *xs: jnp.sum(ops.wkv7(*xs[:6], xs[6], impl=impl, **({"segment_ids": ids} if kw else {}))[0])
  jaxpr = lambda f: str(jax.make_jaxpr(jax.grad(f, argnums=tuple(range(7))))(*inputs, h0))
  assert jaxpr(loss(None, passed=True)) == jaxpr(loss())
  one_id = jnp.full((B, T), 7, jnp.int32)
  both = jax.jit(lambda *xs: (ops.wkv7(*xs[:6], xs[6], impl=impl),
                              ops.wkv7(*xs[:6], xs[6], impl=impl, segment_ids=one_id)))
  plain, one_segment = both(*inputs, h0)
  for name, got, want in zip(("out", "state"), one_segment, plain):
    check(f"{impl}, one id per row vs no ids, {name}", got, want, fp32_sum_tol(16))


def test_single_step_never_starts_a_segment(case):
  """T = 1 (decoding): the step continues the initial state whatever its id."""
  inputs, h0 = case[:2]
  step = [x[:, :1] for x in inputs]
  got = ops.wkv7(*step, h0, segment_ids=jnp.asarray([[3], [0], [1]], jnp.int32))
  want = ops.wkv7(*step, h0)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)


def test_bad_segment_ids(case):
  inputs, h0 = case[:2]
  with pytest.raises(ValueError, match=r"segment_ids must be int\[B, T\] = \(3, 45\); got int32\[3, 44\]"):
    ops.wkv7(*inputs, h0, segment_ids=jnp.ones((B, T - 1), jnp.int32))
  with pytest.raises(ValueError, match=r"segment_ids must be int\[B, T\] = \(3, 45\); got float32\[3, 45\]"):
    ops.wkv7(*inputs, h0, segment_ids=jnp.ones((B, T), jnp.float32))


@pytest.mark.parametrize("backend,platform", [("triton", "cuda"), ("tpu", "tpu")])
def test_segmented_kernels_lower_for_gpu_and_tpu(backend, platform):
  """Forward and backward kernels with the segment input trace and lower without the device."""
  inputs, h0 = wkv7_inputs(jax.random.key(0), 1, 64, 2, 64)
  inputs = [x.astype(jnp.bfloat16) for x in inputs]
  ids = jnp.asarray([[1] * 20 + [2] * 12 + [3] * 32], jnp.int32)
  loss = lambda *xs: wkv7_pallas(*xs, 32, backend, segment_ids=ids)[0].astype(jnp.float32).sum()
  text = jax.jit(jax.grad(loss, argnums=tuple(range(7)))).trace(*inputs, h0).lower(
      lowering_platforms=(platform,)).as_text()
  marker = "__gpu$xla.gpu.triton" if backend == "triton" else "tpu_custom_call"
  assert text.count(marker) == 2, f"expected forward + backward kernels in the {platform} module"


# ---------------------------------------------------------------------------------------------
# The model: packed rows vs each example alone.

CONFIG = rwkv7.RWKV7Config(vocab_size=61, n_layer=2, n_embd=32, head_size=16, dim_w=4, dim_a=4, dim_v=4,
                           dim_g=4, dim_ffn=64, wkv_impl="chunked", wkv_chunk_size=16)
L = 32  # row length: two chunks of 16
# Packed rows: (start, length) of each example. Row 0: starts mid-chunk, a one-token example, a start
# exactly at the chunk boundary 16, trailing padding. Row 1: leading padding, padding between two
# examples. Row 2: one example filling the row. Rows 3..6: all padding (the packed batch has the alone
# batch's shape, so one compiled function serves both).
PACKED = [[(0, 7), (7, 1), (8, 8), (16, 10)], [(3, 13), (18, 14)], [(0, L)], [], [], [], []]


def _noisy_params(config, seed):
  """As helpers.noisy_params (RWKV-LM init + noise of std 0.5·std(init) + 0.05 per tensor, so no matrix
  is zero), with NumPy noise: ~40 jax.random samplers would cost seconds of compilation."""
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda x: x + (0.5 * np.std(x) + 0.05) * rng.randn(*x.shape).astype(np.float32),
                      jax.device_get(rwkv7.init_params(config, jax.random.key(seed))))


@pytest.fixture(scope="module")
def model_case():
  params = _noisy_params(CONFIG, 5)
  rng = np.random.RandomState(9)
  examples = [(row, s, n, rng.randint(1, CONFIG.vocab_size, size=n)) for row, spans in enumerate(PACKED)
              for s, n in spans]
  assert len(examples) == len(PACKED)
  # Packed batch; padding holds random ids (its content must not matter) and segment id 0.
  tokens = rng.randint(0, CONFIG.vocab_size, size=(len(PACKED), L)).astype(np.int32)
  ids, mask = np.zeros((len(PACKED), L), np.int32), np.zeros((len(PACKED), L), bool)
  # Alone batch: example e in row e, left-aligned, padded.
  alone_tokens, alone_mask = np.zeros_like(tokens), np.zeros_like(mask)
  for e, (row, s, n, toks) in enumerate(examples):
    tokens[row, s:s + n], mask[row, s:s + n] = toks, True
    ids[row, s:s + n] = 1 + [sp[0] for sp in PACKED[row]].index(s)
    alone_tokens[e, :n], alone_mask[e, :n] = toks, True
  # A non-zero incoming state: each packed row's first example continues from it, the others start at zero.
  nL, rows, D, nH, hs = CONFIG.n_layer, len(PACKED), CONFIG.n_embd, CONFIG.n_head, CONFIG.head_size
  start = rwkv7.RWKV7State(rng.randn(nL, rows, D).astype(np.float32),
                           0.3 * rng.randn(nL, rows, nH, hs, hs).astype(np.float32),
                           rng.randn(nL, rows, D).astype(np.float32))
  row_of = np.asarray([row for row, *_ in examples])
  first = np.asarray([s == PACKED[row][0][0] for row, s, *_ in examples])
  alone_start = jax.tree.map(lambda x: np.where(first.reshape((1, -1) + (1,) * (x.ndim - 2)), x[:, row_of], 0), start)
  w = rng.randn(CONFIG.vocab_size).astype(np.float32)
  return dict(params=params, examples=examples, tokens=tokens, ids=ids, mask=mask, start=start,
              alone_tokens=alone_tokens, alone_mask=alone_mask, alone_start=alone_start, w=w)


def _loss_and_grads(config):
  """jit((params, tokens, mask, ids, state) -> (grads, (logits, state))) of Σ_real (logits·w)²."""
  def loss(params, tokens, mask, ids, state, w):
    logits, new_state = rwkv7.forward(config, params, tokens, state, mask=mask, segment_ids=ids)
    return jnp.sum(jnp.where(mask, jnp.square(logits @ w), 0.0)) / 100, (logits, new_state)
  return jax.jit(jax.grad(loss, has_aux=True))


def _packed_and_alone(c, config, params):
  """(grads, (logits, state)) of the packed batch and of the alone batch, through one compiled function."""
  run = _loss_and_grads(config)
  packed = run(params, c["tokens"], c["mask"], c["ids"], c["start"], c["w"])
  alone = run(params, c["alone_tokens"], c["alone_mask"], c["alone_mask"].astype(np.int32), c["alone_start"], c["w"])
  return packed, alone


def _compare(c, what, packed, alone):
  (grads, (logits, state)), (alone_grads, (alone_logits, alone_state)) = packed, alone
  for e, (row, s, n, _) in enumerate(c["examples"]):
    check(f"{what}: logits of example {e} (row {row}, steps {s}..{s + n - 1}) packed vs alone",
          logits[row, s:s + n], alone_logits[e, :n], 1e-5)
    if s + n == max(a + m for a, m in PACKED[row]):  # the row's last example: its state is the row's state
      for name in ("att_shift", "wkv", "ffn_shift"):
        check(f"{what}: row {row} final {name} vs example {e} alone",
              getattr(state, name)[:, row], getattr(alone_state, name)[:, e], 1e-5)
  for (path, g), a in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(alone_grads)):
    check(f"{what}: d{jax.tree_util.keystr(path)} packed vs alone", g, a, 1e-5)


@pytest.fixture(scope="module")
def unrolled_runs(model_case):
  return _packed_and_alone(model_case, CONFIG, model_case["params"])


def test_model_packed_rows_equal_examples_alone(model_case, unrolled_runs):
  """Logits per position, final states and parameter gradients (unrolled layers, chunked WKV)."""
  _compare(model_case, "unrolled, chunked", *unrolled_runs)


def test_model_packed_rows_scanned_with_remat_and_pallas(model_case):
  """The same with scanned layers, block remat and the Pallas kernel (CPU interpret mode)."""
  config = CONFIG.replace(scan_layers=True, remat="block", wkv_impl="pallas")
  _compare(model_case, "scanned, remat, pallas",
           *_packed_and_alone(model_case, config, rwkv7.stack_layers(model_case["params"])))


def test_model_without_segment_ids_is_one_example_per_row(model_case, unrolled_runs):
  """The alone runs above pass one segment id per row; without ids (mask only) they are the same."""
  c = model_case
  _, (logits, state) = unrolled_runs[1]
  plain, plain_state = jax.jit(rwkv7.forward, static_argnums=0)(CONFIG, c["params"], c["alone_tokens"],
                                                                c["alone_start"], mask=c["alone_mask"])
  real = c["alone_mask"]
  check("no segment_ids vs one id per row, logits", logits[real], plain[real], fp32_sum_tol(16))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(plain_state)):
    check("no segment_ids vs one id per row, state", a, b, fp32_sum_tol(16))
  with pytest.raises(ValueError, match=r"segment_ids must be int\[B, T\] = \(7, 32\); got int32\[7, 31\]"):
    rwkv7.forward(CONFIG, c["params"], c["alone_tokens"], segment_ids=np.ones((7, 31), np.int32))


def test_segment_starts_skip_padding():
  ids = jnp.asarray([[0, 0, 1, 1, 0, 2, 2, 0], [1, 2, 2, 3, 3, 3, 0, 0]], jnp.int32)
  mask = ids > 0
  np.testing.assert_array_equal(rwkv7.segment_starts(ids, mask),
                                [[0, 0, 0, 0, 0, 1, 0, 0], [0, 1, 0, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(rwkv7.segment_starts(ids), [[0, 0, 1, 0, 1, 1, 0, 1], [0, 1, 0, 1, 0, 0, 1, 0]])


SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from modrwkv_jax import sharding
    from modrwkv_jax.ops import wkv7 as ops

    B, T, H, N = 2, 40, 4, 8
    ks = jax.random.split(jax.random.key(0), 8)
    r, k, v = (jax.random.normal(kk, (B, T, H, N)) for kk in ks[:3])
    log_w = -0.6065306597 * jax.nn.sigmoid(2 * jax.random.normal(ks[3], (B, T, H, N)))
    kappa = jax.random.normal(ks[4], (B, T, H, N))
    kappa = kappa / jnp.linalg.norm(kappa, axis=-1, keepdims=True)
    a, b = -kappa, kappa * jax.nn.sigmoid(jax.random.normal(ks[5], (B, T, H, N)))
    h0 = 0.3 * jax.random.normal(ks[6], (B, H, N, N))
    ids = jnp.asarray(np.repeat([[1, 2, 3, 4], [1, 1, 2, 2]], 10, axis=1), jnp.int32)  # starts 10, 20, 30 / 20
    d = jax.random.normal(ks[7], (B, T, H, N))
    spec = P("data", None, "tensor", None)

    def run(partition):
      def loss(*xs):
        out, state = ops.wkv7(*xs, impl="pallas", partition=partition, segment_ids=ids)
        return jnp.sum(out * d) + jnp.sum(state), (out, state)
      return jax.jit(jax.grad(loss, argnums=tuple(range(7)), has_aux=True))(r, log_w, k, v, a, b, h0)

    def rel(x, y):
      x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
      return float(np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(y ** 2)))

    want_grads, want = run(None)
    mesh = sharding.make_mesh(data=2, tensor=2)
    with jax.set_mesh(mesh):
      text = jax.jit(lambda *xs: ops.wkv7(*xs, impl="pallas", partition=spec, segment_ids=ids)).trace(
          r, log_w, k, v, a, b, h0).lower().as_text()
      assert "shard_map" in text or "sdy.manual_computation" in text
      grads, got = run(spec)
    errs = [rel(x, y) for x, y in zip((*got, *grads), (*want, *want_grads))]
    print("sharded vs one device, rel RMS (out, state, dr..dh0):", " ".join(f"{e:.1e}" for e in errs))
    assert max(errs) < 1e-5
    # A mesh with Explicit axes (jax.make_mesh's default): the replicated inputs and the zero initial state
    # wkv7 creates are resharded to the shard_map specs.
    explicit = jax.make_mesh((2, 2), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    with jax.set_mesh(explicit):
      grads, got = run(spec)
      out, _ = jax.jit(lambda *xs: ops.wkv7(*xs, impl="pallas", partition=spec))(r, log_w, k, v, a, b)
    errs = [rel(x, y) for x, y in zip((*got, *grads), (*want, *want_grads))]
    print("explicit-axis mesh vs one device:", " ".join(f"{e:.1e}" for e in errs))
    assert max(errs) < 1e-5 and out.shape == r.shape
    print("OK")
""")


def test_pallas_with_segments_runs_per_shard_on_4_devices():
  """`wkv7(partition=...)` shards batch over "data" and heads over "tensor" (shard_map) with the
  segment ids split by batch; outputs and gradients equal the one-device run (rel. RMS < 1e-5), on a mesh
  with Auto axes (sharding.make_mesh) and on one with Explicit axes (jax.make_mesh's default)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, env=env, timeout=300,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  print(proc.stdout[-2000:])
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
