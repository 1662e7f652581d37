"""ASR alignment (phase I) of ModRWKV 0.4B with a frozen Whisper-medium encoder on LibriSpeech (docs/architecture.md audio).

Trains the audio adapter only (Conv1d(1024 -> 2D, k3, s2, pad 2) -> Linear -> ReLU -> Linear, ~25 tokens/s);
Whisper-medium's encoder (d_model 1024, 24 layers, 16 heads, ffn 4096, 1500 positions, 80 mel bins) and
RWKV-7 0.4B stay frozen. Input: 80-bin log-mel features padded to the 30 s chunk (the paper's input),
output cut to sum(mel_mask)//2 + 1 frames (encoder option mode="paper"). lr 1e-4 (100 warmup steps, cosine
to 0), batch 32, one epoch of LibriSpeech 960 h (281,241 utterances: 8,789 steps), ctx 2048, bf16; clips
over 30 s are skipped and counted. Phase II (the paper: lr 1e-4 -> 5e-5, adapter + RWKV-7):
`--config.train.trainable="('adapter','rwkv')" --config.optim.end_lr_ratio=0.5 --config.init.from_checkpoint=...`.

Expected files (all local):
  {data.root}/librispeech/train.jsonl        train-960 manifest: {"id", "audio": path relative to this
  {data.root}/librispeech/validation.jsonl   folder, "text": transcript} per line (dev-clean for validation)
  weights/rwkv7-world-0.4b.pth               an RWKV-7 0.4B .pth
  weights/whisper-medium/                    HF snapshot of openai/whisper-medium (the encoder is read)

    python train.py --config configs/asr_whisper_0.4b.py --workdir runs/asr_whisper_0.4b --config.data.root=/data
"""

from modrwkv_jax.training.config import sibling


def get_config():
  common = sibling(__file__, "common")
  audio = dict(
      encoder="whisper",
      encoder_config=dict(num_mel_bins=80, d_model=1024, encoder_layers=24, encoder_attention_heads=16,
                          encoder_ffn_dim=4096, max_source_positions=1500, dtype="bfloat16"),
      encoder_options=dict(mode="paper"),  # output cut to sum(mel_mask)//2 + 1 frames
      train_encoder=False, projector=dict(kind="audio", compressor=None))
  c = common.asr_recipe("asr_whisper_0.4b", audio, common.ENCODER_HF["whisper-medium"])
  c.data.audio.frontend = "whisper"
  c.data.audio.feature_size = 80
  c.data.audio.chunk_length = 30
  c.data.audio.pad_to_chunk = True  # every clip padded to 30 s (3000 frames), as Whisper was trained
  c.data.audio.max_seconds = None  # None: the 30 s chunk
  return c
