"""Shared pieces of the experiment configs (not a config itself: it has no get_config()).

The paper's vision recipe (docs/architecture.md) lives here once, as `vision_recipe(preset, phase)`; the
`modrwkv_*_siglip2_phase{1,2}.py` files, the CLIP ablation and the Bone/LoRA runs call it and change
what differs; `asr_recipe` does the same for the two LibriSpeech configs. Configs are loaded by file
path (`load_config_file`), not as a package, so a config reaches this file (or another config) by its
path next to its own, which works from any working directory:

    from modrwkv_jax.training.config import sibling
    common = sibling(__file__, "common")

Weights are read from local paths only (README "Training on real weights"): the defaults below are
relative to the working directory, under `weights/`; point elsewhere with
`--config.init.rwkv_pth=/path/model.pth --config.init.encoder_hf.image=/path/snapshot`.
"""

import math

from modrwkv_jax.training.config import base_config

# docs/architecture.md, the paper's vision training. Records per epoch of each phase's data set.
PHASE1_RECORDS = 595_375  # LLaVA-CC3M-Pretrain-595K chat.json
PHASE2_RECORDS = 665_298  # LLaVA-v1.5 mix665k
PHASES = {
    # phase: (records, global batch, peak lr, trainable groups, data file relative to data.root, image root)
    1: (PHASE1_RECORDS, 256, 1e-3, ("adapter",), "{root}/LLaVA-CC3M-Pretrain-595K/chat.json",
        "{root}/LLaVA-CC3M-Pretrain-595K"),
    2: (PHASE2_RECORDS, 128, 2e-5, ("adapter", "rwkv"), "{root}/LLaVA-Instruct/llava_v1_5_mix665k.json",
        "{root}/LLaVA-Instruct"),
}
CONTEXT = 2048

# RWKV-7 checkpoints, one per preset: any official RWKV-7 World / G1 .pth of that size (docs/formats.md#rwkv-lm-pth),
# downloaded (e.g. BlinkDL/rwkv-7-world: RWKV-x070-World-0.4B-v2.9-20250107-ctx4096.pth) and saved or
# linked under these names.
RWKV_PTH = {
    "0.1B": "weights/rwkv7-world-0.1b.pth",
    "0.4B": "weights/rwkv7-world-0.4b.pth",
    "1.5B": "weights/rwkv7-world-1.5b.pth",
    "2.9B": "weights/rwkv7-world-2.9b.pth",
}
# Hugging Face snapshot folders (config.json + model.safetensors), e.g.
# `huggingface-cli download google/siglip2-base-patch16-384 --local-dir weights/siglip2-base-patch16-384`.
ENCODER_HF = {
    "siglip2-base-patch16-384": "weights/siglip2-base-patch16-384",
    "clip-vit-large-patch14-336": "weights/clip-vit-large-patch14-336",
    "whisper-medium": "weights/whisper-medium",
    "wavlm-large": "weights/wavlm-large",
}


def epoch_steps(records: int, batch_size: int) -> int:
  """Optimizer steps of one epoch: every record once, the last batch partly empty."""
  return math.ceil(records / batch_size)


def real_size_rwkv(preset: str) -> dict:
  """model.rwkv of a released size trained in bf16: one scanned layer stack, each block rematerialised."""
  return dict(preset=preset, dtype="bfloat16", scan_layers=True, remat="block")


def siglip2_image() -> dict:
  """The paper's vision modality: frozen SigLIP2-B/16-384 `last_hidden_state` (576 × 768), no compressor,
  vision adapter with m = 2 (docs/architecture.md: "m = 2 in the paper runs, 4 later")."""
  return dict(encoder="siglip", encoder_preset="siglip2-base-patch16-384", encoder_config=dict(dtype="bfloat16"),
              train_encoder=False, projector=dict(kind="vision", compressor=None, hidden_mult=2))


