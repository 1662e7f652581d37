"""ModRWKV 0.4B phase II with Bone adapters in place of full RWKV-7 training (docs/architecture.md, docs/architecture.md#parameter-efficient-fine-tuning).

As configs/modrwkv_0.4b_siglip2_phase2.py (LLaVA-665K, batch 128, one epoch of 5,198 steps, ctx 2048, lr
2e-5, Adam(0.9, 0.99), bf16), but RWKV-7's weights stay frozen: Bone (block-affine, r = 64: one trainable 64
× out matrix D per target, zeros at init, docs/architecture.md#parameter-efficient-fine-tuning) on every att receptance/key/value/output and ffn
key/value matrix; the vision adapter and the bone parameters train (train.trainable = ("adapter", "peft")).
The paper's lr is kept; parameter-efficient runs often take a larger one (--config.optim.lr=1e-4).

Start from the phase-I run:
    python train.py --config configs/bone_phase2.py --workdir runs/bone_phase2 \
        --config.data.root=/data/llava \
        --config.init.from_checkpoint=runs/modrwkv_0.4b_siglip2_phase1/checkpoints
Expected files: {data.root}/LLaVA-Instruct/llava_v1_5_mix665k.json + images, weights/rwkv7-world-0.4b.pth,
weights/siglip2-base-patch16-384/ (as the full phase-II config).
"""

from modrwkv_jax.training.config import sibling


def get_config():
  c = sibling(__file__, "common").vision_recipe("0.4B", phase=2)
  c.name = "bone_phase2"
  c.model.peft.method = "bone"
  c.model.peft.r = 64  # block size (peft MissConfig default)
  c.model.peft.alpha = None
  c.model.peft.targets = None  # None: the RWKV-7 defaults (att receptance/key/value/output, ffn key/value)
  c.train.trainable = ("adapter", "peft")
  return c
