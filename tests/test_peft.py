"""Bone, Bat, LoRA and PiSSA vs Hugging Face `peft` on a torch nn.Linear, then on a tiny RWKV-7.

References: peft `MissConfig()` (Bone), `MissConfig(init_weights="bat")` (Bat), `LoraConfig` (LoRA,
and `init_lora_weights="pissa"`), each wrapping a bias-free torch.nn.Linear whose adapter weights
are set to random non-zero values; the `rwkv` package for the exported merged .pth.
Tolerances (max |Δ| / rms(reference), fp32): layer outputs and merged weights < 1e-6; merge then
unmerge < 1e-6 (Bat, through (I + D)⁻¹, < 1e-5); PiSSA's residual < 5e-5 (an fp32 SVD fixes the
top-r subspace of a random matrix to ~1e-5, peft's as well as ours); adapter model vs merged model
logits < 1e-5; merged .pth in `rwkv` < 1e-4 (the bound test_rwkv7 uses for the plain model).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from modrwkv_jax import peft
from modrwkv_jax.models import rwkv7
from helpers import rel_max_err

# ---------------------------------------------------------------------------------------------
# One layer vs peft.


class TorchLinear(torch.nn.Module):
  def __init__(self, n_in, n_out):
    super().__init__()
    self.lin = torch.nn.Linear(n_in, n_out, bias=False)

  def forward(self, x):
    return self.lin(x)


def peft_layer(n_in, n_out, peft_config, seed):
  """(peft model, its adapted layer, our kernel = Wᵀ float[in, out] of the Linear before peft saw it)."""
  from peft import get_peft_model
  torch.manual_seed(seed)
  base = TorchLinear(n_in, n_out)
  kernel = base.lin.weight.detach().numpy().T.copy()
  model = get_peft_model(base, peft_config)
  return model, model.base_model.model.lin, kernel


def layer_input(n_in, seed):
  return np.random.RandomState(seed).randn(3, 5, n_in).astype(np.float32)


def check(name, value, ref, tol):
  err = rel_max_err(value, ref)
  print(f"\n{name}: max|Δ|/rms = {err:.2e} (tolerance {tol:.0e})")
  assert err < tol, (name, err)


# (in, out, r): divisible; in % r != 0 (the padded last shard); peft's default r = 64 with in % r != 0.
BONE_SHAPES = [(96, 80, 32), (100, 72, 32), (200, 48, 64)]


@pytest.mark.parametrize("n_in,n_out,r", BONE_SHAPES)
def test_bone_matches_peft_miss(n_in, n_out, r):
  from peft import MissConfig
  model, lin, kernel = peft_layer(n_in, n_out, MissConfig(r=r, target_modules=["lin"]), seed=n_in)
  assert tuple(lin.miss_block["default"].shape) == (r, n_out)  # our block layout: D float[r, out]
  lin.miss_block["default"].data = 0.05 * torch.randn(r, n_out)  # the scale of W's entries, U(±1/√in)
  x = layer_input(n_in, 0)
  block = lin.miss_block["default"].detach().numpy().copy()
  with torch.no_grad():
    ref = model(torch.from_numpy(x)).numpy()
  check(f"Bone {n_in}x{n_out} r={r} forward", peft.bone_apply(x, kernel, block), ref, 1e-6)
  # The forward never builds the merged [in, out] kernel: no intermediate of that shape.
  eqns = jax.make_jaxpr(peft.bone_apply)(x, kernel, block).eqns
  assert not [e.primitive for e in eqns for v in e.outvars if v.aval.shape == (n_in, n_out)]

  merged = peft.bone_merge(kernel, block)
  model.merge_adapter()
  check(f"Bone {n_in}x{n_out} r={r} merged weight", merged, lin.base_layer.weight.detach().numpy().T, 1e-6)
  check(f"Bone {n_in}x{n_out} r={r} merge -> unmerge", peft.bone_unmerge(merged, block), kernel, 1e-6)
  model.unmerge_adapter()
  check(f"Bone {n_in}x{n_out} r={r} unmerge vs peft unmerge", peft.bone_unmerge(merged, block),
        lin.base_layer.weight.detach().numpy().T, 1e-6)


def test_bat_matches_peft():
  from peft import MissConfig
  n_in, n_out, r = 96, 64, 32
  model, lin, kernel = peft_layer(n_in, n_out, MissConfig(r=r, init_weights="bat", target_modules=["lin"]), seed=1)
  assert tuple(lin.miss_block["default"].shape) == (n_out // r, r, r)
  # 0.05·N(0, 1) keeps cond(I + D_i) ≈ 2; at 0.2 it is ≈ 300 and peft's own round trip misses 1e-5.
  lin.miss_block["default"].data = 0.05 * torch.randn(n_out // r, r, r)
  x = layer_input(n_in, 1)
  block = lin.miss_block["default"].detach().numpy().copy()
  with torch.no_grad():
    ref = model(torch.from_numpy(x)).numpy()
  check("Bat forward", peft.bat_apply(x, kernel, block), ref, 1e-6)

  merged = peft.bat_merge(kernel, block)
  model.merge_adapter()
  check("Bat merged weight", merged, lin.base_layer.weight.detach().numpy().T, 1e-6)
  model.unmerge_adapter()  # peft's own (W' - D)(I + D)^-1
  print(f"\n(peft's own Bat merge -> unmerge: {rel_max_err(lin.base_layer.weight.detach().numpy().T, kernel):.2e})")
  check("Bat merge -> unmerge", peft.bat_unmerge(merged, block), kernel, 1e-5)
  check("Bat unmerge vs peft unmerge", peft.bat_unmerge(merged, block), lin.base_layer.weight.detach().numpy().T, 1e-5)


def test_bat_refuses_non_divisible_shapes():
  with pytest.raises(ValueError, match=r"Bat needs in % r == out % r == 0.*\(100, 64\).*r = 32"):
    peft.bat_merge(jnp.zeros((100, 64)), jnp.zeros((2, 32, 32)))
  with pytest.raises(ValueError, match=r"Bat needs"):
    peft.bone.bat_init(jnp.zeros((96, 72)), 32)


def test_lora_matches_peft():
  from peft import LoraConfig
  n_in, n_out, r, alpha = 100, 72, 8, 16
  model, lin, kernel = peft_layer(n_in, n_out, LoraConfig(r=r, lora_alpha=alpha, target_modules=["lin"]), seed=2)
  # Initialisation: peft's kaiming_uniform_(a=√5) on lora_A [r, in] is U(±1/√in); lora_B is zero.
  bound = 1 / math.sqrt(n_in)
  a0, b0 = peft.lora.lora_init(jax.random.key(0), jnp.zeros((n_in, n_out)), r)
  assert a0.shape == (n_in, r) and b0.shape == (r, n_out) and not np.any(b0) and not lin.lora_B["default"].weight.any()
  for a in (np.asarray(a0), lin.lora_A["default"].weight.detach().numpy()):
    assert bound * 0.9 < np.abs(a).max() <= bound
  lin.lora_A["default"].weight.data = 0.1 * torch.randn(r, n_in)
  lin.lora_B["default"].weight.data = 0.1 * torch.randn(n_out, r)
  x = layer_input(n_in, 2)
  a = lin.lora_A["default"].weight.detach().numpy().T.copy()
  b = lin.lora_B["default"].weight.detach().numpy().T.copy()
  scale = alpha / r
  with torch.no_grad():
    ref = model(torch.from_numpy(x)).numpy()
  check("LoRA forward", peft.lora_apply(x, kernel, a, b, scale), ref, 1e-6)
  merged = peft.lora_merge(kernel, a, b, scale)
  model.merge_adapter()
  check("LoRA merged weight", merged, lin.base_layer.weight.detach().numpy().T, 1e-6)
  check("LoRA merge -> unmerge", peft.lora_unmerge(merged, a, b, scale), kernel, 1e-6)


def test_pissa_matches_peft():
  from peft import LoraConfig
  n_in, n_out, r, alpha = 96, 80, 8, 16
  model, lin, kernel = peft_layer(n_in, n_out, LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="pissa",
                                                          target_modules=["lin"]), seed=3)
  residual, a, b = peft.pissa_init(kernel, r, alpha / r)
  peft_a = lin.lora_A["default"].weight.detach().numpy().T
  peft_b = lin.lora_B["default"].weight.detach().numpy().T
  # Singular vectors have a sign per component; a·b and the residual do not. The residual is W less
  # its dominant part, and the top-r subspace of a random W (σ_8/σ_9 ≈ 1.02 here) is only fixed to
  # ~1e-5 by an fp32 SVD: peft and we both sit ~1.5e-5 from the float64 truth, hence 5e-5 here.
  u, sv, vt = np.linalg.svd(kernel.astype(np.float64), full_matrices=False)
  truth = kernel - (u[:, :r] * sv[:r]) @ vt[:r]
  peft_residual = lin.base_layer.weight.detach().numpy().T
  print(f"\n(peft's PiSSA residual vs float64 SVD: {rel_max_err(peft_residual, truth):.2e})")
  check("PiSSA residual vs float64 SVD", residual, truth, 5e-5)
  check("PiSSA residual vs peft", residual, peft_residual, 5e-5)
  check("PiSSA a @ b vs peft", np.asarray(a) @ np.asarray(b), peft_a @ peft_b, 5e-5)
  check("PiSSA residual + s·a b = W", peft.lora_merge(residual, a, b, alpha / r), kernel, 1e-6)


# ---------------------------------------------------------------------------------------------
# A tiny RWKV-7 with adapters.

# D = 128, F = 256: Bone r = 48 leaves in % r != 0 on every target (128 % 48 = 32, 256 % 48 = 16).
# The scan WKV-7 compiles fastest; the WKV op is not under test here.
CFG = rwkv7.RWKV7Config(vocab_size=97, n_layer=2, n_embd=128, head_size=64, dim_w=16, dim_a=8, dim_v=4,
                        dim_g=12, dim_ffn=256, wkv_impl="reference")
BONE = peft.PeftConfig(method="bone", r=48)
METHOD_CONFIGS = {
    "bone": BONE,
    "bat": peft.PeftConfig(method="bat", r=32),
    "lora": peft.PeftConfig(method="lora", r=8, alpha=16.0),
    "pissa": peft.PeftConfig(method="lora", r=8, alpha=16.0, lora_init="pissa"),
}
B, T = 2, 17

forward = jax.jit(rwkv7.forward, static_argnums=0)


@pytest.fixture(scope="module")
def base():
  """helpers.noisy_params's recipe (init + N(0, 0.5·std + 0.05) noise), the noise drawn by NumPy: no compiles."""
  rng = np.random.RandomState(0)
  noisy = lambda x: x + (0.5 * x.std() + 0.05) * rng.standard_normal(x.shape)
  params = jax.tree.map(lambda x: jnp.asarray(noisy(np.asarray(x)), jnp.float32),
                        rwkv7.init_params(CFG, jax.random.key(0)))
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, CFG.vocab_size, size=(B, T)), jnp.int32)
  return params, tokens


