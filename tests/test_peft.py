"""Bone, Bat, LoRA and PiSSA vs Hugging Face `peft` in float64; the adapter surface on both layer
layouts (unrolled blocks_<i>, scanned "blocks" with a leading layer axis); a tiny RWKV-7 with adapters.

References: peft `MissConfig()` (Bone), `MissConfig(init_weights="bat")` (Bat), `LoraConfig` (LoRA,
and `init_lora_weights="pissa"`), each wrapping a bias-free torch.nn.Linear run in float64 with the
same float32 numbers we start from; a float64 NumPy SVD for PiSSA; the `rwkv` package for the
exported merged .pth; for the scanned layout, the unrolled one (its adapters stacked by hand).
Tolerances (tests/README.md): relative RMS error vs float64 within c·ε·√K for results built from
K-term float32 sums (fp32_sum_tol); PiSSA within the fp32 SVD's subspace error c·ε·σ₁/(σ_r − σ_{r+1});
two fp32 evaluations of one model (adapter vs merged, unrolled vs scanned, ours vs `rwkv`) < 1e-5.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from jax.sharding import PartitionSpec as P

from helpers import EPS32, check, fp32_sum_tol, rel_rms_err
from modrwkv_jax import peft, sharding
from modrwkv_jax.models import rwkv7

# ---------------------------------------------------------------------------------------------
# One layer vs peft, in float64.


class TorchLinear(torch.nn.Module):
  def __init__(self, n_in, n_out):
    super().__init__()
    self.lin = torch.nn.Linear(n_in, n_out, bias=False)

  def forward(self, x):
    return self.lin(x)


def peft_layer(n_in, n_out, peft_config, seed, float64=True):
  """(peft model, its adapted layer, our kernel = Wᵀ float32[in, out]).

  The Linear is drawn in float32 (torch's init) and converted to float64 before peft wraps it, so
  peft builds, merges and runs its adapter in float64 on exactly the numbers we get in float32.
  """
  from peft import get_peft_model
  torch.manual_seed(seed)
  base = TorchLinear(n_in, n_out)
  kernel = base.lin.weight.detach().numpy().T.copy()
  model = get_peft_model(base.double() if float64 else base, peft_config)
  return model, model.base_model.model.lin, kernel


def set_values(param, shape, scale, seed):
  """Random float32 values for a peft parameter (stored in float64); returns them as float32."""
  values = (scale * np.random.RandomState(seed).randn(*shape)).astype(np.float32)
  param.data = torch.from_numpy(values.astype(np.float64))
  return values


def run64(model, x):
  with torch.no_grad():
    return model(torch.from_numpy(x.astype(np.float64))).numpy()


def weight64(lin):
  """The kernel (Wᵀ) peft's layer holds now, as float64."""
  return lin.base_layer.weight.detach().numpy().T.astype(np.float64)


def layer_input(n_in, seed):
  return np.random.RandomState(seed).randn(3, 5, n_in).astype(np.float32)


# (in, out, r): divisible; in % r != 0 (the padded last shard); peft's default r = 64 with in % r != 0.
BONE_SHAPES = [(96, 80, 32), (100, 72, 32), (200, 48, 64)]


@pytest.mark.parametrize("n_in,n_out,r", BONE_SHAPES)
def test_bone_matches_peft_miss(n_in, n_out, r):
  from peft import MissConfig
  model, lin, kernel = peft_layer(n_in, n_out, MissConfig(r=r, target_modules=["lin"]), seed=n_in)
  assert tuple(lin.miss_block["default"].shape) == (r, n_out)  # our block layout: D float[r, out]
  # 0.05: the scale of W's entries, U(±1/√in).
  block = set_values(lin.miss_block["default"], (r, n_out), 0.05, seed=n_in + 1)
  x = layer_input(n_in, 0)
  what = f"Bone {n_in}x{n_out} r={r}"
  # y = x K + (Σ shards) D: sums of in and ⌈in/r⌉ + r terms.
  check(f"{what} forward", peft.bone_apply(x, kernel, block), run64(model, x), fp32_sum_tol(n_in))
  # The forward never builds the merged [in, out] kernel: no intermediate of that shape.
  eqns = jax.make_jaxpr(peft.bone_apply)(x, kernel, block).eqns
  assert not [e.primitive for e in eqns for v in e.outvars if v.aval.shape == (n_in, n_out)]

  merged = peft.bone_merge(kernel, block)  # one float32 addition per entry
  model.merge_adapter()
  check(f"{what} merged weight", merged, weight64(lin), fp32_sum_tol(2))
  check(f"{what} merge -> unmerge", peft.bone_unmerge(merged, block), kernel, fp32_sum_tol(2))
  model.unmerge_adapter()
  check(f"{what} unmerge vs peft unmerge", peft.bone_unmerge(merged, block), weight64(lin), fp32_sum_tol(2))


def test_bat_matches_peft():
  from peft import MissConfig
  n_in, n_out, r = 96, 64, 32
  model, lin, kernel = peft_layer(n_in, n_out, MissConfig(r=r, init_weights="bat", target_modules=["lin"]), seed=1)
  assert tuple(lin.miss_block["default"].shape) == (n_out // r, r, r)
  # 0.05·N(0, 1) keeps cond(I + D_i) ≈ 2; at 0.2 it is ≈ 300 and every unmerge loses 2.5 more digits.
  block = set_values(lin.miss_block["default"], (n_out // r, r, r), 0.05, seed=2)
  x = layer_input(n_in, 1)
  # K' = (I + D)ᵀ K + Dᵀ: r-term sums; then x K': in-term sums.
  check("Bat forward", peft.bat_apply(x, kernel, block), run64(model, x), fp32_sum_tol(n_in + r))
  merged = peft.bat_merge(kernel, block)
  model.merge_adapter()
  check("Bat merged weight", merged, weight64(lin), fp32_sum_tol(r))
  model.unmerge_adapter()  # peft's own (W' − D)(I + D)⁻¹, in float64
  # Through (I + D_i)⁻¹ in float32: r-term sums, amplified by cond(I + D_i) ≈ 2.
  cond = max(np.linalg.cond(np.eye(r) + d) for d in block.astype(np.float64))
  check("Bat merge -> unmerge", peft.bat_unmerge(merged, block), kernel, cond * fp32_sum_tol(r))
  check("Bat unmerge vs peft unmerge", peft.bat_unmerge(merged, block), weight64(lin), cond * fp32_sum_tol(r))


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
  bound = 1 / np.sqrt(n_in)
  a0, b0 = peft.lora.lora_init(jax.random.key(0), jnp.zeros((n_in, n_out)), r)
  assert a0.shape == (n_in, r) and b0.shape == (r, n_out) and not np.any(b0) and not lin.lora_B["default"].weight.any()
  for a in (np.asarray(a0), lin.lora_A["default"].weight.detach().numpy()):
    assert bound * 0.9 < np.abs(a).max() <= bound
  a = set_values(lin.lora_A["default"].weight, (r, n_in), 0.1, seed=3).T.copy()
  b = set_values(lin.lora_B["default"].weight, (n_out, r), 0.1, seed=4).T.copy()
  scale = alpha / r
  x = layer_input(n_in, 2)
  check("LoRA forward", peft.lora_apply(x, kernel, a, b, scale), run64(model, x), fp32_sum_tol(n_in + r))
  merged = peft.lora_merge(kernel, a, b, scale)
  model.merge_adapter()
  check("LoRA merged weight", merged, weight64(lin), fp32_sum_tol(r))
  check("LoRA merge -> unmerge", peft.lora_unmerge(merged, a, b, scale), kernel, fp32_sum_tol(r))


def test_pissa_matches_peft():
  from peft import LoraConfig
  n_in, n_out, r, alpha = 96, 80, 8, 16
  # peft refuses PiSSA in float64 ("initialize PiSSA under float32"): the truth is a float64 NumPy SVD,
  # and peft's float32 factorisation is held to the same bound as ours.
  model, lin, kernel = peft_layer(n_in, n_out, LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="pissa",
                                                          target_modules=["lin"]), seed=3, float64=False)
  residual, a, b = peft.pissa_init(kernel, r, alpha / r)
  u, sv, vt = np.linalg.svd(kernel.astype(np.float64), full_matrices=False)
  truth = kernel - (u[:, :r] * sv[:r]) @ vt[:r]
  # Singular vectors have a sign per component; a·b and the residual do not. An fp32 SVD fixes the
  # top-r subspace only to ~ε·σ₁/(σ_r − σ_{r+1}) (σ_8/σ_9 ≈ 1.02 here), peft's as well as ours.
  subspace_tol = 8 * EPS32 * sv[0] / (sv[r - 1] - sv[r])
  check("peft's float32 PiSSA residual vs float64 SVD", weight64(lin), truth, subspace_tol)
  check("PiSSA residual vs float64 SVD", residual, truth, subspace_tol)
  peft_a = lin.lora_A["default"].weight.detach().numpy().T.astype(np.float64)
  peft_b = lin.lora_B["default"].weight.detach().numpy().T.astype(np.float64)
  check("PiSSA a @ b vs float64 SVD", np.asarray(a, np.float64) @ np.asarray(b, np.float64),
        (u[:, :r] * sv[:r]) @ vt[:r] / (alpha / r), subspace_tol)
  check("PiSSA a @ b vs peft", np.asarray(a, np.float64) @ np.asarray(b, np.float64), peft_a @ peft_b,
        2 * subspace_tol)
  check("PiSSA residual + s·a b = W", peft.lora_merge(residual, a, b, alpha / r), kernel, fp32_sum_tol(r))


# ---------------------------------------------------------------------------------------------
# Both layouts on a synthetic tree shaped like RWKV-7's: blocks_0 ... blocks_{L-1}, or one "blocks"
# subtree whose every leaf has a leading layer axis (what nn.scan / lax.scan slice layer by layer).

SL, SD, SF, SV = 3, 40, 72, 11  # layers, width, ffn width, vocab
SYN_CONFIGS = {
    "bone": peft.PeftConfig(method="bone", r=16),  # 40 % 16 = 8, 72 % 16 = 8: the padded last shard
    "bat": peft.PeftConfig(method="bat", r=8),
    "lora": peft.PeftConfig(method="lora", r=4, alpha=8.0),
    "pissa": peft.PeftConfig(method="lora", r=4, alpha=8.0, lora_init="pissa"),
}
LEAF_SHAPES = {  # one layer's adapter leaves for a kernel [in, out]
    "bone": lambda i, o, r: {"bone": (r, o)},
    "bat": lambda i, o, r: {"bat": (o // r, r, r)},
    "lora": lambda i, o, r: {"lora_a": (i, r), "lora_b": (r, o), "lora_scale": ()},
    "pissa": lambda i, o, r: {"lora_a": (i, r), "lora_b": (r, o), "lora_scale": ()},
}


def synthetic_block(rng):
  w = lambda *shape: jnp.asarray(rng.randn(*shape) / np.sqrt(shape[0]), jnp.float32)
  return {"ln1": {"scale": w(SD)},
          "att": {name: {"kernel": w(SD, SD)} for name in ("receptance", "key", "value", "output")}
          | {"x_r": w(SD), "w1": w(SD, 4)},
          "ffn": {"key": {"kernel": w(SD, SF)}, "value": {"kernel": w(SF, SD)}, "x_k": w(SD)}}


BLOCK_AXES = {"ln1": {"scale": ("embed",)},
              "att": {"receptance": {"kernel": ("embed", "attn")}, "key": {"kernel": ("embed", "attn")},
                      "value": {"kernel": ("embed", "attn")}, "output": {"kernel": ("attn", "embed")},
                      "x_r": ("embed",), "w1": ("embed", "lora_rank")},
              "ffn": {"key": {"kernel": ("embed", "mlp")}, "value": {"kernel": ("mlp", "embed")}, "x_k": ("embed",)}}


def stack_blocks(tree):
  """The scanned layout of an unrolled tree: blocks_<i> stacked leaf by leaf under "blocks"."""
  out = {k: v for k, v in tree.items() if not k.startswith("blocks_")}
  out["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[tree[f"blocks_{i}"] for i in range(SL)])
  return out


def synthetic_axes(layout):
  top = {"emb": {"embedding": P("vocab", "embed")}, "head": {"kernel": P("embed", "vocab")}}
  is_axes = lambda x: isinstance(x, tuple)
  if layout == "unrolled":
    return top | {f"blocks_{i}": jax.tree.map(lambda a: P(*a), BLOCK_AXES, is_leaf=is_axes) for i in range(SL)}
  return top | {"blocks": jax.tree.map(lambda a: P("layers", *a), BLOCK_AXES, is_leaf=is_axes)}


@pytest.fixture(scope="module")
def synthetic():
  """{"unrolled": tree, "scanned": the same tree stacked}, and per method both adapted trees with random
  non-zero adapters (drawn on the unrolled tree, stacked by hand for the scanned one)."""
  rng = np.random.RandomState(0)
  unrolled = {"emb": {"embedding": jnp.asarray(rng.randn(SV, SD), jnp.float32)},
              **{f"blocks_{i}": synthetic_block(rng) for i in range(SL)},
              "head": {"kernel": jnp.asarray(rng.randn(SD, SV), jnp.float32)}}
  trained = {}
  for method, config in SYN_CONFIGS.items():
    tree, mask = peft.add_adapters(unrolled, config, jax.random.key(1))
    if method != "pissa":
      tree = perturbed(tree, mask, 0.05, seed=5)
    trained[method] = {"unrolled": tree, "scanned": stack_blocks(tree)}
  return {"unrolled": unrolled, "scanned": stack_blocks(unrolled)}, trained


def perturbed(tree, mask, scale, seed):
  """The tree with N(0, scale²) NumPy noise added to its trainable leaves (random non-zero adapters)."""
  rng = np.random.RandomState(seed)
  trainable, frozen = peft.partition(tree, mask)
  noisy = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape), jnp.float32),
                       trainable)
  return peft.combine(noisy, frozen)


def test_default_targets_find_both_layouts(synthetic):
  bases, _ = synthetic
  names = ("att/key", "att/output", "att/receptance", "att/value", "ffn/key", "ffn/value")
  paths = lambda tree: ["/".join(p) for p in peft.target_paths(tree, SYN_CONFIGS["bone"])]
  assert paths(bases["unrolled"]) == [f"blocks_{i}/{n}" for i in range(SL) for n in names]
  assert paths(bases["scanned"]) == [f"blocks/{n}" for n in names]


@pytest.mark.parametrize("method", list(SYN_CONFIGS))
def test_stacked_kernels_get_stacked_adapters(synthetic, method):
  """add_adapters on [L, in, out] kernels = the unrolled adapters stacked: same shapes with a leading
  L, and the same values (each layer's LoRA draws from a key derived from its unrolled path)."""
  bases, _ = synthetic
  config = SYN_CONFIGS[method]
  unrolled, _ = peft.add_adapters(bases["unrolled"], config, jax.random.key(7))
  scanned, mask = peft.add_adapters(bases["scanned"], config, jax.random.key(7))
  node = scanned["blocks"]["ffn"]["value"]
  want = {n: (SL,) + s for n, s in LEAF_SHAPES[method](SF, SD, config.r).items()} | {"kernel": (SL, SF, SD)}
  assert {n: x.shape for n, x in node.items()} == want
  assert mask["blocks"]["ffn"]["value"] == {n: n not in ("kernel", "lora_scale") for n in want}
  expected = stack_blocks(unrolled)
  assert jax.tree.structure(scanned) == jax.tree.structure(expected)
  for (path, got), ref in zip(jax.tree_util.tree_flatten_with_path(scanned)[0], jax.tree.leaves(expected)):
    if method == "pissa" and path[-1].key in ("kernel", "lora_a", "lora_b"):  # a batched SVD: fp32 rounding
      assert rel_rms_err(got, ref) < 1e-5, (jax.tree_util.keystr(path), rel_rms_err(got, ref))
    else:
      np.testing.assert_array_equal(got, ref, err_msg=jax.tree_util.keystr(path))
  if method == "lora":  # a key per layer: the layers do not share their initial a
    a = np.asarray(node["lora_a"])
    assert not np.array_equal(a[0], a[1]) and np.abs(a).max() <= 1 / np.sqrt(SF)


@pytest.mark.parametrize("method", list(SYN_CONFIGS))
def test_scan_over_stacked_adapters_equals_the_layer_loop(synthetic, method):
  """lax.scan slices every leaf under "blocks": each layer sees its own kernel and adapter, and
  `peft.linear` on that slice is the unrolled layer. merge_all merges layer by layer (vmap)."""
  bases, trained = synthetic
  unrolled, scanned = trained[method]["unrolled"], trained[method]["scanned"]

  def layer(x, block):
    adapter = lambda node: {n: v for n, v in node.items() if n != "kernel"}
    h = peft.linear(x, block["att"]["key"]["kernel"], adapter(block["att"]["key"]))
    h = jax.nn.relu(peft.linear(h, block["ffn"]["key"]["kernel"], adapter(block["ffn"]["key"])))
    return x + peft.linear(h, block["ffn"]["value"]["kernel"], adapter(block["ffn"]["value"]))

  x = jnp.asarray(np.random.RandomState(1).randn(4, SD), jnp.float32)
  want = x
  for i in range(SL):
    want = layer(want, unrolled[f"blocks_{i}"])
  got, _ = jax.lax.scan(lambda x, block: (layer(x, block), None), x, scanned["blocks"])
  check(f"{method}: scan over stacked adapters vs loop over layers", got, want, fp32_sum_tol(SF))

  merged = peft.merge_all(scanned)
  assert jax.tree.structure(merged) == jax.tree.structure(bases["scanned"])
  for group, name in (("att", "key"), ("ffn", "key"), ("ffn", "value")):
    want = np.stack([peft.merged_kernel(unrolled[f"blocks_{i}"][group][name]) for i in range(SL)])
    check(f"{method}: merge_all {group}/{name}, stacked vs unrolled", merged["blocks"][group][name]["kernel"], want,
          fp32_sum_tol(SYN_CONFIGS[method].r))


@pytest.mark.parametrize("method", list(SYN_CONFIGS))
@pytest.mark.parametrize("layout", ["unrolled", "scanned"])
def test_logical_axes_name_adapters_from_the_vocabulary(synthetic, method, layout):
  _, trained = synthetic
  tree = trained[method][layout]
  axes = peft.logical_axes(tree, synthetic_axes(layout))
  is_spec = lambda x: isinstance(x, P)
  assert jax.tree.structure(axes, is_leaf=is_spec) == jax.tree.structure(tree)
  lead = ("layers",) if layout == "scanned" else ()
  node = axes["blocks" if layout == "scanned" else "blocks_1"]["ffn"]["key"]  # kernel (embed, mlp)
  want = {"bone": {"bone": P(*lead, "adapter_rank", "mlp")},
          "bat": {"bat": P(*lead, "adapter_blocks", "adapter_rank_in", "adapter_rank")},
          "lora": {"lora_a": P(*lead, "embed", "adapter_rank"), "lora_b": P(*lead, "adapter_rank", "mlp"),
                   "lora_scale": P(*lead)}}[method if method != "pissa" else "lora"]
  assert node == {"kernel": P(*lead, "embed", "mlp")} | want
  # Every spec has one name per dimension, and the sharding rules accept them all (no unknown name,
  # no name twice in one array).
  for (path, spec), x in zip(jax.tree_util.tree_flatten_with_path(axes, is_leaf=is_spec)[0], jax.tree.leaves(tree)):
    assert len(spec) == x.ndim, (jax.tree_util.keystr(path), spec, x.shape)
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  shardings = sharding.logical_to_mesh(axes, mesh)
  assert jax.tree.structure(shardings) == jax.tree.structure(tree)


@pytest.mark.parametrize("method", list(SYN_CONFIGS))
def test_adapter_files_load_into_either_layout(synthetic, method, tmp_path):
  """One file format, per-layer names ("blocks_2/ffn/value/bone"): saved from either layout, loaded
  into either layout, the adapters come back bit for bit (stacked where the target is stacked)."""
  from safetensors import safe_open
  bases, trained = synthetic
  config = SYN_CONFIGS[method]
  names = {}
  for source in ("unrolled", "scanned"):
    path = tmp_path / f"{source}.safetensors"
    peft.save_adapters(config, trained[method][source], path)
    with safe_open(str(path), framework="numpy") as f:
      names[source] = {n: f.get_tensor(n) for n in f.keys()}
      assert peft.PeftConfig.from_dict(json.loads(f.metadata()["peft_config"])) == config
    for target in ("unrolled", "scanned"):
      loaded_config, loaded = peft.load_adapters(path, bases[target])
      assert loaded_config == config
      want = trained[method][target]
      assert jax.tree.structure(loaded) == jax.tree.structure(want)
      for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(loaded)[0], jax.tree.leaves(want)):
        if method == "pissa" and p[-1].key == "kernel":  # the residual is recomputed by a (batched) fp32 SVD
          assert rel_rms_err(a, b) < 1e-5, (source, target, jax.tree_util.keystr(p), rel_rms_err(a, b))
        else:
          np.testing.assert_array_equal(a, b, err_msg=f"{source} -> {target} {jax.tree_util.keystr(p)}")
  assert names["unrolled"].keys() == names["scanned"].keys()
  assert "blocks_2/ffn/value/" + {"bone": "bone", "bat": "bat"}.get(method, "lora_b") in names["unrolled"]
  for n in names["unrolled"]:
    np.testing.assert_array_equal(names["unrolled"][n], names["scanned"][n])


def test_partition_and_combine_on_the_stacked_layout(synthetic):
  _, trained = synthetic
  tree = trained["lora"]["scanned"]
  mask = peft.trainable_mask(tree)
  trainable, frozen = peft.partition(tree, mask)
  assert list(trainable) == ["blocks"]  # emb, head, every kernel and lora_scale stay frozen
  assert {n: x.shape for n, x in trainable["blocks"]["att"]["output"].items()} == \
      {"lora_a": (SL, SD, 4), "lora_b": (SL, 4, SD)}
  assert frozen["blocks"]["att"]["output"]["lora_scale"].shape == (SL,)
  assert jax.tree.structure(peft.combine(trainable, frozen)) == jax.tree.structure(tree)
  for a, b in zip(jax.tree.leaves(peft.combine(trainable, frozen)), jax.tree.leaves(tree)):
    assert a is b
  # adapter_leaves names the stacked leaves per layer, exactly as for the unrolled tree.
  assert peft.adapter_leaves(trainable).keys() == peft.adapter_leaves(trained["lora"]["unrolled"]).keys()
  unrolled = trained["lora"]["unrolled"]
  assert peft.count_params(trainable) == peft.count_params(peft.partition(unrolled, peft.trainable_mask(unrolled))[0])


def test_stacked_layout_errors(synthetic, tmp_path):
  bases, trained = synthetic
  with pytest.raises(ValueError, match=r"blocks/att/key: Bat needs in % r == out % r == 0.*\(40, 40\).*r = 16"):
    peft.add_adapters(bases["scanned"], peft.PeftConfig(method="bat", r=16), jax.random.key(0))
  odd = {"layers": {"key": {"kernel": jnp.zeros((2, 8, 8))}}}  # a stack outside "blocks": no per-layer names
  with pytest.raises(ValueError, match=r"layers/key: a stacked \(3-D\) kernel outside a 'blocks' subtree"):
    peft.add_adapters(odd, peft.PeftConfig(r=4, targets=("key",)), jax.random.key(0))
  with pytest.raises(ValueError, match=r"x/kernel: shape \(2, 2, 8, 8\); expected 2 dimensions for one layer"):
    peft.add_adapters({"x": {"kernel": jnp.zeros((2, 2, 8, 8))}}, peft.PeftConfig(r=4, targets=("x",)),
                      jax.random.key(0))
  # A file from 3 stacked layers does not load onto a 2-layer stack.
  path = tmp_path / "bone.safetensors"
  peft.save_adapters(SYN_CONFIGS["bone"], trained["bone"]["scanned"], path)
  two = dict(bases["scanned"], blocks=jax.tree.map(lambda x: x[:2], bases["scanned"]["blocks"]))
  with pytest.raises(ValueError, match=r"adapters do not fit these params: missing \[\], unexpected "
                                       r"\['blocks_2/att/key/bone'"):
    peft.load_adapters(path, two)


# ---------------------------------------------------------------------------------------------
# A tiny RWKV-7 with adapters, in both layouts.

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
# Two fp32 evaluations of one model (fused differently, or ours vs torch): each sits ~ε·√K from the
# exact logits (K ≤ 256-term sums, 2 layers); 1e-5 leaves a factor ~5 over c·ε·√K.
MODEL_TOL = 1e-5

forward = jax.jit(rwkv7.forward, static_argnums=0)


def layout_config(layout):
  return CFG.replace(scan_layers=layout == "scanned")


@pytest.fixture(scope="module")
def unrolled_base():
  """helpers.noisy_params's recipe (init + N(0, 0.5·std + 0.05) noise), the noise drawn by NumPy: no compiles."""
  rng = np.random.RandomState(0)
  noisy = lambda x: x + (0.5 * x.std() + 0.05) * rng.standard_normal(x.shape)
  params = jax.tree.map(lambda x: jnp.asarray(noisy(np.asarray(x)), jnp.float32),
                        rwkv7.init_params(CFG, jax.random.key(0)))
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, CFG.vocab_size, size=(B, T)), jnp.int32)
  return params, tokens


