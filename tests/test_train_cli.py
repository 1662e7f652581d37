"""`python train.py` end to end on configs/tiny.py (tri-modal, real offline data), in subprocesses:

- two steps on mesh (2,2,2) (data, fsdp and tensor at once) and on one device give the same losses and
  updated parameters (relative < 1e-5), with Bone adapters on RWKV-7 so every kind of leaf is sharded;
  every leaf of the state has the sharding its logical axes ask for; a checkpoint written on one mesh
  restores onto another;
- two processes × 4 devices over gloo on mesh (8,1,1) (data only) give the same losses and parameters as
  one device;
- --compile_only prints the per-device memory of a mesh it simulates; an unknown key fails at once.
(Kill and resume: test_train_resume.py.) All runs share one persistent compilation cache, so a program
compiled by one run is loaded by the next.
"""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.train_helpers import ROOT, TINY, final_params, losses, run, shared, train_cmd  # noqa: F401


MESH_SCRIPT = textwrap.dedent("""
    import os, re, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from modrwkv_jax import sharding
    from modrwkv_jax.training import config as config_lib, trainer
    assert len(jax.devices()) == 8
    out, data = sys.argv[1], sys.argv[2]
    base = config_lib.apply_overrides(config_lib.load_config_file(sys.argv[3]), [
        f"data.cache_dir={data}", "train.steps=2", "optim.warmup=0", "train.progress=False", "model.peft.method='bone'",
        "model.peft.r=16", "train.trainable=('adapter', 'rwkv', 'peft', 'head')"])
    for shape in [(1, 1, 1), (2, 2, 2)]:  # (1, 1, 1): the first device alone
      c = config_lib.apply_overrides(base, [f"mesh.data={shape[0]}", f"mesh.fsdp={shape[1]}", f"mesh.tensor={shape[2]}"])
      trainer.train(c, os.path.join(out, "mesh_%d_%d_%d" % shape))
    # Every parameter and both Adam moments of every trainable one have the sharding of their logical axes.
    mesh = sharding.make_mesh(2, 2, 2)
    setup = trainer.Setup(c, mesh)
    want = {jax.tree_util.keystr(kp): s.spec
            for kp, s in jax.tree_util.tree_leaves_with_path(sharding.logical_to_mesh(setup.axes, mesh))}
    def param_path(key):  # "['trainable']['rwkv']..." or "['opt_state'][1].mu['rwkv']..." -> "['rwkv']..."
      for part in ("['trainable']", "['frozen']"):
        if key.startswith(part):
          return key[len(part):]
      moment = re.search(r"[.](mu|nu)([[].*)$", key)
      return moment.group(2) if moment else None
    checked = 0
    for kp, sh in jax.tree_util.tree_leaves_with_path(setup.state_shardings):
      key = jax.tree_util.keystr(kp)
      if param_path(key) is not None:
        assert sh.spec == want[param_path(key)], (key, sh.spec, want[param_path(key)])
        checked += 1
    n_trainable = len(jax.tree.leaves(setup.state_shardings["trainable"]))
    assert checked == len(want) + 2 * n_trainable, (checked, len(want), n_trainable)
    spec = setup.state_shardings["trainable"]["rwkv"]["blocks"]["att"]["receptance"]["kernel"].spec
    print("leaves checked", checked, "receptance kernel", spec)
    assert "fsdp" in str(spec) and "tensor" in str(spec)
    # A checkpoint written on the (2, 2, 2) mesh restores onto (1, 2, 4), each leaf on its new sharding.
    _, on_2, step = trainer.load_run(os.path.join(out, "mesh_2_2_2"), mesh=mesh)
    other = sharding.make_mesh(1, 2, 4)
    _, on_other, _ = trainer.load_run(os.path.join(out, "mesh_2_2_2"), mesh=other)
    assert step == 2
    kernel = on_other["rwkv"]["blocks"]["att"]["receptance"]["kernel"]
    assert kernel.sharding.mesh == other and "tensor" in str(kernel.sharding.spec), kernel.sharding
    for a, b in zip(jax.tree.leaves(on_2), jax.tree.leaves(on_other)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    print("OK")
""")


