"""ModRWKV 1.5B (RWKV-7 1.5B, 24 layers × 2048) + SigLIP2, phase II: instruction tuning (docs/architecture.md).

Trains the vision adapter and every RWKV-7 parameter; SigLIP2-B/16-384 stays frozen. Data: LLaVA-v1.5
mix665k, one epoch (665,298 records at a global batch of 128: 5,198 steps), ctx 2048, lr 2e-5 (100
warmup steps, cosine to 0), Adam(0.9, 0.99, eps 1e-8), no weight decay, clip 1.0, bf16 compute.

Starts from the phase-I run (configs/modrwkv_1.5b_siglip2_phase1.py): pass its checkpoints with
`--config.init.from_checkpoint=runs/modrwkv_1.5b_siglip2_phase1/checkpoints` (`init.from_checkpoint` is
None here; the trainer takes the params alone because the optimizer layout differs between phases).
Without it the adapter starts from scratch on top of `init.rwkv_pth`.

Expected files (all local; nothing is downloaded):
  {data.root}/LLaVA-Instruct/llava_v1_5_mix665k.json            the conversations; image paths relative to
  {data.root}/LLaVA-Instruct/{coco,gqa,ocr_vqa,textvqa,vg}/...  that folder (LLaVA-1.5's layout)
  weights/rwkv7-world-1.5b.pth                                  an RWKV-7 1.5B .pth
  weights/siglip2-base-patch16-384/                             HF snapshot (config.json + model.safetensors)

    python train.py --config configs/modrwkv_1.5b_siglip2_phase2.py --workdir runs/modrwkv_1.5b_siglip2_phase2 \
        --config.data.root=/data/llava \
        --config.init.from_checkpoint=runs/modrwkv_1.5b_siglip2_phase1/checkpoints
"""

from modrwkv_jax.training.config import sibling


def get_config():
  return sibling(__file__, "common").vision_recipe("1.5B", phase=2)
