"""The authors' released ModRWKV 1.5B (WorldRWKV/RWKV7-1.5B-siglip2):
RWKV-7 1.5B (24 layers × 2048) + SigLIP2, for evaluation.

Architecture (modrwkv_jax/models/worldrwkv.py notes): frozen google/siglip2-base-patch16-384 (576 × 768 per
384 × 384 image), vision adapter h = W2·relu(W1 x + b1) + b2 with hidden 2·D, out = h + LayerNorm(h), no
compressor; the image tokens precede "\\x16User: {question}\\x17Assistant:"; greedy, stop at token 24.
Scores: none published that we found (docs/evaluation.md has none; the 1.5B model card was not seen).

Expected files (downloaded by the user; nothing is fetched at run time):
  weights/RWKV7-1.5B-siglip2/rwkv-0.pth
      huggingface-cli download WorldRWKV/RWKV7-1.5B-siglip2 --local-dir weights/RWKV7-1.5B-siglip2
  weights/siglip2-base-patch16-384/
      huggingface-cli download google/siglip2-base-patch16-384 --local-dir weights/siglip2-base-patch16-384

    python eval.py --config configs/released/modrwkv_1.5b_siglip2.py \
        --checkpoint weights/RWKV7-1.5B-siglip2/rwkv-0.pth --task vqav2 \
        --data ~/LLaVA/playground/data/eval/vqav2 --out runs/released_1.5b/vqav2
"""

from modrwkv_jax.training.config import sibling


def get_config():
  return sibling(__file__, "common").released_config("1.5B")
