"""ASR alignment (phase I) of ModRWKV 0.4B with a frozen WavLM-large encoder on LibriSpeech (docs/architecture.md audio).

Trains the audio adapter only (Conv1d(1024 -> 2D, k3, s2, pad 2) -> Linear -> ReLU -> Linear, ~25 tokens/s);
WavLM large (hidden 1024, 24 layers, 16 heads, ffn 4096; layer-norm conv feature encoder without conv
bias, pre-norm "stable" transformer, as microsoft/wavlm-large) and RWKV-7 0.4B stay frozen. Input: the
raw 16 kHz waveform normalised per clip (Wav2Vec2FeatureExtractor), 50 Hz features from the final layer.
lr 1e-4 (100 warmup steps, cosine to 0), batch 32, one epoch of LibriSpeech 960 h (281,241 utterances:
8,789 steps), ctx 2048, bf16. Phase II (the paper: lr 1e-4 -> 5e-5, adapter + RWKV-7):
`--config.train.trainable="('adapter','rwkv')" --config.optim.end_lr_ratio=0.5 --config.init.from_checkpoint=...`.

Expected files (all local):
  {data.root}/librispeech/train.jsonl        train-960 manifest: {"id", "audio": path relative to this
  {data.root}/librispeech/validation.jsonl   folder, "text": transcript} per line (dev-clean for validation)
  weights/rwkv7-world-0.4b.pth               an RWKV-7 0.4B .pth
  weights/wavlm-large/                       HF snapshot of microsoft/wavlm-large

    python train.py --config configs/asr_wavlm_0.4b.py --workdir runs/asr_wavlm_0.4b --config.data.root=/data
"""

from modrwkv_jax.training.config import sibling


def get_config():
  common = sibling(__file__, "common")
  audio = dict(
      encoder="wavlm",
      encoder_config=dict(  # microsoft/wavlm-large config.json
          hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
          hidden_act="gelu", layer_norm_eps=1e-5, feat_extract_norm="layer", feat_extract_activation="gelu",
          conv_dim=(512,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
          conv_bias=False, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, num_buckets=320,
          max_bucket_distance=800, do_stable_layer_norm=True, dtype="bfloat16"),
      train_encoder=False, projector=dict(kind="audio", compressor=None))
  c = common.asr_recipe("asr_wavlm_0.4b", audio, common.ENCODER_HF["wavlm-large"])
  c.data.audio.frontend = "wav2vec2"  # normalised 16 kHz samples
  c.data.audio.max_seconds = 35.0  # LibriSpeech's longest utterances; longer clips are skipped and counted
  return c