@pytest.fixture(scope="module", params=["unrolled", "scanned"])
def model(request, unrolled_base):
  """(config, params, tokens) in one layout; the scanned params are the unrolled ones stacked."""
  cfg = layout_config(request.param)
  params, tokens = unrolled_base
  return cfg, rwkv7.stack_layers(params) if cfg.scan_layers else params, tokens


@pytest.fixture(scope="module")
def adapted(model):
  """{method: (params with that adapter freshly added, trainable mask)}."""
  _, params, _ = model
  return {m: peft.add_adapters(params, c, jax.random.key(2)) for m, c in METHOD_CONFIGS.items()}


@pytest.fixture(scope="module")
def bone_run(model, adapted):
  """Three Adam steps on the Bone blocks only. The optimizer and jax.grad see the trainable subtree."""
  cfg, _, tokens = model
  trainable, frozen = peft.partition(*adapted["bone"])
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(trainable)

  def loss_fn(trainable, frozen, tokens):
    logits, _ = rwkv7.forward(cfg, peft.combine(trainable, frozen), tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

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


def test_bone_at_init_is_the_base_model(model, adapted):
  cfg, params, tokens = model
  # x K + shards · 0 is x K exactly, but XLA fuses the two graphs differently: equal to fp32 rounding.
  check(f"Bone model at init vs base model ({'scanned' if cfg.scan_layers else 'unrolled'})",
        forward(cfg, adapted["bone"][0], tokens)[0], forward(cfg, params, tokens)[0], MODEL_TOL)


def test_bone_steps_train_only_the_blocks(model, bone_run):
  cfg, params, _ = model
  run = bone_run
  blocks = peft.adapter_leaves(run["trainable"])
  assert len(blocks) == 6 * CFG.n_layer and all(name.endswith("/bone") for name in blocks)
  assert list(blocks) == [f"blocks_{i}/{n}/bone" for i in range(CFG.n_layer)
                          for n in ("att/key", "att/output", "att/receptance", "att/value", "ffn/key", "ffn/value")]
  # The optimizer saw only the blocks: Adam's mu and nu have exactly their shapes, nothing else.
  state_shapes = sorted(x.shape for x in jax.tree.leaves(run["opt_state"]) if x.ndim)
  assert state_shapes == sorted(2 * [x.shape for x in jax.tree.leaves(run["trainable"])])
  assert jax.tree.structure(run["grads"]) == jax.tree.structure(run["start"])
  # Frozen weights bit-identical; every block (every layer's slice) moved from zero; the loss went down.
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
  assert all(np.any(x) for x in blocks.values())
  print(f"\nBone r=48, 3 Adam steps ({'scanned' if cfg.scan_layers else 'unrolled'}): loss {run['losses']}")
  assert run["losses"][-1] < run["losses"][0]


@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_trainable_counts_match_closed_form(model, adapted, method):
  _, params, _ = model
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


def test_targets_inside_a_larger_tree_and_logical_axes(model, adapted):
  """The default targets find the RWKV-7 under params["rwkv"] (the ModRWKV layout) and nothing else;
  adapter leaves get logical axes from their kernel's, and the rules of modrwkv_jax.sharding take them."""
  cfg, params, _ = model
  nested = {"rwkv": params, "projectors": {"vision": {"fc1": {"kernel": jnp.zeros((64, 128)), "bias": jnp.zeros(128)}}}}
  paths = ["/".join(p) for p in peft.target_paths(nested, BONE)]
  if cfg.scan_layers:
    assert paths == [f"rwkv/blocks/{n}" for n in ("att/key", "att/output", "att/receptance", "att/value",
                                                 "ffn/key", "ffn/value")]
  else:
    assert len(paths) == 6 * CFG.n_layer and all(p.startswith("rwkv/blocks_") for p in paths), paths
    assert "rwkv/blocks_1/ffn/value" in paths and "rwkv/blocks_0/att/w1" not in paths
  base_axes = rwkv7.param_logical_axes(cfg)
  lead = ("layers",) if cfg.scan_layers else ()
  ffn_key = lambda tree: tree["blocks" if cfg.scan_layers else "blocks_0"]["ffn"]["key"]
  axes = peft.logical_axes(adapted["lora"][0], base_axes)
  assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, P)) == jax.tree.structure(adapted["lora"][0])
  assert ffn_key(axes) == {"kernel": P(*lead, "embed", "mlp"), "lora_a": P(*lead, "embed", "adapter_rank"),
                           "lora_b": P(*lead, "adapter_rank", "mlp"), "lora_scale": P(*lead)}
  out = peft.logical_axes(adapted["bone"][0], base_axes)["blocks" if cfg.scan_layers else "blocks_0"]["att"]["output"]
  assert out["bone"] == P(*lead, "adapter_rank", "embed")
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  for method in METHOD_CONFIGS:
    sharding.logical_to_mesh(peft.logical_axes(adapted[method][0], base_axes), mesh)  # raises on a bad name


