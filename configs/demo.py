"""The demo model: a small ModRWKV trained from scratch on offline images, on a 2-core CPU in 5 to 7 minutes.

    python train.py --config configs/demo.py --workdir runs/demo

A 4-layer × 128 RWKV-7 (head size 32) from scratch behind a small random, frozen SigLIP-style vision
tower (32 × 32 px, 8 px patches: 16 patches, Conv1d compressor (2, 2): 8 image tokens) and a vision
adapter (m = 2). Phase-II style: the adapter and all of RWKV-7 train; the encoder stays frozen, as in
the paper. Data: `data.builder = "demo"` renders modrwkv_jax.data.demo into `{data.cache_dir}/demo` on
first use (nothing is downloaded): shapes-VQA (2,000 / 200 / 200 scenes of coloured shapes with
counting and colour questions) and scikit-learn's digits ("What digit is shown?"), mixed 60 / 40,
3,200 records per epoch; 300 steps at batch 16 (1.5 epochs), evaluated every 100 steps on the
validation splits. A training step takes 1.0 s (32 positions) to 1.4 s (48 positions) on 2 CPU cores,
most of it in the 65,536-word embedding and output head. The demo builder also writes spoken digits
and time series (configs/tiny.py trains on all three modalities).
"""

from modrwkv_jax.training.config import base_config


def get_config():
  c = base_config()
  c.name = "demo"
  c.seed = 0

  c.model.rwkv = dict(vocab_size=65536, n_layer=4, n_embd=128, head_size=32, dim_w=16, dim_a=16, dim_v=8,
                      dim_g=32, dim_ffn=512, dtype="float32", scan_layers=True, remat="none")
  c.model.max_length = 64
  c.model.forecast_horizon = 0
  c.model.modalities = dict(
      image=dict(encoder="siglip",
                 encoder_config=dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, patch_size=8,
                                     image_size=32),
                 train_encoder=False,  # random and frozen: the adapter learns to read it
                 projector=dict(kind="vision", compressor=(2, 2), hidden_mult=2)))

  c.data.builder = "demo"  # build modrwkv_jax.data.demo into {cache_dir}/demo on first use
  c.data.sources = [
      dict(kind="llava", path="{cache}/demo/shapes_vqa/{split}.json", weight=0.6),
      dict(kind="llava", path="{cache}/demo/digits/{split}.json", weight=0.4),
  ]
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.mixture_length = 3200  # records per epoch of the mixture
  c.data.max_length = 64
  c.data.truncate = False
  # Records are 8 image tokens + text: digits 23 positions, shapes-VQA (two questions) about 41. Two
  # compiled shapes in practice; sorting within 4-batch windows puts the digits into 32-long batches.
  c.data.length_buckets = (32, 48, 64)
  c.data.bucket_window = 4
  c.data.on_error = "skip"
  c.data.image.processor = "siglip"
  c.data.image.size = 32  # shapes are rendered at 64 px, digits at 32 px
  c.data.image.max_items = 1

  c.train.steps = 300
  c.train.batch_size = 16
  c.train.trainable = ("adapter", "rwkv")
  c.train.log_every = 10
  c.train.eval_every = 100
  c.train.eval_batches = 8
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 2

  c.optim.lr = 2e-3
  c.optim.warmup = 30
  c.optim.schedule = "cosine"
  c.optim.weight_decay = 0.0
  c.optim.clip = 1.0

  c.mesh.data = -1
  return c
