"""Ablation: ModRWKV 0.4B phase I with CLIP ViT-L/14-336 in place of SigLIP2 (docs/architecture.md, vision encoder).

Identical to configs/modrwkv_0.4b_siglip2_phase1.py (adapter only, LLaVA-CC3M-595K, batch 256, lr 1e-3,
one epoch of 2,326 steps, ctx 2048, bf16) except the frozen encoder: `openai/clip-vit-large-patch14-336`,
final layer including the class token, before the post-LayerNorm (577 tokens × 1024; clip.encode
options layer=-1, drop_cls=False), with CLIP preprocessing (OpenAI mean/std, 336 px).

Expected files (all local):
  {data.root}/LLaVA-CC3M-Pretrain-595K/chat.json + images   as in the SigLIP2 phase-I config
  weights/rwkv7-world-0.4b.pth                              an RWKV-7 0.4B .pth
  weights/clip-vit-large-patch14-336/                       HF snapshot (config.json + model.safetensors)

    python train.py --config configs/clip_0.4b_phase1.py --workdir runs/clip_0.4b_phase1 \
        --config.data.root=/data/llava
"""

from modrwkv_jax.training.config import sibling


def get_config():
  common = sibling(__file__, "common")
  c = common.vision_recipe("0.4B", phase=1)
  c.name = "clip_0.4b_phase1"
  c.model.modalities.image = dict(
      encoder="clip", encoder_preset="clip-vit-large-patch14-336", encoder_config=dict(dtype="bfloat16"),
      encoder_options=dict(layer=-1, drop_cls=False),  # final layer incl. CLS, before post-LN: 577 × 1024
      train_encoder=False, projector=dict(kind="vision", compressor=None, hidden_mult=2))
  c.data.image.processor = "clip"
  c.data.image.size = 336
  c.init.encoder_hf = dict(image=common.ENCODER_HF["clip-vit-large-patch14-336"])
  return c
