"""Shared pieces of the configs of the authors' released ModRWKV models (not a config: no get_config()).

The released vision models (WorldRWKV/RWKV7-{0.4B,1.5B,3B}-siglip2 on the Hugging Face hub, Feb–Mar 2025;
see modrwkv_jax/models/worldrwkv.py for the source notes) are RWKV-7 World + the frozen fixed-resolution
SigLIP2 tower google/siglip2-base-patch16-384 (`last_hidden_state`, 576 × 768 per image) + the vision adapter
with hidden width 2·D (m = 2, no compressor), images prefixed to the text. These configs describe that
architecture for evaluation: eval.py reads the weights with
`worldrwkv.load_worldrwkv(--checkpoint, encoder_hf=config.init.encoder_hf.image)` when
`worldrwkv.is_worldrwkv_checkpoint(--checkpoint)`.

Loaded by path like every config (`sibling`); it reaches configs/common.py, one folder up, the same way.
"""

import os

from modrwkv_jax.training.config import base_config, sibling

# `sibling(file, name)` looks next to `file`: this folder's path (as a "file" of configs/) finds configs/common.py.
shared = sibling(os.path.dirname(os.path.abspath(__file__)), "common")

# Hub repositories of the released .pth checkpoints (one file, rwkv-0.pth, each; the 0.4B and 3B model cards were
# read, the 1.5B name follows them and was not seen) and where README tells users to put them.
HUB_REPO = {"0.4B": "WorldRWKV/RWKV7-0.4B-siglip2", "1.5B": "WorldRWKV/RWKV7-1.5B-siglip2",
            "2.9B": "WorldRWKV/RWKV7-3B-siglip2"}
CHECKPOINT = {"0.4B": "weights/RWKV7-0.4B-siglip2/rwkv-0.pth", "1.5B": "weights/RWKV7-1.5B-siglip2/rwkv-0.pth",
              "2.9B": "weights/RWKV7-3B-siglip2/rwkv-0.pth"}
ADAPTER_HIDDEN_MULT = 2  # VisualAdapter hidden = project_dim * 2 in the released models' code (worldrwkv.py notes)
IMAGE_SIZE = 384  # SigLIP2-B/16-384: resize 384 × 384 bilinear, scale 1/255, mean = std = 0.5 (docs/architecture.md#encoders)


def released_config(preset: str):
  """The released ModRWKV on the RWKV-7 `preset` ("0.4B", "1.5B", "2.9B"), as eval.py needs it."""
  c = base_config()
  c.name = f"released_modrwkv_{preset.lower()}_siglip2"
  c.seed = 0

  # RWKV-7 sizes of the preset (docs/formats.md#rwkv-lm-pth); WorldRWKV's inference runs in bf16 ("cuda bf16").
  c.model.rwkv = dict(preset=preset, dtype="bfloat16")
  c.model.max_length = shared.CONTEXT  # ctx_len 2048 in training: 576 image tokens + the conversation
  c.model.forecast_horizon = 0
  image = shared.siglip2_image()  # frozen SigLIP2-B/16-384 last_hidden_state, vision adapter, no compressor
  image["projector"]["hidden_mult"] = ADAPTER_HIDDEN_MULT
  c.model.modalities = dict(image=image)

  c.data.builder = None
  c.data.sources = []  # evaluation only: eval.py reads the benchmark named by --task from --data
  c.data.layout = "prefix"  # [576 image tokens] ++ "\x16User: {question}\x17Assistant:" (worldrwkv.PROMPT)
  c.data.max_length = shared.CONTEXT
  c.data.image.processor = "siglip"
  c.data.image.size = IMAGE_SIZE
  c.data.image.max_items = 1

  c.train.trainable = ()  # not a training recipe (train from configs/modrwkv_*_siglip2_phase{1,2}.py)

  c.init.rwkv_pth = None  # the released .pth holds RWKV-7 and the adapter: pass it as eval.py --checkpoint
  c.init.encoder_hf = dict(image=shared.ENCODER_HF["siglip2-base-patch16-384"])  # the file holds no encoder
  c.init.projectors = None
  c.init.from_checkpoint = None
  return c
