"""Logical axes -> mesh: the model runs sharded on 8 simulated CPU devices (data 2 × fsdp 2 ×
tensor 2) and gives the single-device logits. Runs in a subprocess because the device count must
be set before jax is imported."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    import flax.linen as nn
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from modrwkv_jax.models import rwkv7

    assert len(jax.devices()) == 8, jax.devices()
    cfg = rwkv7.RWKV7Config(vocab_size=96, n_layer=2, n_embd=128, head_size=32, dim_w=8, dim_a=8,
                            dim_v=4, dim_g=8, dim_ffn=256)
    params = rwkv7.init_params(cfg, jax.random.key(0))
    leaves, tdef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tdef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 96, size=(4, 24)), jnp.int32)
    fwd = jax.jit(rwkv7.forward, static_argnums=0)
    want, want_state = fwd(cfg, params, tokens)

    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    rules = (("batch", ("data", "fsdp")), ("length", None), ("vocab", "tensor"), ("embed", "fsdp"),
             ("attn", "tensor"), ("mlp", "tensor"), ("heads", "tensor"), ("head_dim", None), ("lora", None))
    shardings = nn.logical_to_mesh_sharding(rwkv7.param_logical_axes(cfg), mesh, rules)
    sharded = jax.device_put(params, shardings)
    kernel = sharded["blocks_0"]["att"]["receptance"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor"), kernel.sharding.spec
    assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (64, 64)
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      got, state = fwd(cfg, sharded, jax.device_put(tokens, batch))
    err = float(jnp.abs(got - want).max() / jnp.sqrt(jnp.mean(want ** 2)))
    serr = float(jnp.abs(state.wkv - want_state.wkv).max() / jnp.sqrt(jnp.mean(want_state.wkv ** 2)))
    print("sharded vs single-device:", err, serr)
    assert err < 1e-5 and serr < 1e-5, (err, serr)

    # The Pallas kernel (interpret mode here) runs per (batch, head) shard under shard_map.
    pcfg = cfg.replace(wkv_impl="pallas")
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      lowered = jax.jit(rwkv7.forward, static_argnums=0).trace(pcfg, sharded, jax.device_put(tokens, batch)).lower()
      got, state = fwd(pcfg, sharded, jax.device_put(tokens, batch))
    assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text()
    err = float(jnp.abs(got - want).max() / jnp.sqrt(jnp.mean(want ** 2)))
    print("pallas sharded vs single-device:", err)
    assert err < 1e-5, err
    print("OK")
""")


def test_forward_sharded_on_8_devices_matches_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