def vision_recipe(preset: str, phase: int):
  """The paper's phase I or II vision run (docs/architecture.md) on the RWKV-7 `preset` ("0.4B", "1.5B", "2.9B").

  Phase I: adapter only (encoder and RWKV-7 frozen), LLaVA-CC3M-595K, batch 256, lr 1e-3.
  Phase II: adapter + every RWKV-7 parameter, LLaVA-665K, batch 128, lr 2e-5.
  Both: ctx 2048, Adam(0.9, 0.99, eps 1e-8), no weight decay, clip 1.0, 100 warmup steps then cosine
  to 0, bf16 compute, one epoch.
  """
  records, batch_size, lr, trainable, data_file, image_root = PHASES[phase]
  c = base_config()
  c.name = f"modrwkv_{preset.lower()}_siglip2_phase{phase}"
  c.seed = 0

  c.model.rwkv = real_size_rwkv(preset)
  c.model.max_length = CONTEXT
  c.model.forecast_horizon = 0
  c.model.modalities = dict(image=siglip2_image())

  c.data.builder = None
  c.data.root = ""  # --config.data.root=/path/to/datasets
  c.data.sources = [dict(kind="llava", path=data_file, weight=1.0, options=dict(root=image_root))]
  c.data.layout = "prefix"  # the paper's format: [576 image tokens] ++ conversation
  c.data.max_length = CONTEXT
  c.data.truncate = True  # cut the text end of the few conversations over 2048 positions
  # Sequence packing: every row is 2048 positions of whole records (576 image tokens + text each, two or
  # three per row), numbered by segment_ids; one compiled shape. Without packing, the buckets bound the
  # shapes to four.
  c.data.packing = True
  c.data.length_buckets = (768, 1024, 1536, 2048)  # 576 image tokens + text: at most four compiled shapes
  c.data.bucket_window = 16
  c.data.on_error = "skip"
  c.data.image.processor = "siglip"  # fixed-resolution SigLIP2: resize to 384 × 384, mean = std = 0.5
  c.data.image.size = 384
  c.data.image.max_items = 1

  c.train.steps = epoch_steps(records, batch_size)  # one epoch
  c.train.batch_size = batch_size  # global; --config.train.grad_accum=N keeps it with N micro-batches
  c.train.grad_accum = 1
  c.train.trainable = trainable
  c.train.log_every = 10
  c.train.eval_every = 0  # the LLaVA files have no validation split; evaluate with eval.py afterwards
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3

  c.optim.lr = lr
  c.optim.warmup = 100
  c.optim.schedule = "cosine"
  c.optim.end_lr_ratio = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.clip = 1.0

  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  c.init.rwkv_pth = RWKV_PTH[preset]
  c.init.encoder_hf = dict(image=ENCODER_HF["siglip2-base-patch16-384"])
  # Phase II starts from the phase-I run: --config.init.from_checkpoint=runs/<phase1 run>/checkpoints
  # (the trainer takes the params alone, as the optimizer layout differs between the phases).
  c.init.from_checkpoint = None
  return c


# docs/architecture.md audio: phase I trains the audio adapter at lr 1e-4, batch 32 (phase II: 1e-4 -> 5e-5).
LIBRISPEECH_TRAIN_RECORDS = 281_241  # train-clean-100 + train-clean-360 + train-other-500 (960 h)


def asr_recipe(name: str, audio: dict, encoder_hf: str):
  """Phase-I ASR alignment on LibriSpeech 960 h with the frozen audio encoder `audio`
  (a model.modalities.audio dict) and RWKV-7 0.4B: the audio adapter alone, lr 1e-4, batch 32, one epoch.
  The caller sets data.audio (the encoder's front end)."""
  c = base_config()
  c.name = name
  c.seed = 0

  c.model.rwkv = real_size_rwkv("0.4B")
  c.model.max_length = CONTEXT
  c.model.modalities = dict(audio=audio)

  c.data.root = ""  # --config.data.root=/path/to/datasets
  # {"id", "audio": path relative to the manifest's folder, "text": transcript} per line (an ASR record).
  c.data.sources = [dict(kind="audio", path="{root}/librispeech/{split}.jsonl", weight=1.0)]
  c.data.train_split = "train"  # train-960
  c.data.eval_split = "validation"  # dev-clean
  c.data.layout = "prefix"  # [audio tokens] ++ "\x16Assistant: {transcript}\x17"
  c.data.max_length = CONTEXT
  c.data.truncate = True
  # Sequence packing: rows of 2048 positions holding whole utterances (about 6 at LibriSpeech's mean of
  # 12 s: ~25 audio tokens per second + the transcript), at most 8 clips per row (the batch's item
  # dimension, so the step compiles once).
  c.data.packing = True
  c.data.length_buckets = (256, 512, 768, 1024, 2048)  # ~25 audio tokens per second + the transcript
  c.data.on_error = "skip"
  c.data.audio.max_items = 1
  c.data.audio.row_items = 8

  c.train.steps = epoch_steps(LIBRISPEECH_TRAIN_RECORDS, 32)  # one epoch
  c.train.batch_size = 32
  c.train.trainable = ("adapter",)
  c.train.log_every = 10
  c.train.eval_every = 1000
  c.train.eval_batches = 16
  c.train.checkpoint_every = 1000

  c.optim.lr = 1e-4
  c.optim.warmup = 100
  c.optim.schedule = "cosine"
  c.optim.end_lr_ratio = 0.0
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.99, 1e-8
  c.optim.weight_decay = 0.0
  c.optim.clip = 1.0

  c.init.rwkv_pth = RWKV_PTH["0.4B"]
  c.init.encoder_hf = dict(audio=encoder_hf)
  return c
