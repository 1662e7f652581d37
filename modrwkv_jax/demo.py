"""`make demo`: a tiny random RWKV-7 on the CPU, end to end through the public API.

Builds a small model with the RWKV-LM initialisation, tokenizes a chat prompt with the World
tokenizer, runs a forward pass, generates greedily with the carried state, and round-trips the
weights through an official-format .pth. Random weights produce random text: this checks the
plumbing, not the language. (Later issues turn this into the multimodal train + eval demo.)
"""

import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from modrwkv_jax import generate as gen
from modrwkv_jax.models import rwkv7
from modrwkv_jax.tokenizer import world_tokenizer


def main() -> int:
  tok = world_tokenizer()
  config = rwkv7.RWKV7Config(n_layer=2, n_embd=128, head_size=64, dim_w=16, dim_a=16, dim_v=8, dim_g=32,
                             dim_ffn=512)
  params = rwkv7.init_params(config, jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f"RWKV-7 {config.n_layer} layers x {config.n_embd}, {n_params / 1e6:.1f}M params, jax {jax.__version__} "
        f"on {jax.default_backend()}")

  prompt = "\x16User: What is the capital of France?\x17\x16Assistant:"
  ids = tok.encode(prompt)
  t0 = time.perf_counter()
  logits, state = jax.jit(rwkv7.forward, static_argnums=0)(config, params, jnp.asarray([ids]))
  logits.block_until_ready()
  print(f"prompt: {len(ids)} tokens -> logits {tuple(logits.shape)} {logits.dtype} in {time.perf_counter() - t0:.1f}s "
        f"(incl. compile); state: wkv {tuple(state.wkv.shape)}")
  assert np.isfinite(np.asarray(logits)).all(), "non-finite logits"

  t0 = time.perf_counter()
  rows, _ = gen.generate(config, params, ids, max_new_tokens=24, temperature=1.0, top_p=0.9, seed=1)
  print(f"generated {len(rows[0])} tokens in {time.perf_counter() - t0:.1f}s: {tok.decode(rows[0])!r}")

  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "demo.pth")
    rwkv7.save_pth(config, params, path)
    config2, params2 = rwkv7.load_pth(path)
    same = config2 == config and all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)))
    print(f"save_pth -> load_pth round trip ({os.path.getsize(path) / 1e6:.1f} MB): {'ok' if same else 'MISMATCH'}")
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