def test_merged_model_logits_equal_adapter_model_logits(model, bone_run):
  cfg, params, tokens = model
  adapter_logits, adapter_state = forward(cfg, bone_run["trained"], tokens)
  merged = peft.merge_all(bone_run["trained"])
  assert jax.tree.structure(merged) == jax.tree.structure(params)  # a plain RWKV-7 tree again
  merged_logits, merged_state = forward(cfg, merged, tokens)
  check("Bone model vs merged model logits", merged_logits, adapter_logits, MODEL_TOL)
  for a, b in zip(jax.tree.leaves(merged_state), jax.tree.leaves(adapter_state)):
    check("Bone model vs merged model state", a, b, MODEL_TOL)


@pytest.mark.parametrize("method", ["bat", "lora", "pissa"])
def test_other_adapters_run_in_rwkv7_forward(model, adapted, method):
  """Random non-zero Bat / LoRA adapters, PiSSA as initialised: adapter forward == merged-model forward."""
  cfg, params, tokens = model
  tree, mask = adapted[method]
  if method != "pissa":  # PiSSA starts non-zero; give the others random values
    tree = perturbed(tree, mask, 0.05, seed=3)
  logits, _ = forward(cfg, tree, tokens)
  check(f"{method} model vs merged model logits", forward(cfg, peft.merge_all(tree), tokens)[0], logits, MODEL_TOL)
  if method == "pissa":  # residual + s·a b = W: at init the model is the base model
    check("PiSSA model at init vs base model", logits, forward(cfg, params, tokens)[0], MODEL_TOL)
  else:
    assert rel_rms_err(logits, forward(cfg, params, tokens)[0]) > 1e-3  # the adapters do act


