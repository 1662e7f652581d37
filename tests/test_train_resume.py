"""`python train.py` survives being killed: a run killed with SIGKILL after step 3 and restarted ends with
the same loss at every step and the same final parameters, bit for bit, as an uninterrupted run; SIGTERM
(preemption) writes a checkpoint of the current step and exits 143. configs/tiny.py (tri-modal, real
offline data) in subprocesses that share one persistent compilation cache.
"""

import os
import signal
import subprocess
import time

import numpy as np

from tests.train_helpers import (ROOT, final_params, finished_checkpoints, losses, run, shared,  # noqa: F401
                                 train_cmd, wait_for_checkpoint, wait_for_step)


def test_sigkill_and_sigterm_resume_bit_identically(shared, tmp_path):
  ref = tmp_path / "ref"
  run(train_cmd(shared, ref, "--config.train.keep_checkpoints=10"), shared["env"])
  want = losses(ref)
  assert sorted(want) == [1, 2, 3, 4, 5, 6] and want[6] < want[1]
  want_params = final_params(ref, 6)

  # SIGKILL once step 3 is logged and the checkpoint of step 2 is finished (orbax saves asynchronously: on a
  # busy machine the rename that finishes it can come after step 3's log line). Step 4's may be finished too.
  killed = tmp_path / "killed"
  proc = subprocess.Popen(train_cmd(shared, killed), env=shared["env"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  wait_for_step(killed, 3, proc)
  wait_for_checkpoint(killed, 2, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
  latest = finished_checkpoints(killed)[-1]
  assert latest in (2, 4)
  resumed = run(train_cmd(shared, killed), shared["env"])
  assert f"resumed from {killed / 'checkpoints'}/{latest}" in resumed.stdout, resumed.stdout[-2000:]
  assert losses(killed) == want  # every step, bit for bit (the rows after the checkpoint are rewritten)
  got = final_params(killed, 6)
  assert got.keys() == want_params.keys()
  for k in want_params:
    np.testing.assert_array_equal(got[k], want_params[k], err_msg=k)

  # SIGTERM (preemption): a checkpoint of the current step, then exit code 143 (checkpoint_every=0: no
  # periodic checkpoint, so the one there is the signal's).
  termed = tmp_path / "termed"
  proc = subprocess.Popen(train_cmd(shared, termed, "--config.train.checkpoint_every=0"), env=shared["env"],
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
