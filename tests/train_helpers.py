"""Helpers of the train.py subprocess tests (test_train_cli.py, test_train_resume.py): the shared data
folder and persistent compilation cache, the command line, and readers of metrics.jsonl and checkpoints."""

import json
import os
import subprocess
import sys
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


def _wait_until(done, proc, what, timeout=600, period=0.05):
  """Polls done() until it holds; fails when `proc` ends first or after `timeout` s, naming `what`."""
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
    if done():
      return
    time.sleep(period)
  raise AssertionError(f"no {what} after {timeout}s")


def wait_for_step(workdir, step, proc, timeout=600):
  path = os.path.join(workdir, "metrics.jsonl")
  _wait_until(lambda: os.path.exists(path) and any(json.loads(l).get("step", 0) >= step for l in open(path) if l.strip()),
              proc, f"step {step}", timeout)


def wait_for_checkpoint(workdir, step, proc, timeout=600):
  """Until checkpoint `step` is finished: orbax saves asynchronously into `<step>.orbax-checkpoint-tmp*` and
  renames it to `<step>` when it is complete, which may be after later steps are logged."""
  path = os.path.join(workdir, "checkpoints", str(step))
  _wait_until(lambda: os.path.isdir(path), proc, f"finished checkpoint {step}", timeout, period=0.02)


def finished_checkpoints(workdir):
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(folder) if s.isdigit() and os.path.isdir(os.path.join(folder, s)))
