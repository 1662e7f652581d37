"""`python train.py` end to end on configs/tiny.py (tri-modal, real offline data), in subprocesses:

- a run killed with SIGKILL after step 3 and restarted ends with the same loss at every step and the same
  final parameters, bit for bit, as an uninterrupted run; SIGTERM writes a checkpoint and exits 143;
- one step on meshes (8,1,1), (2,2,2), (1,4,2) and on one device gives the same loss and updated
  parameters (relative < 1e-5), with Bone adapters on RWKV-7 so every kind of leaf is sharded; a
  checkpoint written on one mesh restores onto another;
- two processes × 4 devices over gloo give the same losses and parameters as one process × 8 devices;
- --compile_only prints the per-device memory of a mesh it simulates; bad configs fail before compiling.

All runs share one persistent compilation cache, so a program compiled by one run is loaded by the next.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  base = tmp_path_factory.mktemp("train_cli")
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(JAX_COMPILATION_CACHE_DIR=str(base / "jax_cache"), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return {"base": base, "env": env, "data": str(base / "data")}


def train_cmd(shared, workdir, *overrides):
  return [sys.executable, os.path.join(ROOT, "train.py"), "--config", TINY, "--workdir", str(workdir),
          f"--config.data.cache_dir={shared['data']}", "--config.train.progress=False", *overrides]


def run(cmd, env, timeout=600):
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
  assert proc.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
  return proc


def losses(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def final_params(workdir, step):
  """The trainable and frozen leaves of checkpoint `step`, read with orbax in this process (no mesh)."""
  import jax
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  meta = checkpointer.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # written on any mesh, read onto this device
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), dict(meta))
  tree = checkpointer.restore(path, target)
  return {jax.tree_util.keystr(kp): np.asarray(v) for kp, v in
          jax.tree_util.tree_leaves_with_path({"t": tree["trainable"], "f": tree["frozen"]})}


def wait_for_step(workdir, step, proc, timeout=600):
  path = os.path.join(workdir, "metrics.jsonl")
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"the run ended (rc {proc.returncode}) before step {step}: {proc.stderr.read()[-3000:]}")
    if os.path.exists(path) and any(json.loads(l).get("step", 0) >= step for l in open(path) if l.strip()):
      return
    time.sleep(0.2)
  raise AssertionError(f"no step {step} after {timeout}s")


def test_sigkill_and_sigterm_resume_bit_identically(shared, tmp_path):
  ref = tmp_path / "ref"
  run(train_cmd(shared, ref, "--config.train.keep_checkpoints=10"), shared["env"])
  want = losses(ref)
  assert sorted(want) == [1, 2, 3, 4, 5, 6] and want[6] < want[1]
  want_params = final_params(ref, 6)

  # SIGKILL once step 3 is logged (the checkpoint of step 2 is finished; step 4's is not written yet).
  killed = tmp_path / "killed"
  proc = subprocess.Popen(train_cmd(shared, killed), env=shared["env"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  wait_for_step(killed, 3, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  resumed = run(train_cmd(shared, killed), shared["env"])
  assert "resumed from" in resumed.stdout
  assert losses(killed) == want  # every step, bit for bit (the rows after the checkpoint are rewritten)
  got = final_params(killed, 6)
  assert got.keys() == want_params.keys()
  for k in want_params:
    np.testing.assert_array_equal(got[k], want_params[k], err_msg=k)

  # SIGTERM (preemption): a checkpoint of the current step, then exit code 143.
  termed = tmp_path / "termed"
  proc = subprocess.Popen(train_cmd(shared, termed, "--config.train.checkpoint_every=100"), env=shared["env"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  wait_for_step(termed, 2, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err[-3000:]
  steps = [int(s) for s in os.listdir(termed / "checkpoints") if s.isdigit()]
  assert steps and 2 <= max(steps) < 6, (steps, out[-2000:])
  stopped = max(steps)
  assert f"stopped by signal {int(signal.SIGTERM)} at step {stopped}" in out
  got = final_params(termed, stopped)
  if stopped % 2 == 0:  # the reference kept every even step
    ref_params = final_params(ref, stopped)
    for k in ref_params:
      np.testing.assert_array_equal(got[k], ref_params[k], err_msg=k)


MESH_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from modrwkv_jax.training import config as config_lib, trainer
    assert len(jax.devices()) == 8
    out, data = sys.argv[1], sys.argv[2]
    base = config_lib.apply_overrides(config_lib.load_config_file(sys.argv[3]), [
        f"data.cache_dir={data}", "train.steps=1", "train.progress=False", "model.peft.method='bone'",
        "model.peft.r=16", "train.trainable=('adapter', 'rwkv', 'peft', 'head')", "train.checkpoint_every=1"])
    for shape in [(8, 1, 1), (2, 2, 2), (1, 4, 2)]:
      c = config_lib.apply_overrides(base, [f"mesh.data={shape[0]}", f"mesh.fsdp={shape[1]}", f"mesh.tensor={shape[2]}"])
      work = os.path.join(out, "mesh_%d_%d_%d" % shape)
      trainer.train(c, work)
      if shape == (1, 4, 2):  # parameters are really sharded over fsdp and tensor
        setup = trainer.Setup(c, trainer.make_mesh(c))
        spec = setup.state_shardings["trainable"]["rwkv"]["blocks"]["att"]["receptance"]["kernel"].spec
        mu = [sh.spec for kp, sh in jax.tree_util.tree_leaves_with_path(setup.state_shardings["opt_state"])
              if "mu" in jax.tree_util.keystr(kp) and "'receptance']['kernel']" in jax.tree_util.keystr(kp)][0]
        print("receptance kernel", spec, "adam mu", mu)
        assert "fsdp" in str(spec) and "tensor" in str(spec) and spec == mu
    # A checkpoint written on the (8, 1, 1) mesh restores onto (1, 4, 2), each leaf on its new sharding.
    from modrwkv_jax import sharding
    other = sharding.make_mesh(1, 4, 2)
    _, on_8, _ = trainer.load_run(os.path.join(out, "mesh_8_1_1"), mesh=sharding.make_mesh(8, 1, 1))
    _, on_other, step = trainer.load_run(os.path.join(out, "mesh_8_1_1"), mesh=other)
    assert step == 1
    kernel = on_other["rwkv"]["blocks"]["att"]["receptance"]["kernel"]
    assert kernel.sharding.mesh == other and "tensor" in str(kernel.sharding.spec), kernel.sharding
    for a, b in zip(jax.tree.leaves(on_8), jax.tree.leaves(on_other)):
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


def _close(a, b, tol=1e-5):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.sqrt(np.mean((a - b) ** 2)) <= tol * max(np.sqrt(np.mean(b ** 2)), 1e-30)


def test_one_step_is_the_same_on_every_mesh_and_on_one_device(shared, mesh_runs, tmp_path):
  single = tmp_path / "single"
  run(train_cmd(shared, single, "--config.train.steps=1", "--config.model.peft.method='bone'", "--config.model.peft.r=16",
                "--config.train.trainable=('adapter', 'rwkv', 'peft', 'head')", "--config.train.checkpoint_every=1",
                "--config.mesh.data=1"), shared["env"])
  want_loss, want = losses(single)[1], final_params(single, 1)
  for name in ("mesh_8_1_1", "mesh_2_2_2", "mesh_1_4_2"):
    got_loss, got = losses(mesh_runs / name)[1], final_params(mesh_runs / name, 1)
    assert _close(got_loss, want_loss), (name, got_loss, want_loss)
    bad = [k for k in want if not _close(got[k], want[k])]
    assert not bad, (name, bad[:5])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(shared, mesh_runs, tmp_path):
  work = tmp_path / "two"
  port = _free_port()
  env = dict(shared["env"], XLA_FLAGS="--xla_force_host_platform_device_count=4")
  cmd = lambda i: train_cmd(shared, work, "--config.train.steps=1", "--config.model.peft.method='bone'",
                            "--config.model.peft.r=16", "--config.train.trainable=('adapter', 'rwkv', 'peft', 'head')",
                            "--config.train.checkpoint_every=1", "--config.mesh.data=8",
                            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}")
  procs = [subprocess.Popen(cmd(i), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, out[-2000:] + err[-5000:]
  assert "2 process(es)" in outs[0][0]
  ref = mesh_runs / "mesh_8_1_1"
  assert _close(losses(work)[1], losses(ref)[1])
  want, got = final_params(ref, 1), final_params(work, 1)
  bad = [k for k in want if not _close(got[k], want[k])]
  assert not bad, bad[:5]


def test_compile_only_reports_memory_per_device(shared):
  proc = run([sys.executable, os.path.join(ROOT, "train.py"), "--config", TINY, "--compile_only",
              "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
              f"--config.data.cache_dir={shared['data']}"], shared["env"])
  assert "for mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in proc.stdout
  assert "per device:" in proc.stdout and "GiB" in proc.stdout, proc.stdout


def test_unknown_config_key_fails_with_the_closest_names(shared, tmp_path):
  proc = subprocess.run(train_cmd(shared, tmp_path / "bad", "--config.train.stpes=2"), capture_output=True, text=True,
                        env=shared["env"], timeout=300, cwd=ROOT)
  assert proc.returncode != 0 and "unknown config key 'train.stpes'" in proc.stderr and "train.steps" in proc.stderr
  assert not (tmp_path / "bad").exists()
