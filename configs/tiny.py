"""A tiny tri-modal ModRWKV that trains on this machine in a minute, with nothing to download.

    python train.py --config configs/tiny.py --workdir runs/tiny

Small random encoders (a SigLIP-style vision tower, a Whisper-style audio encoder, a WaveNet series
encoder), their projectors and a 2-layer RWKV-7 are trained together (phase-II style, the encoders
frozen as in the paper) on offline data that `data.builder = "tiny"` renders into data.cache_dir on first
use: shapes-VQA images, espeak-ng spoken digits and the CO2 series (modrwkv_jax.data.demo). Tests and
CI train this config.
"""

from modrwkv_jax.training.config import base_config


def get_config():
  c = base_config()
  c.name = "tiny"
  c.seed = 0

  c.model.rwkv = dict(vocab_size=65536, n_layer=2, n_embd=64, head_size=16, dim_w=8, dim_a=8, dim_v=8, dim_g=16,
                      dim_ffn=128, scan_layers=True)
  c.model.max_length = 128
  c.model.forecast_horizon = 12
  c.model.modalities = dict(
      image=dict(encoder="siglip",
                 encoder_config=dict(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, patch_size=8,
                                     image_size=32),
                 projector=dict(kind="vision", compressor=(3, 2), hidden_mult=2)),
      audio=dict(encoder="whisper",
                 encoder_config=dict(num_mel_bins=16, d_model=32, encoder_layers=1, encoder_attention_heads=2,
                                     encoder_ffn_dim=64, max_source_positions=200),
                 projector=dict(kind="audio", compressor=(4, 3))),
      series=dict(encoder="wavenet",
                  encoder_config=dict(residual_channels=8, skip_channels=16, out_channels=16, dilations=(1, 2, 4),
                                      num_stacks=1),
                  projector=dict(kind="series", compressor=(4, 4), hidden_mult=2)),
  )

  c.data.builder = "tiny"
  c.data.sources = [
      dict(kind="llava", path="{cache}/tiny/shapes_vqa/{split}.json", weight=0.5),
      dict(kind="audio", path="{cache}/tiny/spoken_digits/{split}.jsonl", weight=0.25),
      dict(kind="series", path="{cache}/tiny/timeseries/co2.csv", weight=0.25,
           options=dict(context=48, horizon=12, time_column="date")),
  ]
  c.data.mixture_length = 64  # records per epoch of the mixture
  c.data.max_length = 128
  c.data.length_buckets = (64, 128)
  c.data.bucket_window = 1
  c.data.image.size = 32
  c.data.audio.feature_size = 16
  c.data.audio.chunk_length = 4
  c.data.series.length = 48
  c.data.series.horizon = 12

  c.train.steps = 6
  c.train.batch_size = 8
  c.train.trainable = ("adapter", "rwkv", "head")
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.eval_batches = 2
  c.train.checkpoint_every = 2
  c.train.keep_checkpoints = 2

  c.optim.lr = 2e-3
  c.optim.warmup = 2
  c.optim.schedule = "cosine"

  c.mesh.data = -1
  return c