@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_scanned_adapter_model_is_the_unrolled_one(unrolled_base, method):
  """The same adapters (drawn on the unrolled model, stacked by rwkv7.stack_layers) give the same
  logits in the scanned model; add_adapters on the stacked base draws those same adapters."""
  cfg = layout_config("scanned")
  params, tokens = unrolled_base
  fresh, mask = peft.add_adapters(params, METHOD_CONFIGS[method], jax.random.key(2))
  tree = fresh if method == "pissa" else perturbed(fresh, mask, 0.05, seed=3)
  check(f"{method}: scanned vs unrolled adapter model logits", forward(cfg, rwkv7.stack_layers(tree), tokens)[0],
        forward(CFG, tree, tokens)[0], MODEL_TOL)
  got, _ = peft.add_adapters(rwkv7.stack_layers(params), METHOD_CONFIGS[method], jax.random.key(2))
  want = rwkv7.stack_layers(fresh)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    if method == "pissa" and p[-1].key in ("kernel", "lora_a", "lora_b"):  # a batched fp32 SVD
      assert rel_rms_err(a, b) < 1e-5, (jax.tree_util.keystr(p), rel_rms_err(a, b))
    else:
      np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(p))


def test_export_merged_pth_loads_in_rwkv_package(model, bone_run, tmp_path):
  from rwkv.model import RWKV
  cfg, _, tokens = model
  path = tmp_path / "merged.pth"
  merged = peft.merge_all(bone_run["trained"])
  rwkv7.save_pth(cfg, merged, path)
  config, loaded = rwkv7.load_pth(path, CFG, wkv_impl=CFG.wkv_impl)  # read back unrolled
  assert config == CFG
  want = rwkv7.unstack_layers(merged) if cfg.scan_layers else merged
  assert jax.tree.structure(loaded) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  reference = RWKV(model=str(path)[:-4], strategy="cpu fp32")
  ref_logits, _ = reference.forward([int(t) for t in tokens[0]], None, full_output=True)
  logits, _ = forward(cfg, bone_run["trained"], tokens)
  check("Bone model vs rwkv package on the merged .pth", logits[0], ref_logits.numpy(), MODEL_TOL)


