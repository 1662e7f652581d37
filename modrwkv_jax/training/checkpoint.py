"""Checkpoints with orbax: the train state (params, optimizer state, step, RNG, counters) and the data
iterator state, every N steps, at the end and on preemption; async; the last K kept.

    workdir/checkpoints/<step>/state   orbax StandardSave of the state pytree (sharded arrays)
    workdir/checkpoints/<step>/data    JSON {"epoch", "next_index"} (the same on every host)
    workdir/checkpoints/<step>/meta    JSON {"config_name", "trainable": [paths], "model": repr}

A checkpoint directory is complete or absent: orbax writes to a temporary folder and renames it, so a
run killed at any moment restarts from the last finished checkpoint. Restoring takes abstract arrays
with the target shardings (`jax.ShapeDtypeStruct(..., sharding=)`), so a checkpoint written on one mesh
restores onto another.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import orbax.checkpoint as ocp


def manager(workdir: str, *, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of `workdir/checkpoints` (`workdir` may also be that folder or one of its step folders)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(run_folder(workdir), "checkpoints"), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Mapping, data_state: Mapping, meta: Mapping,
         *, force: bool = False) -> bool:
  return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 data=ocp.args.JsonSave(dict(data_state)),
                                                 meta=ocp.args.JsonSave(dict(meta))), force=force)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Mapping) -> tuple[dict, dict, dict]:
  """(state, data_state, meta) of checkpoint `step`, arrays placed per `abstract_state`'s shardings."""
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                   data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
  return dict(out["state"]), dict(out["data"]), dict(out["meta"])


def run_folder(path: str) -> str:
  """The run's workdir from a workdir, its `checkpoints` folder or one step folder."""
  path = os.path.abspath(path)
  if os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == "checkpoints":
    return os.path.dirname(os.path.dirname(path))
  if os.path.basename(path) == "checkpoints":
    return os.path.dirname(path)
  return path


def wait(mngr: ocp.CheckpointManager) -> None:
  mngr.wait_until_finished()


