"""Train ModRWKV from a config file: `python train.py --config configs/NAME.py --workdir DIR [overrides]`.

    python train.py --config configs/tiny.py --workdir runs/tiny
    python train.py --config configs/modrwkv_0.4b_siglip2_phase1.py --workdir runs/p1 \\
        --config.data.root=/data --config.init.rwkv_pth=weights/rwkv7-0.4b.pth --config.mesh.fsdp=4
    python train.py --config configs/modrwkv_0.4b_siglip2_phase2.py --compile_only --config.mesh.data=2 \\
        --config.mesh.fsdp=4          # compile for 8 simulated devices and print the memory per device

Re-running the same command resumes from the latest checkpoint in DIR. Several processes (multi-host):
jax.distributed is initialised automatically under SLURM and on TPU pods, or explicitly with
--coordinator_address HOST:PORT --num_processes N --process_id I (on CPU, over gloo).
"""

from __future__ import annotations

import argparse
import math
import os
import sys


def parse(argv):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog="Any config key can be overridden as --config.KEY=VALUE (Python literals).")
  ap.add_argument("--config", required=True, help="a configs/*.py file")
  ap.add_argument("--workdir", help="checkpoints, metrics.jsonl, TensorBoard events, config.json")
  ap.add_argument("--compile_only", action="store_true",
                  help="compile the train step for config.mesh on simulated CPU devices and print memory per device")
  ap.add_argument("--devices", type=int, default=None,
                  help="--compile_only: simulated devices (default: the product of config.mesh, or 8)")
  ap.add_argument("--coordinator_address", default=None)
  ap.add_argument("--num_processes", type=int, default=None)
  ap.add_argument("--process_id", type=int, default=None)
  ap.add_argument("--distributed", choices=("auto", "off"), default="auto",
                  help="auto: initialise jax.distributed under SLURM / TPU pods or with --coordinator_address")
  args, rest = ap.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config."):
      ap.error(f"unrecognised argument {item!r} (overrides look like --config.train.steps=2)")
    overrides.append(item[len("--config."):])
  if not args.compile_only and not args.workdir:
    ap.error("--workdir is required (unless --compile_only)")
  return args, overrides


def _init_distributed(args):
  import jax
  explicit = args.coordinator_address is not None
  if args.distributed == "off" and not explicit:
    return
  on_cpu = os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or explicit
  if explicit:
    if on_cpu:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                               process_id=args.process_id)
  elif "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()  # cluster auto-detection (SLURM)
  elif "TPU_WORKER_HOSTNAMES" in os.environ or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize()  # TPU pod auto-detection


def main(argv=None) -> int:
  args, overrides = parse(sys.argv[1:] if argv is None else argv)
  # The config is read before jax is imported: --compile_only must set the simulated device count first.
  from modrwkv_jax.training import config as config_lib
  file_config = config_lib.load_config_file(args.config)
  config = config_lib.apply_overrides(file_config, overrides)
  if args.compile_only:
    sizes = [config.mesh.data, config.mesh.fsdp, config.mesh.tensor]
    n = args.devices or (math.prod(sizes) if -1 not in sizes else 8)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    from modrwkv_jax.training import trainer
    report = trainer.compile_only(config)
    print(f"compiled the train step of {args.config} for mesh {report['mesh']} in {report['compile_seconds']:.0f}s")
    print(f"  parameters {report['params_total'] / 1e6:.1f}M, trainable {report['params_trainable'] / 1e6:.1f}M")
    if "peak_bytes_per_device" in report:
      gib = lambda b: b / 2 ** 30
      print(f"  per device: arguments {gib(report['argument_size_in_bytes']):.2f} GiB, outputs "
            f"{gib(report['output_size_in_bytes']):.2f} GiB (aliased {gib(report['alias_size_in_bytes']):.2f}), "
            f"temporaries {gib(report['temp_size_in_bytes']):.2f} GiB -> peak {gib(report['peak_bytes_per_device']):.2f} GiB")
    print(f"  model FLOPs per step (all devices, frozen parts without backward): {report['model_flops_per_step']:.3e}")
    if report.get("flops_per_step_xla"):
      print(f"  XLA's FLOP count per device (a scanned loop's body counted once): {report['flops_per_step_xla']:.3e}")
    return 0

  _init_distributed(args)
  from modrwkv_jax.training import trainer
  result = trainer.train(config, args.workdir, config_file_diff=config_lib.diff(file_config, config))
  return 143 if result.get("preempted") else 0


if __name__ == "__main__":
  sys.exit(main())
