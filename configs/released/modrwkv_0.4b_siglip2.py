"""The authors' released ModRWKV 0.4B (WorldRWKV/RWKV7-0.4B-siglip2):
RWKV-7 0.4B (24 layers × 1024) + SigLIP2, for evaluation.

Architecture (modrwkv_jax/models/worldrwkv.py notes): frozen google/siglip2-base-patch16-384 (576 × 768 per
384 × 384 image), vision adapter h = W2·relu(W1 x + b1) + b2 with hidden 2·D, out = h + LayerNorm(h), no
compressor; the image tokens precede "\\x16User: {question}\\x17Assistant:"; greedy, stop at token 24.
Scores the authors report (model card; docs/evaluation.md): VQAv2 72.04, TextVQA 38.75, GQA 55.52,
ScienceQA-IMG 43.32.

Expected files (downloaded by the user; nothing is fetched at run time):
  weights/RWKV7-0.4B-siglip2/rwkv-0.pth
      huggingface-cli download WorldRWKV/RWKV7-0.4B-siglip2 --local-dir weights/RWKV7-0.4B-siglip2
  weights/siglip2-base-patch16-384/
      huggingface-cli download google/siglip2-base-patch16-384 --local-dir weights/siglip2-base-patch16-384

    python eval.py --config configs/released/modrwkv_0.4b_siglip2.py \
        --checkpoint weights/RWKV7-0.4B-siglip2/rwkv-0.pth --task vqav2 \
        --data ~/LLaVA/playground/data/eval/vqav2 --out runs/released_0.4b/vqav2
"""

from modrwkv_jax.training.config import sibling


def get_config():
  return sibling(__file__, "common").released_config("0.4B")
