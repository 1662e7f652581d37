"""Sharding by logical names (modrwkv_jax.sharding): the production RULES place every leaf of a tri-modal
ModRWKV with Bone adapters, sharded init equals one device, and the Pallas WKV under shard_map gives the
one-device loss on 8 simulated CPU devices (sharded training steps: test_train_cli.py).

Reference: the same functions on one device (relative RMS error < 1e-5). Multi-device runs happen in a
subprocess, because the device count must be set before jax is imported (tests/README.md).
"""

import os
import subprocess
import sys
import textwrap

import jax
import pytest
from jax.sharding import PartitionSpec as P

from modrwkv_jax import sharding

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from modrwkv_jax import peft, sharding
    from modrwkv_jax.models import modrwkv, rwkv7
    from modrwkv_jax.models import projector as proj
    from modrwkv_jax.models.encoders import siglip, timeseries, whisper

    assert len(jax.devices()) == 8, jax.devices()
    RWKV = rwkv7.RWKV7Config(vocab_size=128, n_layer=2, n_embd=64, head_size=16, dim_w=8, dim_a=8, dim_v=4,
                             dim_g=8, dim_ffn=128, scan_layers=True, wkv_impl="chunked")
    SIGLIP = siglip.SiglipConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, patch_size=8,
                                 image_size=32)
    WHISPER = whisper.WhisperConfig(num_mel_bins=8, d_model=16, encoder_layers=1, encoder_attention_heads=2,
                                    encoder_ffn_dim=32, max_source_positions=8)
    SERIES = timeseries.WaveNetConfig(residual_channels=8, skip_channels=8, out_channels=16, dilations=(1, 2),
                                      num_stacks=1)
    CONFIG = modrwkv.ModRWKVConfig(RWKV, (
        ("image", modrwkv.ModalityConfig("siglip", SIGLIP, proj.ProjectorConfig("vision", 16, 64, (3, 2), 2))),
        ("audio", modrwkv.ModalityConfig("whisper", WHISPER, proj.ProjectorConfig("audio", 16, 64))),
        ("series", modrwkv.ModalityConfig("wavenet", SERIES, proj.ProjectorConfig("series", 16, 64, None, 2))),
    ), max_length=64, forecast_horizon=4)
    PEFT = peft.PeftConfig(method="bone", r=8)

    # One batch of 8 rows: [image tokens][audio tokens][series tokens][text], prefix layout.
    B, rs = 8, np.random.RandomState(0)
    n_img = modrwkv.num_tokens(CONFIG, "image", 0)
    n_aud = modrwkv.num_tokens(CONFIG, "audio", 16)
    n_ser = modrwkv.num_tokens(CONFIG, "series", 12)
    T = n_img + n_aud + n_ser + 10
    def pos(start, n):
      p = np.full((B, T), -1, np.int32)
      p[:, start:start + n] = np.arange(n)
      return p
    text = rs.randint(1, 128, size=(B, T)).astype(np.int32)
    text[:, :n_img + n_aud + n_ser] = 0
    labels = np.full((B, T), -100, np.int32)
    labels[:, -10:-1] = text[:, -9:]
    batch = {"tokens": text, "labels": labels, "mask": np.ones((B, T), bool),
             "image": rs.randn(B, 1, 32, 32, 3).astype(np.float32), "image_pos": pos(0, n_img),
             "audio": rs.randn(B, 1, 16, 8).astype(np.float32), "audio_mask": np.ones((B, 1, 16), bool),
             "audio_pos": pos(n_img, n_aud),
             "series": rs.randn(B, 1, 12).astype(np.float32), "series_mask": np.ones((B, 1, 12), bool),
             "series_pos": pos(n_img + n_aud, n_ser), "target": rs.randn(B, 1, 4).astype(np.float32)}

    def loss_fn(params, batch, config=CONFIG):
      lm, _ = modrwkv.loss(config, params, batch)
      fc, _ = modrwkv.forecast_loss(config, params, batch)
      return lm + fc

    def perturb(params):  # zero-initialised matrices (Bone blocks, outputs) become random, so every path matters
      leaves, tdef = jax.tree.flatten(params)
      keys = jax.random.split(jax.random.key(5), len(leaves))
      return jax.tree.unflatten(tdef, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])

    def rel(a, b):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      return float(np.sqrt(np.mean((a - b) ** 2)) / max(np.sqrt(np.mean(b ** 2)), 1e-30))

    # Sharded training steps (the chunked WKV, gradients and optimizer on meshes (8,1,1), (2,2,2)
    # against one device) are tested end to end in test_train_cli.py; here: every leaf is initialised in
    # the sharding its logical axes ask for, and the Pallas kernel (interpret mode, run per (batch, head)
    # shard under shard_map) gives the one-device loss on the mesh that shards heads over "tensor".
    ref_params = modrwkv.init_params(CONFIG, jax.random.key(0), PEFT)
    ref_loss = jax.jit(loss_fn)(perturb(ref_params), batch)
    axes = modrwkv.param_logical_axes(CONFIG, PEFT)
    assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, P)) == jax.tree.structure(ref_params)
    mesh = sharding.make_mesh(1, 2, 4)  # heads over tensor, with fsdp (test_train_cli: (2, 2, 2) and (8, 1, 1))
    params = modrwkv.init_params(CONFIG, jax.random.key(0), PEFT, mesh=mesh)
    want = sharding.logical_to_mesh(axes, mesh)
    for (path, leaf), spec in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(want)):
      assert isinstance(leaf.sharding, NamedSharding) and leaf.sharding.mesh == mesh, (path, leaf.sharding)
      assert leaf.sharding.spec == spec.spec, (jax.tree_util.keystr(path), leaf.sharding.spec, spec.spec)
    init_err = max(rel(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
    assert init_err < 1e-6, init_err
    config = CONFIG.__class__(RWKV.replace(wkv_impl="pallas"), CONFIG.modalities, CONFIG.max_length,
                              CONFIG.forecast_horizon)
    data = jax.device_put(batch, NamedSharding(mesh, sharding.logical_to_mesh_axes(("batch",))))
    with jax.set_mesh(mesh), sharding.axis_rules():
      fwd = jax.jit(lambda p, b: loss_fn(p, b, config))
      text = fwd.trace(perturb(params), data).lower().as_text()
      assert "shard_map" in text or "sdy.manual_computation" in text
      value = fwd(perturb(params), data)
    kernel = params["rwkv"]["blocks"]["att"]["receptance"]["kernel"]
    print(f"mesh (1, 2, 4) pallas: loss {rel(value, ref_loss):.1e}, receptance kernel spec {kernel.sharding.spec}")
    assert rel(value, ref_loss) < 1e-5
    print("OK")
""")


def test_tri_modal_modrwkv_initialises_sharded_and_runs_pallas_on_8_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900)
  print(proc.stdout[-3000:])
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-6000:]


def test_a_name_without_a_rule_raises_with_the_name():
  mesh = sharding.make_mesh()
  with pytest.raises(ValueError, match="'no_such_axis'.*no sharding rule"):
    sharding.logical_to_mesh({"w": P("embed", "no_such_axis")}, mesh)
  with pytest.raises(ValueError, match="names one logical axis twice"):
    sharding.logical_to_mesh({"w": P("mlp", "mlp")}, mesh)


def test_make_mesh_fills_and_checks_sizes():
  n = len(jax.devices())
  assert sharding.make_mesh().shape == {"data": n, "fsdp": 1, "tensor": 1}
  assert sharding.make_mesh(data=1, fsdp=-1).shape == {"data": 1, "fsdp": n, "tensor": 1}
  with pytest.raises(ValueError, match="only one axis may be -1"):
    sharding.make_mesh(-1, -1)
  with pytest.raises(ValueError, match="devices"):
    sharding.make_mesh(data=n + 1)


def test_every_model_part_has_rules_for_its_names():
  """Every logical name of RWKV-7 (both layouts), each encoder, each projector, the forecasting head
  and PEFT adapters resolves with the production RULES (no silent replication)."""
  from modrwkv_jax import peft
  from modrwkv_jax.models import modrwkv, rwkv7
  from modrwkv_jax.models import projector as proj
  from modrwkv_jax.models.encoders import clip, siglip, timeseries, wavlm, whisper

  rwkv = rwkv7.RWKV7Config(vocab_size=64, n_layer=2, n_embd=32, head_size=16, dim_w=4, dim_a=4, dim_v=4, dim_g=4,
                           dim_ffn=64)
  mods = (
      ("image", modrwkv.ModalityConfig("clip", clip.CLIPConfig(hidden_size=16, intermediate_size=32, num_layers=1,
                                                               num_heads=2, patch_size=8, image_size=16),
                                       proj.ProjectorConfig("vision", 16, 32, (3, 2), 2))),
      ("audio", modrwkv.ModalityConfig("wavlm", wavlm.WavLMConfig(
          hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
          conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
          num_buckets=8, max_bucket_distance=16), proj.ProjectorConfig("audio", 16, 32))),
      ("series", modrwkv.ModalityConfig("timer", timeseries.TimerConfig(patch_len=4, width=16, num_layers=1,
                                                                       num_heads=2, mlp_dim=32),
                                        proj.ProjectorConfig("series", 16, 32))),
  )
  mesh = sharding.make_mesh()
  for scan in (False, True):
    config = modrwkv.ModRWKVConfig(rwkv.replace(scan_layers=scan), mods, forecast_horizon=3)
    for peft_config in (None, peft.PeftConfig(method="bone", r=8), peft.PeftConfig(method="lora", r=4),
                        peft.PeftConfig(method="bat", r=8)):
      axes = modrwkv.param_logical_axes(config, peft_config)
      shapes = modrwkv.abstract_params(config, peft_config)
      shardings = sharding.logical_to_mesh(axes, mesh)
      assert jax.tree.structure(shardings) == jax.tree.structure(shapes)
      for spec, shape in zip(jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, P)), jax.tree.leaves(shapes)):
        assert len(spec) == len(shape.shape), (spec, shape)
  siglip_cfg = siglip.SiglipConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, patch_size=8,
                                   image_size=16)
  sharding.logical_to_mesh(siglip.param_logical_axes(siglip_cfg), mesh)
  sharding.logical_to_mesh(whisper.param_logical_axes(whisper.WhisperConfig(
      num_mel_bins=8, d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
      max_source_positions=8)), mesh)