@pytest.fixture(scope="module")
def mesh_runs(shared):
  out = shared["base"] / "meshes"
  env = dict(shared["env"])
  proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(out), shared["data"], TINY], capture_output=True,
                        text=True, env=env, timeout=900, cwd=ROOT)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
  return out


def _close(a, b, tol=1e-5, atol=0.0):
  """Relative RMS error below `tol` (float64), plus `atol` of absolute RMS slack."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.sqrt(np.mean((a - b) ** 2)) <= tol * max(np.sqrt(np.mean(b ** 2)), 1e-30) + atol


# Adam divides each gradient entry by its own magnitude, so a leaf that starts at zero (Bone blocks, norm
# biases, the gate LoRA) ends two steps later at an lr-sized value (rms ≈ 7e-4 here) whose relative error
# is its gradient's, ~1e-5 across meshes (measured up to 1.8e-5; absolute ≤ 1.3e-8). The slack below is
# 1e-4 of one lr-sized step: 60× what is measured, 1000× below what a wrong shard (a step of ~lr) moves.
LR = 2e-3
PARAM_ATOL = 1e-4 * LR * 2


BONE_ON_TINY = ("--config.optim.warmup=0", "--config.model.peft.method='bone'", "--config.model.peft.r=16",
                "--config.train.trainable=('adapter', 'rwkv', 'peft', 'head')")


def test_two_steps_are_the_same_on_a_3d_mesh_and_on_one_device(mesh_runs):
  """Two steps: RWKV-LM's init zeroes the output projections, so the first step moves only them (and the
  head, the adapters); the second moves every weight."""
  want_loss, want = losses(mesh_runs / "mesh_1_1_1"), final_params(mesh_runs / "mesh_1_1_1", 2)
  got_loss, got = losses(mesh_runs / "mesh_2_2_2"), final_params(mesh_runs / "mesh_2_2_2", 2)
  assert all(_close(got_loss[s], want_loss[s]) for s in (1, 2)), (got_loss, want_loss)
  bad = [k for k in want if not _close(got[k], want[k], atol=PARAM_ATOL)]
  assert not bad, bad[:5]
  bone = [k for k in want if "receptance" in k and "bone" in k][0]
  assert np.abs(want[bone]).max() > 0  # Bone blocks start at zero: the steps really updated them


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_device(shared, mesh_runs, tmp_path):
  """Mesh (8, 1, 1) over two processes of 4 devices: each host loads its 4 rows of the global batch."""
  work = tmp_path / "two"
  port = _free_port()
  env = dict(shared["env"], XLA_FLAGS="--xla_force_host_platform_device_count=4")
  cmd = lambda i: train_cmd(shared, work, "--config.train.steps=2", *BONE_ON_TINY, "--config.mesh.data=8",
                            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}")
  procs = [subprocess.Popen(cmd(i), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, out[-2000:] + err[-5000:]
  assert "2 process(es)" in outs[0][0]
  ref = mesh_runs / "mesh_1_1_1"
  assert all(_close(losses(work)[s], losses(ref)[s]) for s in (1, 2)), (losses(work), losses(ref))
  want, got = final_params(ref, 2), final_params(work, 2)
  bad = [k for k in want if not _close(got[k], want[k], atol=PARAM_ATOL)]
  assert not bad, bad[:5]


def test_compile_only_reports_memory_per_device(shared, mesh_runs):
  # The (2, 2, 2) step of the mesh runs at T = 64: with the shared cache this loads, not compiles.
  proc = run([sys.executable, os.path.join(ROOT, "train.py"), "--config", TINY, "--compile_only",
              "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2", "--config.train.steps=2",
              "--config.data.max_length=64", *BONE_ON_TINY, f"--config.data.cache_dir={shared['data']}"],
             shared["env"])
  assert "for mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in proc.stdout
  assert "per device:" in proc.stdout and "GiB" in proc.stdout, proc.stdout


def test_unknown_config_key_fails_with_the_closest_names(shared, tmp_path):
  proc = subprocess.run(train_cmd(shared, tmp_path / "bad", "--config.train.stpes=2"), capture_output=True, text=True,
                        env=shared["env"], timeout=300, cwd=ROOT)
  assert proc.returncode != 0 and "unknown config key 'train.stpes'" in proc.stderr and "train.steps" in proc.stderr
  assert not (tmp_path / "bad").exists()
