"""ModRWKV 2.9B (RWKV-7 2.9B, 32 layers × 2560) + SigLIP2, phase I: align the vision adapter (docs/architecture.md).

Trains the vision adapter only (m = 2, no compressor); the SigLIP2-B/16-384 encoder and RWKV-7 stay
frozen. Data: LLaVA-CC3M-Pretrain-595K, one epoch (595,375 records at a global batch of 256: 2,326
steps), ctx 2048, lr 1e-3 (100 warmup steps, cosine to 0), Adam(0.9, 0.99, eps 1e-8), no weight
decay, clip 1.0, bf16 compute, scanned and rematerialised RWKV-7 blocks.

Expected files (all local; nothing is downloaded):
  {data.root}/LLaVA-CC3M-Pretrain-595K/chat.json  the conversations (image paths relative to that folder)
  {data.root}/LLaVA-CC3M-Pretrain-595K/*.jpg      the images (the unzipped images.zip)
  weights/rwkv7-world-2.9b.pth                    an RWKV-7 2.9B .pth (e.g. BlinkDL/rwkv-7-world)
  weights/siglip2-base-patch16-384/               HF snapshot (config.json + model.safetensors)

    python train.py --config configs/modrwkv_3b_siglip2_phase1.py --workdir runs/modrwkv_3b_siglip2_phase1 \
        --config.data.root=/data/llava
Then phase II: configs/modrwkv_3b_siglip2_phase2.py.
"""

from modrwkv_jax.training.config import sibling


def get_config():
  return sibling(__file__, "common").vision_recipe("2.9B", phase=1)