@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_adapter_checkpoint_round_trip(model, adapted, method, tmp_path):
  _, params, _ = model
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


def test_errors_name_the_thing_at_fault(unrolled_base, tmp_path):
  params, _ = unrolled_base
  with pytest.raises(ValueError, match=r"blocks_0/att/key: Bat needs in % r == out % r == 0.*\(128, 128\).*r = 48"):
    peft.add_adapters(params, peft.PeftConfig(method="bat", r=48), jax.random.key(0))
  with pytest.raises(ValueError, match=r"blocks_0/att/key: Bone rank r=256 must be an int in \[1, in=128\]"):
    peft.add_adapters(params, peft.PeftConfig(r=256), jax.random.key(0))
  with pytest.raises(ValueError, match=r"match no module in params; modules with a kernel: \['blocks_0/att/key'"):
    peft.add_adapters(params, peft.PeftConfig(targets=("decoder/q_proj",)), jax.random.key(0))
  adapted, _ = peft.add_adapters(params, BONE, jax.random.key(0))
  with pytest.raises(ValueError, match=r"blocks_0/att/key: already holds adapter leaves \['bone'\]"):
    peft.add_adapters(adapted, BONE, jax.random.key(0))
  with pytest.raises(ValueError, match=r"PeftConfig.method must be one of"):
    peft.PeftConfig(method="dora")
  with pytest.raises(ValueError, match=r"alpha and lora_init apply to method='lora' only"):
    peft.PeftConfig(method="bone", alpha=32.0)
  # Adapters trained on a 2-layer model do not load onto a 3-layer one.
  path = tmp_path / "bone.safetensors"
  peft.save_adapters(BONE, adapted, path)
  bigger = dict(params, blocks_2=params["blocks_1"])  # a 3-layer tree
  with pytest.raises(ValueError, match=r"adapters do not fit these params: missing \['blocks_2/att/key/bone'"):
    peft.load_adapters(path, bigger)
