"""RWKV-7 LM vs the `rwkv` PyPI package (RWKV_V7_ON=1, "cpu fp32") and `rwkv7-hf`.

Checkpoints are the RWKV-LM from-scratch init plus noise (helpers.noisy_params), written by
torch.save, so both sides read the same file, in both param layouts (unrolled "blocks_i" and
scanned "blocks" with a leading layers axis). Tolerances: max |Δlogit| / rms(logit) < 1e-4 against
the packages (a coarse bound, tests/README.md); relative RMS error < 1e-5 between our own paths.
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from modrwkv_jax import sharding
from modrwkv_jax.models import rwkv7
from helpers import forbid_random_init, noisy_params, rel_max_err, rel_rms_err, torch_save_state_dict

CONFIGS = {
    # head_size 64, two heads, odd vocab, unequal LoRA ranks.
    "h64": rwkv7.RWKV7Config(vocab_size=97, n_layer=2, n_embd=128, head_size=64, dim_w=16, dim_a=8,
                             dim_v=4, dim_g=12, dim_ffn=256),
    # head_size 32, three heads, three layers, other ranks, ffn not 4·D.
    "h32": rwkv7.RWKV7Config(vocab_size=331, n_layer=3, n_embd=96, head_size=32, dim_w=8, dim_a=12,
                             dim_v=6, dim_g=10, dim_ffn=160),
}
T = 40

forward = jax.jit(rwkv7.forward, static_argnums=0)


class Case:
  """A random checkpoint on disk, loaded by us and by the reference."""

  def __init__(self, name, tmp_dir, seed):
    from rwkv.model import RWKV
    self.config = CONFIGS[name]
    params = noisy_params(self.config, seed)
    self.path = os.path.join(tmp_dir, f"{name}.pth")
    torch_save_state_dict(rwkv7.state_dict_from_params(self.config, params), self.path)
    self.loaded_config, self.params = rwkv7.load_pth(self.path)
    self.scanned_config, self.scanned_params = rwkv7.load_pth(self.path, scan_layers=True)
    self.reference = RWKV(model=self.path[:-4], strategy="cpu fp32")
    rng = np.random.RandomState(seed)
    self.tokens = rng.randint(0, self.config.vocab_size, size=(1, T)).astype(np.int32)

  def reference_forward(self, tokens, state=None):
    logits, state = self.reference.forward([int(t) for t in tokens], state, full_output=True)
    return logits.numpy(), state


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request, tmp_path_factory):
  return Case(request.param, str(tmp_path_factory.mktemp("ckpt")), seed=list(CONFIGS).index(request.param))


@pytest.fixture(scope="module")
def h64(tmp_path_factory):
  return Case("h64", str(tmp_path_factory.mktemp("h64")), seed=0)


def test_load_pth_infers_config(case):
  assert case.loaded_config == case.config


@pytest.mark.parametrize("layout", ["unrolled", "scanned"])
def test_logits_and_state_parity_with_rwkv_package(case, layout):
  config, params = ((case.config, case.params) if layout == "unrolled" else
                    (case.scanned_config, case.scanned_params))
  assert config.scan_layers == (layout == "scanned") and rwkv7.is_scanned(params) == config.scan_layers
  logits, state = forward(config, params, jnp.asarray(case.tokens))
  ref_logits, ref_state = case.reference_forward(case.tokens[0])
  assert logits.dtype == jnp.float32 and logits.shape == (1, T, case.config.vocab_size)
  err = rel_max_err(logits[0], ref_logits)
  print(f"\n[{case.config.n_embd}/{case.config.head_size}] max|Δlogit|/rms(logit) over {T} positions = {err:.2e}")
  assert err < 1e-4
  for i in range(case.config.n_layer):
    att_shift, wkv, ffn_shift = (ref_state[3 * i + j].numpy() for j in range(3))
    # The rwkv package stores S[h, value, key]; ours is h = Sᵀ [h, key, value].
    assert rel_max_err(state.wkv[i, 0], wkv.transpose(0, 2, 1)) < 1e-4
    assert rel_rms_err(state.att_shift[i, 0], att_shift) < 1e-5
    assert rel_rms_err(state.ffn_shift[i, 0], ffn_shift) < 1e-5


def test_prefill_then_continue_equals_one_pass(h64):
  tokens = jnp.asarray(h64.tokens)
  full, full_state = forward(h64.config, h64.params, tokens)
  first, state = forward(h64.config, h64.params, tokens[:, :17])
  second, state = forward(h64.config, h64.params, tokens[:, 17:], state)
  assert rel_rms_err(jnp.concatenate([first, second], 1), full) < 1e-5
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(full_state)):
    assert rel_rms_err(a, b) < 1e-5


def test_token_by_token_decoding_equals_full_pass(h64):
  tokens = jnp.asarray(h64.tokens)
  full, _ = forward(h64.config, h64.params, tokens)
  state, steps = None, []
  for t in range(T):
    logits, state = forward(h64.config, h64.params, tokens[:, t:t + 1], state)
    steps.append(logits)
  assert rel_rms_err(jnp.concatenate(steps, 1), full) < 1e-5
  # And the rwkv package's own one-token path agrees with ours at the last step.
  ref_state = None
  for t in range(T):
    ref_logits, ref_state = h64.reference.forward([int(h64.tokens[0, t])], ref_state)
  assert rel_max_err(steps[-1][0, 0], ref_logits.numpy()) < 1e-4


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_with_mask_equals_separate_runs(h64, side):
  cfg, params = h64.config, h64.params
  rng = np.random.RandomState(7)
  lengths = [T, 25, 9]
  rows = [rng.randint(1, cfg.vocab_size, size=n) for n in lengths]
  # Padding holds random ids, not zeros, to show that its content cannot leak.
  tokens = rng.randint(0, cfg.vocab_size, size=(3, T)).astype(np.int32)
  mask = np.zeros((3, T), bool)
  for i, row in enumerate(rows):
    sl = slice(0, len(row)) if side == "right" else slice(T - len(row), T)
    tokens[i, sl], mask[i, sl] = row, True
  # Start from a non-zero state so that "padding leaves the state untouched" is visible.
  _, start = forward(cfg, params, jnp.asarray(rng.randint(0, cfg.vocab_size, size=(3, 5)), jnp.int32))
  logits, state = forward(cfg, params, jnp.asarray(tokens), start, mask=jnp.asarray(mask))
  for i, row in enumerate(rows):
    one_start = jax.tree.map(lambda x: x[:, i:i + 1], start)
    ref, ref_state = forward(cfg, params, jnp.asarray(row[None], jnp.int32), one_start)
    assert rel_rms_err(logits[i][mask[i]], ref[0]) < 1e-5, (side, i)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
      assert rel_rms_err(a[:, i], b[:, 0]) < 1e-5, (side, i)
  # A row that is all padding returns its state unchanged, bit for bit.
  empty = jnp.zeros((3, T), bool)
  _, same = forward(cfg, params, jnp.asarray(tokens), start, mask=empty)
  for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(start)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("impl", ["chunked", "reference"])
def test_padding_content_never_reaches_real_positions_or_the_state(h64, impl):
  """Whatever a padding position holds (NaN, inf embeddings, an out-of-vocabulary id), real positions and
  the returned state equal the run without it; an out-of-vocabulary id at a real position gives NaN
  logits (jitted code cannot raise), never a silently wrapped-around embedding."""
  cfg = h64.config.replace(wkv_impl=impl)
  tokens = jnp.asarray(h64.tokens[:, :24])
  emb = rwkv7.embed(cfg, h64.params, tokens)
  mask = np.ones((1, 24), bool)
  mask[0, [3, 10, 11, 23]] = False
  clean_emb = emb[:, mask[0]]
  want, want_state = forward(cfg, h64.params, embeddings=clean_emb)
  dirty = emb.at[0, 3].set(jnp.nan).at[0, 10].set(jnp.inf).at[0, 11].set(-jnp.inf).at[0, 23].set(jnp.nan)
  got, state = forward(cfg, h64.params, embeddings=dirty, mask=jnp.asarray(mask))
  assert rel_rms_err(got[:, mask[0]], want) < 1e-5
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want_state)):
    assert np.isfinite(np.asarray(a)).all() and rel_rms_err(a, b) < 1e-5
  ids = np.asarray(h64.tokens[:, :24]).copy()
  ids[0, [3, 10]] = [cfg.vocab_size + 3, -1]  # out of range, at padding
  got, _ = forward(cfg, h64.params, jnp.asarray(ids), mask=jnp.asarray(mask))
  assert rel_rms_err(got[:, mask[0]], forward(cfg, h64.params, jnp.asarray(ids[:, mask[0]]))[0]) < 1e-5
  ids[0, 5] = -1  # out of range at a real position: NaN (the chunked form may spread it over its chunk)
  got, _ = forward(cfg, h64.params, jnp.asarray(ids), mask=jnp.asarray(mask))
  assert np.isnan(np.asarray(got[0, 5:])).all()


def test_embeddings_input_equals_tokens(h64):
  tokens = jnp.asarray(h64.tokens)
  by_tokens, _ = forward(h64.config, h64.params, tokens)
  emb = rwkv7.embed(h64.config, h64.params, tokens)
  by_vectors, _ = forward(h64.config, h64.params, embeddings=emb)
  np.testing.assert_array_equal(by_tokens, by_vectors)


@pytest.mark.parametrize("layout", ["unrolled", "scanned"])
def test_save_pth_loads_in_rwkv_package_and_round_trips(h64, tmp_path, layout):
  from rwkv.model import RWKV
  config, params = ((h64.config, h64.params) if layout == "unrolled" else (h64.scanned_config, h64.scanned_params))
  path = tmp_path / "saved.pth"
  rwkv7.save_pth(config, params, path)
  cfg2, params2 = rwkv7.load_pth(path, config)
  assert cfg2 == config
  for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # The file carries RWKV-LM's full key set, including the unused block-0 value LoRA.
  sd = torch.load(path, weights_only=True)
  assert {"blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"} <= set(sd)
  assert sd["blocks.1.att.x_r"].shape == (1, 1, h64.config.n_embd)
  ref = RWKV(model=str(path)[:-4], strategy="cpu fp32")
  ref_logits, _ = ref.forward([int(t) for t in h64.tokens[0]], None, full_output=True)
  logits, _ = forward(config, params, jnp.asarray(h64.tokens))
  assert rel_max_err(logits[0], ref_logits.numpy()) < 1e-4


def test_stack_and_unstack_layers_convert_exactly(h64):
  stacked = rwkv7.stack_layers(h64.params)
  assert jax.tree.structure(stacked) == jax.tree.structure(h64.scanned_params)
  for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(h64.scanned_params)):
    np.testing.assert_array_equal(a, b)  # block 0's unused v0/v1/v2: the file's values = RWKV-LM's init
  back = rwkv7.unstack_layers(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(h64.params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(h64.params)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="scan_layers=False"):
    rwkv7.forward(h64.config, stacked, jnp.asarray(h64.tokens))


@pytest.mark.parametrize("remat", ["none", "block", "dots_with_no_batch_dims_saveable"])
def test_scanned_and_unrolled_give_equal_logits_and_gradients(h64, remat):
  tokens = jnp.asarray(h64.tokens)
  scfg = h64.scanned_config.replace(remat=remat)

  def loss(config, params):
    logits, state = rwkv7.forward(config, params, tokens)
    return jnp.mean(jnp.square(logits)) + jnp.mean(jnp.square(state.wkv))

  grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
  value, g = grad(h64.config, h64.params)
  svalue, sg = grad(scfg, h64.scanned_params)
  assert rel_rms_err(svalue, value) < 1e-5
  sg = rwkv7.unstack_layers(sg)  # block 0's unused v0/v1/v2 get zero gradient and are dropped here
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(sg), jax.tree.leaves(g)):
    assert rel_rms_err(a, b) < 1e-5, jax.tree_util.keystr(path)


def test_loading_never_runs_the_initialiser(h64, monkeypatch):
  forbid_random_init(monkeypatch, [(rwkv7, "_init_boxed"), (rwkv7, "init_params")])
  mesh = sharding.make_mesh()
  for scan in (False, True):
    cfg, params = rwkv7.load_pth(h64.path, scan_layers=scan, mesh=mesh)
    assert cfg.scan_layers == scan and rwkv7.is_scanned(params) == scan
    assert all(leaf.sharding.mesh == mesh for leaf in jax.tree.leaves(params))
  with pytest.raises(AssertionError, match="computed a random initialisation"):
    rwkv7.init_params(h64.config, jax.random.key(0))  # the guard itself works


def test_a_huge_layer_index_is_rejected_before_anything_is_sized(h64, tmp_path):
  sd = rwkv7.state_dict_from_params(h64.config, h64.params)
  sd["blocks.1000000.ln1.weight"] = np.ones((h64.config.n_embd,), np.float32)
  torch_save_state_dict(sd, tmp_path / "huge.pth")
  with pytest.raises(ValueError, match=r"huge.pth: layer indices are not 0..2.*largest index 1000000"):
    rwkv7.load_pth(tmp_path / "huge.pth")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_load_pth_low_precision_files(h64, tmp_path, dtype):
  sd = rwkv7.state_dict_from_params(h64.config, h64.params)
  torch_save_state_dict(sd, tmp_path / "low.pth", dtype=dtype)
  cfg, params = rwkv7.load_pth(tmp_path / "low.pth")
  assert cfg == h64.config
  # Values equal torch's own rounding of the fp32 weights.
  want = rwkv7.params_from_state_dict(
      {k: torch.from_numpy(np.array(v)).to(dtype).float().numpy() for k, v in sd.items()})[1]
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  assert params["blocks_0"]["att"]["w1"].dtype == jnp.float32
  # Missing block-0 v0/v1/v2 is accepted.
  sd = {k: v for k, v in sd.items() if k not in ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")}
  torch_save_state_dict(sd, tmp_path / "no_v0.pth")
  assert rwkv7.load_pth(tmp_path / "no_v0.pth")[0] == h64.config


def test_safetensors_parity_with_rwkv7_hf(h64, tmp_path):
  from rwkv7_hf import RWKV7ForCausalLM, converter
  out = tmp_path / "hf"
  converter.main(["--input", h64.path, "--output", str(out), "--precision", "fp32"])
  model = RWKV7ForCausalLM.from_pretrained(str(out)).eval()
  with torch.no_grad():
    ref = model(torch.tensor(h64.tokens, dtype=torch.long)).logits.numpy()
  cfg, params = rwkv7.load_safetensors(out)
  assert cfg == h64.config
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(h64.params)):
    np.testing.assert_array_equal(a, b)
  logits, _ = forward(cfg, params, jnp.asarray(h64.tokens))
  err = rel_max_err(logits[0], ref[0])
  print(f"\nrwkv7-hf: max|Δlogit|/rms(logit) = {err:.2e}")
  assert err < 1e-4


def test_bf16_compute_close_to_fp32(h64):
  cfg = h64.config.replace(dtype="bfloat16")
  logits, state = forward(cfg, h64.params, jnp.asarray(h64.tokens))
  ref, ref_state = forward(h64.config, h64.params, jnp.asarray(h64.tokens))
  assert logits.dtype == jnp.float32 and state.wkv.dtype == jnp.float32
  err = rel_rms_err(logits, ref)
  print(f"\nbf16 compute vs fp32: rel rms logit error = {err:.2e}")
  assert err < 3e-2


def test_checkpoint_errors(h64, tmp_path):
  sd = rwkv7.state_dict_from_params(h64.config, h64.params)
  missing = {k: v for k, v in sd.items() if k != "blocks.1.att.a2"}
  torch_save_state_dict(missing, tmp_path / "missing.pth")
  with pytest.raises(ValueError, match=r"missing.pth: missing key 'blocks.1.att.a2' \(expected shape \(8, 128\)\)"):
    rwkv7.load_pth(tmp_path / "missing.pth")
  bad = dict(sd, **{"blocks.1.att.w1": np.zeros((128, 15), np.float32)})
  torch_save_state_dict(bad, tmp_path / "shape.pth")
  with pytest.raises(ValueError, match=r"shape.pth: key 'blocks.1.att.w1' has shape \(128, 15\); expected \(128, 16\)"):
    rwkv7.load_pth(tmp_path / "shape.pth")
  extra = dict(sd, **{"blocks.0.ffn.s_emb.weight": np.zeros((97, 32), np.float32)})
  torch_save_state_dict(extra, tmp_path / "extra.pth")
  with pytest.raises(ValueError, match=r"extra.pth: unexpected keys \['blocks.0.ffn.s_emb.weight'\]"):
    rwkv7.load_pth(tmp_path / "extra.pth")
  with pytest.raises(ValueError, match=r"h64.pth: checkpoint is from another model size: vocab_size=97 \(expected 65536\), n_layer=2 \(expected 12\), n_embd=128 \(expected 768\)"):
    rwkv7.load_pth(h64.path, config=rwkv7.preset("0.1B"))


def test_input_errors(h64):
  cfg, params = h64.config, h64.params
  with pytest.raises(ValueError, match=r"prompt: token id 97 is outside the vocabulary \[0, 97\)"):
    rwkv7.check_tokens(cfg, np.array([[1, 97]]), "prompt")
  with pytest.raises(ValueError, match=r"tokens must be int\[B, T\]; got shape \(3,\)"):
    rwkv7.forward(cfg, params, jnp.array([1, 2, 3]))
  with pytest.raises(ValueError, match="exactly one of tokens"):
    rwkv7.forward(cfg, params)
  other = rwkv7.init_state(CONFIGS["h32"], 1)
  with pytest.raises(ValueError, match=r"state.att_shift has shape \(3, 1, 96\).*expects \(2, 1, 128\)"):
    rwkv7.forward(cfg, params, jnp.array([[1, 2]]), other)
  with pytest.raises(ValueError, match=r"mask has shape \(1, 3\); expected \[B, T\] = \(1, 2\)"):
    rwkv7.forward(cfg, params, jnp.array([[1, 2]]), mask=jnp.ones((1, 3), bool))
  with pytest.raises(ValueError, match=r"params have no 'blocks_2'"):
    rwkv7.forward(CONFIGS["h32"], params, jnp.array([[1, 2]]))
  with pytest.raises(ValueError, match="n_embd=100 is not a multiple of head_size=64"):
    rwkv7.RWKV7Config(n_embd=100)


def test_from_scratch_init_follows_rwkv_lm():
  cfg = rwkv7.RWKV7Config(vocab_size=300, n_layer=3, n_embd=128, head_size=32, dim_w=8, dim_a=8,
                          dim_v=4, dim_g=16, dim_ffn=512)
  p = rwkv7.init_params(cfg, jax.random.key(3))
  D = cfg.n_embd
  # Layer 1 of 3: r1 = 1 - 1/3; channel 64: ddd = 0.5.  x_r = 1 - 0.5^(0.2·2/3).
  att1 = p["blocks_1"]["att"]
  np.testing.assert_allclose(att1["x_r"][64], 1 - 0.5 ** (0.2 * 2 / 3), rtol=1e-6)
  np.testing.assert_allclose(p["blocks_1"]["ffn"]["x_k"][64], 1 - 0.5 ** ((2 / 3) ** 4), rtol=1e-6)
  # w0 at channel 0 of layer 0: www = -6, zig(n=0) = -1 -> -6 + 0.5 - 2.5 = -8.
  np.testing.assert_allclose(p["blocks_0"]["att"]["w0"][0], -8.0, rtol=1e-6)
  # a0 at the last channel of layer 2: linear = 0.5, z = 1 -> -0.19 + 0.3 + 0.2.
  np.testing.assert_allclose(p["blocks_2"]["att"]["a0"][D - 1], 0.31, rtol=1e-5)
  np.testing.assert_allclose(att1["ln_x"]["scale"], (2 / 3) ** 0.7, rtol=1e-6)
  np.testing.assert_allclose(att1["r_k"], -0.04)
  np.testing.assert_allclose(att1["k_a"], 1.02)
  for zero in (att1["w1"], att1["a1"], att1["v1"], att1["g1"], att1["output"]["kernel"],
               p["blocks_1"]["ffn"]["value"]["kernel"]):
    assert not np.any(zero)
  # Orthogonal matrices, with RWKV-LM's gains.
  eye = np.eye(D)
  r = np.asarray(att1["receptance"]["kernel"], np.float64)
  np.testing.assert_allclose(r.T @ r, eye, atol=1e-5)
  k = np.asarray(att1["key"]["kernel"], np.float64)
  np.testing.assert_allclose(k.T @ k, 0.01 * eye, atol=1e-6)
  w2 = np.asarray(att1["w2"], np.float64)  # [dw, D], rows orthonormal ·0.1
  np.testing.assert_allclose(w2 @ w2.T, 0.01 * np.eye(cfg.dim_w), atol=1e-6)
  head = np.asarray(p["head"]["kernel"], np.float64)  # [D, V]; torch [V, D] gets gain sqrt(V/D)·0.5
  np.testing.assert_allclose(head @ head.T, (0.5 * math.sqrt(300 / D)) ** 2 * eye, rtol=1e-4, atol=1e-4)
  emb = np.asarray(p["emb"]["embedding"])
  assert emb.shape == (300, D) and np.abs(emb).max() <= 1e-4 and emb.std() > 3e-5
  assert "v0" not in p["blocks_0"]["att"]
  # Scanned layers compute the same constants from a traced layer index (float32 instead of float64).
  sp = rwkv7.init_params(cfg.replace(scan_layers=True), jax.random.key(3))
  for layer in range(cfg.n_layer):
    for name in ("x_r", "x_w", "x_k", "x_a", "x_g", "w0", "a0", "k_k", "k_a", "r_k"):
      np.testing.assert_allclose(sp["blocks"]["att"][name][layer], p[f"blocks_{layer}"]["att"][name], rtol=1e-5,
                                 atol=1e-6, err_msg=f"{name} of layer {layer}")
    np.testing.assert_allclose(sp["blocks"]["att"]["ln_x"]["scale"][layer], p[f"blocks_{layer}"]["att"]["ln_x"]["scale"],
                               rtol=1e-5)
    np.testing.assert_allclose(sp["blocks"]["ffn"]["x_k"][layer], p[f"blocks_{layer}"]["ffn"]["x_k"], rtol=1e-5,
                               atol=1e-6)


def test_param_logical_axes_cover_every_param():
  cfg = CONFIGS["h32"]
  axes = rwkv7.param_logical_axes(cfg)
  shapes = jax.eval_shape(lambda: rwkv7.init_params(cfg, jax.random.key(0)))
  flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  flat_shapes = jax.tree.leaves(shapes)
  assert jax.tree.structure(shapes) == jax.tree.structure(
      axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  for spec, shape in zip(flat_axes, flat_shapes):
    assert len(spec) == len(shape.shape)
  assert axes["head"]["kernel"] == jax.sharding.PartitionSpec("embed", "vocab")
  assert axes["blocks_0"]["att"]["receptance"]["kernel"] == jax.sharding.PartitionSpec("embed", "attn")


def test_presets_have_released_sizes():
  # Parameter counts of the released models (embedding and head included), from shapes only.
  counts = {}
  for name, cfg in rwkv7.PRESETS.items():
    shapes = jax.eval_shape(lambda: rwkv7.init_params(cfg, jax.random.key(0)))
    counts[name] = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  assert rwkv7.PRESETS["1.5B"].dim_g == 256 and rwkv7.PRESETS["2.9B"].n_layer == 32
  # 0.1B ≈ 191M, 0.4B ≈ 450M, 1.5B ≈ 1.53B, 2.9B ≈ 2.95B.
  assert 0.18e9 < counts["0.1B"] < 0.20e9
  assert 0.43e9 < counts["0.4B"] < 0.47e9
  assert 1.45e9 < counts["1.5B"] < 1.6e9
  assert 2.8e9 < counts["2.9B"] < 3.1e9


def test_wkv_implementations_agree_inside_the_model(h64):
  tokens = jnp.asarray(h64.tokens)
  ref, ref_state = forward(h64.config.replace(wkv_impl="reference"), h64.params, tokens)
  for impl, chunk in (("chunked", 16), ("chunked", 32), ("pallas", 16)):  # pallas: CPU interpret mode
    got, state = forward(h64.config.replace(wkv_impl=impl, wkv_chunk_size=chunk), h64.params, tokens)
    assert rel_rms_err(got, ref) < 1e-5
    assert rel_rms_err(state.wkv, ref_state.wkv) < 1e-5