def perturbed(tree, mask, scale, seed):
  """The tree with N(0, scale²) NumPy noise added to its trainable leaves (random non-zero adapters)."""
  rng = np.random.RandomState(seed)
  trainable, frozen = peft.partition(tree, mask)
  noisy = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape), jnp.float32),
                       trainable)
  return peft.combine(noisy, frozen)


@pytest.fixture(scope="module")
def adapted(base):
  """{method: (params with that adapter freshly added, trainable mask)}."""
  params, _ = base
  return {m: peft.add_adapters(params, c, jax.random.key(2)) for m, c in METHOD_CONFIGS.items()}


def loss_fn(trainable, frozen, tokens):
  logits, _ = rwkv7.forward(CFG, peft.combine(trainable, frozen), tokens[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


@pytest.fixture(scope="module")
def bone_run(base, adapted):
  """Three Adam steps on the Bone blocks only. The optimizer and jax.grad see the trainable subtree."""
  _, tokens = base
  trainable, frozen = peft.partition(*adapted["bone"])
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(trainable)

  @jax.jit
  def step(trainable, opt_state, frozen, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(trainable, frozen, tokens)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss, grads

  start, losses = trainable, []
  for _ in range(3):
    trainable, opt_state, loss, grads = step(trainable, opt_state, frozen, tokens)
    losses.append(float(loss))
  return dict(start=start, trainable=trainable, opt_state=opt_state, grads=grads, losses=losses,
              trained=peft.combine(trainable, frozen))


def test_bone_at_init_is_the_base_model(base, adapted):
  params, tokens = base
  # x K + shards · 0 is x K exactly, but XLA fuses the two graphs differently: equal to fp32 rounding.
  bone_logits = forward(CFG, adapted["bone"][0], tokens)[0]
  check("Bone model at init vs base model", bone_logits, forward(CFG, params, tokens)[0], 1e-5)


def test_bone_steps_train_only_the_blocks(base, bone_run):
  params, _ = base
  run = bone_run
  blocks = peft.adapter_leaves(run["trainable"])
  assert len(blocks) == 6 * CFG.n_layer and all(name.endswith("/bone") for name in blocks)
  # The optimizer saw only the blocks: Adam's mu and nu have exactly their shapes, nothing else.
  state_shapes = sorted(x.shape for x in jax.tree.leaves(run["opt_state"]) if x.ndim)
  assert state_shapes == sorted(2 * [x.shape for x in blocks.values()])
  assert jax.tree.structure(run["grads"]) == jax.tree.structure(run["start"])
  # Frozen weights bit-identical; every block moved from zero; the loss went down.
  trained_flat = jax.tree_util.tree_flatten_with_path(run["trained"])[0]
  original = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  n_frozen = 0
  for path, value in trained_flat:
    if path[-1].key == "bone":
      assert np.any(value), path
    else:
      np.testing.assert_array_equal(value, original[path], err_msg=str(path))
      n_frozen += 1
  assert n_frozen == len(original)
  print(f"\nBone r=48, 3 Adam steps: loss {run['losses']}")
  assert run["losses"][-1] < run["losses"][0]


@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_trainable_counts_match_closed_form(base, adapted, method):
  params, _ = base
  config = METHOD_CONFIGS[method]
  tree, mask = adapted[method]
  trainable, frozen = peft.partition(tree, mask)
  L, D, F, r = CFG.n_layer, CFG.n_embd, CFG.dim_ffn, config.r
  # Targets per layer: 4 att projections [D, D], ffn.key [D, F], ffn.value [F, D].
  expected = {
      "bone": L * r * (5 * D + F),  # r·out per target
      "bat": L * r * (5 * D + F),  # (out/r)·r·r = r·out per target
      "lora": L * r * (4 * 2 * D + 2 * (D + F)),  # r·(in + out) per target
      "pissa": L * r * (4 * 2 * D + 2 * (D + F)),
  }[method]
  assert peft.count_params(trainable) == expected
  assert peft.count_params(trainable) + peft.count_params(frozen) == peft.count_params(tree)
  assert peft.count_params(frozen) == peft.count_params(params) + (6 * L if method in ("lora", "pissa") else 0)


def test_targets_inside_a_larger_tree_and_logical_axes(base, adapted):
  """The default targets find the RWKV-7 under params["rwkv"] (the ModRWKV layout) and nothing else;
  adapter leaves get logical axes from their kernel's."""
  params, _ = base
  nested = {"rwkv": params, "projectors": {"vision": {"fc1": {"kernel": jnp.zeros((64, 128)), "bias": jnp.zeros(128)}}}}
  paths = ["/".join(p) for p in peft.target_paths(nested, BONE)]
  assert len(paths) == 6 * CFG.n_layer and all(p.startswith("rwkv/blocks_") for p in paths), paths
  assert "rwkv/blocks_1/ffn/value" in paths and "rwkv/head" not in paths and "rwkv/blocks_0/att/w1" not in paths
  axes = peft.logical_axes(adapted["lora"][0], rwkv7.param_logical_axes(CFG))
  assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)) == \
      jax.tree.structure(adapted["lora"][0])
  P = jax.sharding.PartitionSpec
  assert axes["blocks_0"]["ffn"]["key"] == {"kernel": P("embed", "mlp"), "lora_a": P("embed", None),
                                             "lora_b": P(None, "mlp"), "lora_scale": P()}
  assert peft.logical_axes(adapted["bone"][0], rwkv7.param_logical_axes(CFG))["blocks_0"]["att"]["output"]["bone"] == \
      P(None, "embed")


def test_merged_model_logits_equal_adapter_model_logits(base, bone_run):
  _, tokens = base
  adapter_logits, adapter_state = forward(CFG, bone_run["trained"], tokens)
  merged = peft.merge_all(bone_run["trained"])
  assert jax.tree.structure(merged) == jax.tree.structure(base[0])  # a plain RWKV-7 tree again
  merged_logits, merged_state = forward(CFG, merged, tokens)
  check("Bone model vs merged model logits", merged_logits, adapter_logits, 1e-5)
  for a, b in zip(jax.tree.leaves(merged_state), jax.tree.leaves(adapter_state)):
    assert rel_max_err(a, b) < 1e-5


@pytest.mark.parametrize("method", ["bat", "lora", "pissa"])
def test_other_adapters_run_in_rwkv7_forward(base, adapted, method):
  """Random non-zero Bat / LoRA adapters, PiSSA as initialised: adapter forward == merged-model forward."""
  params, tokens = base
  tree, mask = adapted[method]
  if method != "pissa":  # PiSSA starts non-zero; give the others random values
    tree = perturbed(tree, mask, 0.05, seed=3)
  logits, _ = forward(CFG, tree, tokens)
  check(f"{method} model vs merged model logits", forward(CFG, peft.merge_all(tree), tokens)[0], logits, 1e-5)
  if method == "pissa":  # residual + s·a b = W: at init the model is the base model
    check("PiSSA model at init vs base model", logits, forward(CFG, params, tokens)[0], 1e-5)
  else:
    assert rel_max_err(logits, forward(CFG, params, tokens)[0]) > 1e-3  # the adapters do act


def test_export_merged_pth_loads_in_rwkv_package(base, bone_run, tmp_path):
  from rwkv.model import RWKV
  _, tokens = base
  path = tmp_path / "merged.pth"
  peft.save_merged_pth(CFG, bone_run["trained"], path)
  config, loaded = rwkv7.load_pth(path, CFG, wkv_impl=CFG.wkv_impl)
  assert config == CFG
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(peft.merge_all(bone_run["trained"]))):
    np.testing.assert_array_equal(a, b)
  reference = RWKV(model=str(path)[:-4], strategy="cpu fp32")
  ref_logits, _ = reference.forward([int(t) for t in tokens[0]], None, full_output=True)
  logits, _ = forward(CFG, bone_run["trained"], tokens)
  check("Bone model vs rwkv package on the merged .pth", logits[0], ref_logits.numpy(), 1e-4)


