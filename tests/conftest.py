"""Shared fixtures. References are imported lazily by the tests that need them."""

import os

# The `rwkv` package reads these at import time: RWKV-7 code path, pure-PyTorch (no CUDA build).
os.environ.setdefault("RWKV_V7_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")
os.environ.setdefault("RWKV_JIT_ON", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)

# The files that take longest (subprocess training runs, 8-device meshes, tri-modal model compiles) run
# first, so that two xdist workers (`make test`: --dist loadfile --no-loadscope-reorder) finish together
# instead of one of them running a long file alone at the end. The rest keep their collection order.
LONGEST_FIRST = ("test_train_cli.py", "test_train_resume.py", "test_sharding.py", "test_modrwkv.py", "test_rwkv7.py",
                 "test_training.py", "test_demo.py", "test_readme.py", "test_eval.py", "test_packing.py",
                 "test_naflex_modrwkv.py", "test_benchmarks.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))  # stable: in-file order kept