@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_adapter_checkpoint_round_trip(base, adapted, method, tmp_path):
  params, _ = base
  config = METHOD_CONFIGS[method]
  tree, mask = adapted[method]
  tree = perturbed(tree, mask, 1.0, seed=4)  # "trained": the file, not the initialisation, must set them
  path = tmp_path / f"{method}.safetensors"
  peft.save_adapters(config, tree, path)
  # Small: the adapter floats and a header, not the model.
  n_adapter = peft.count_params(peft.partition(tree, mask)[0])
  size = path.stat().st_size
  print(f"\n{method}: adapter file {size} bytes for {n_adapter} floats; the model has {peft.count_params(params)}")
  assert size < 4 * n_adapter + 8192
  loaded_config, loaded = peft.load_adapters(path, params)
  assert loaded_config == config
  assert jax.tree.structure(loaded) == jax.tree.structure(tree)
  for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(loaded)[0], jax.tree.leaves(tree)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(p))
  assert peft.trainable_mask(loaded) == mask


def test_errors_name_the_thing_at_fault(base, adapted, tmp_path):
  params, _ = base
  with pytest.raises(ValueError, match=r"blocks_0/att/key: Bat needs in % r == out % r == 0.*\(128, 128\).*r = 48"):
    peft.add_adapters(params, peft.PeftConfig(method="bat", r=48), jax.random.key(0))
  with pytest.raises(ValueError, match=r"blocks_0/att/key: Bone rank r=256 must be an int in \[1, in=128\]"):
    peft.add_adapters(params, peft.PeftConfig(r=256), jax.random.key(0))
  with pytest.raises(ValueError, match=r"match no module in params; modules with a kernel: \['blocks_0/att/key'"):
    peft.add_adapters(params, peft.PeftConfig(targets=("decoder/q_proj",)), jax.random.key(0))
  with pytest.raises(ValueError, match=r"blocks_0/att/key: already holds adapter leaves \['bone'\]"):
    peft.add_adapters(adapted["bone"][0], BONE, jax.random.key(0))
  with pytest.raises(ValueError, match=r"PeftConfig.method must be one of"):
    peft.PeftConfig(method="dora")
  with pytest.raises(ValueError, match=r"alpha and lora_init apply to method='lora' only"):
    peft.PeftConfig(method="bone", alpha=32.0)
  # Adapters trained on a 2-layer model do not load onto a 3-layer one.
  path = tmp_path / "bone.safetensors"
  peft.save_adapters(BONE, adapted["bone"][0], path)
  bigger = dict(params, blocks_2=params["blocks_1"])  # a 3-layer tree
  with pytest.raises(ValueError, match=r"adapters do not fit these params: missing \['blocks_2/att/key/bone'"):
    peft.load_adapters(path, bigger)
