"""Audio front end in numpy: decoding, mono mix-down, resampling to 16 kHz, Whisper log-mel features
and WavLM (wav2vec2) input normalisation.

Reading order: errors and checks, decoding (`check_wav_complete`, `audio_info`, `read_audio`),
resampling (`check_sampling_rate`, `resample`), the Whisper log-mel front end (`WhisperFeatureConfig`,
`mel_filter_bank`, `whisper_features`), the wav2vec2 / WavLM front end (`Wav2Vec2FeatureConfig`,
`wav2vec2_inputs`).

Layouts are time-major like every encoder input in this project: Whisper features are
float32[B, T, n_mels] (transformers' `WhisperFeatureExtractor` returns the transpose
[B, n_mels, T]); wav2vec2 inputs are float32[B, N] samples. Every batch comes with a bool mask,
True at real frames / samples; padding is always on the right.

Equivalence with transformers (tests/test_audio_frontend.py measures it):
  * `whisper_features(..., pad_to_chunk=True)` equals `WhisperFeatureExtractor(feature_size=80|128)
    (wavs, sampling_rate=16000, return_attention_mask=True)` (periodic Hann window, n_fft 400, hop 160,
    reflect padding, Slaney mel filters 0-8 kHz, log10 clamped at 1e-10 and at max-8, (x+4)/4; the
    mask is HF's `attention_mask[:, ::hop]`, so frame t is real iff t·hop < n_samples). We compute the
    STFT in float64; transformers uses float32 torch.stft when torch is installed, hence differences of
    ~1e-6, not bit equality.
  * `pad_to_chunk=False` computes only the frames whose window touches real audio (ceil((n+200)/160),
    at most 3000). Its real frames are *identical* to the 30 s version's: the waveform is still
    zero-padded past its end, and the per-clip log-max is taken over the same frames (all other
    frames of a 30 s window are pure silence at the 1e-10 floor).
  * `wav2vec2_inputs` equals `Wav2Vec2FeatureExtractor(do_normalize=..)(wavs, padding=True,
    return_attention_mask=True, sampling_rate=16000)`: (x - mean) / sqrt(var + 1e-7) over the real
    samples of each clip, padding set to `padding_value`.

Resampling: `scipy.signal.resample_poly` with our own Kaiser-windowed sinc (beta 10, 64 zero crossings
per side, cutoff at the lower Nyquist). Why this and not soxr: scipy is already a dependency (no extra
compiled wheel), the ratio is exact (44.1 kHz -> 16 kHz is 160/441, not a float approximation),
the FIR is linear-phase and centred so the output is time-aligned with the input, and the result is
deterministic whole-clip processing (soxr's strength, streaming, is not needed for clips <= 30 s).
scipy's default filter (Kaiser beta 5, 10 zero crossings) has ~1e-3 passband ripple and lets ~20 %
of a 7.5 kHz tone through its transition band; ours measures <= 4e-6 relative error on tones up to
7.5 kHz and <= 3e-6 leakage (about -110 dB) of tones above 8 kHz, at 8 / 22.05 / 44.1 / 48 kHz.
Cost: 2·64·max(up, down)+1 taps, e.g. ~350 multiply-adds per output sample from 44.1 kHz: ~0.12 s
for a 30 s clip on one core, plus ~1 s once per new ratio to design its filter (cached).

Bad input raises `AudioError` (a ValueError) naming the file or the sample, with a `reason` the data
pipeline counts skipped records under: unreadable or empty files ("corrupt_audio"), WAV files cut
short, whose data chunk declares more bytes than the file holds (libsndfile would silently return
the part that is there; "truncated_audio"), NaN/inf samples, sample rates that are not positive
whole numbers or whose reduced ratio to 16 kHz needs more than `MAX_RESAMPLE_FACTOR` phases
("bad_sampling_rate"), and clips longer than the encoder allows (Whisper: `chunk_length` = 30 s;
"audio_too_long"). For long clips `too_long="truncate"` keeps the first 30 s with a warning instead
(what transformers does silently).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import struct
import warnings
from collections.abc import Sequence

import numpy as np

SAMPLE_RATE = 16000
MAX_RESAMPLE_FACTOR = 4096  # max(up, down) after reducing orig/target by their gcd
_KAISER_BETA = 10.0
_ZERO_CROSSINGS = 64


# What soundfile raises on a file it cannot read (LibsndfileError is a SoundFileError and a RuntimeError;
# unknown formats give TypeError / ValueError).
DECODE_ERRORS = (RuntimeError, TypeError, ValueError, OSError, EOFError)


class AudioError(ValueError):
  """Audio that cannot be used, with the file or sample it came from in the message; `reason` is the
  pipeline's skip counter key."""

  def __init__(self, message: str, reason: str = "corrupt_audio"):
    super().__init__(message)
    self.reason = reason

  def __reduce__(self):  # survives the trip from a worker process
    return AudioError, (str(self), self.reason)


# ---------------------------------------------------------------------------------------------
# Checks and decoding.


def check_waveform(x, name: str = "audio") -> np.ndarray:
  """A finite, non-empty mono waveform as float32[N]; raises AudioError naming `name` otherwise.

  Integer arrays are converted as they are (no 1/32768 scaling, as in transformers): scale PCM first.
  """
  x = np.asarray(x)
  if x.ndim != 1:
    raise AudioError(f"{name}: expected a mono waveform float[N]; got shape {x.shape} "
                     "(mix channels down with to_mono first)")
  if x.size == 0:
    raise AudioError(f"{name}: the audio is empty (0 samples)")
  if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
    raise AudioError(f"{name}: samples must be real numbers; got dtype {x.dtype}")
  if np.issubdtype(x.dtype, np.floating):
    bad = ~np.isfinite(x)
    if bad.any():
      i = int(np.argmax(bad))
      raise AudioError(f"{name}: sample {i} is {x[i]} ({int(bad.sum())} non-finite samples); "
                       "the audio is corrupt")
  return x.astype(np.float32, copy=False)


def to_mono(x, name: str = "audio") -> np.ndarray:
  """float[N] or float[N, channels] -> float32[N], the mean over channels."""
  try:
    x = np.asarray(x)
  except (TypeError, ValueError) as e:  # ragged lists
    raise AudioError(f"{name}: not an array of samples ({e})") from None
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise AudioError(f"{name}: samples must be real numbers; got dtype {x.dtype}")
  if x.ndim == 2:
    x = x.astype(np.float64).mean(axis=1)
  elif x.ndim != 1:
    raise AudioError(f"{name}: expected float[N] or float[N, channels]; got shape {x.shape}")
  return x.astype(np.float32)


_WAV_MAX_CHUNKS = 256  # chunks walked looking for "data" before leaving the file to libsndfile


def check_wav_complete(path: str | os.PathLike) -> None:
  """Raises AudioError "truncated_audio" when a RIFF/RIFX WAVE file's data chunk declares more bytes
  than the file holds (a download or copy cut short): libsndfile then decodes the part that is there
  without a word. Other formats, and streamed WAVs whose data size is unknown (0 or 0xFFFFFFFF), pass.
  """
  path = os.fspath(path)
  try:
    _check_wav_chunks(path)
  except OSError as e:  # unreadable (permissions, a directory, gone since it was listed)
    raise AudioError(f"{path}: cannot read the audio file ({type(e).__name__}: {e})") from e


def _check_wav_chunks(path: str) -> None:
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
      return
    order = "<" if head[:4] == b"RIFF" else ">"
    size, pos = os.fstat(f.fileno()).st_size, 12
    for _ in range(_WAV_MAX_CHUNKS):
      f.seek(pos)
      chunk = f.read(8)
      if len(chunk) < 8:
        return
      declared = struct.unpack(order + "I", chunk[4:])[0]
      if chunk[:4] == b"data":
        available = size - pos - 8
        if declared not in (0, 0xFFFFFFFF) and declared > available:
          raise AudioError(f"{path}: truncated WAV file: its data chunk declares {declared:,} bytes but only "
                           f"{available:,} follow ({100 * available / declared:.0f} %); the file was cut "
                           "short, re-download or re-encode it", "truncated_audio")
        return
      pos += 8 + declared + (declared & 1)


def audio_info(path: str | os.PathLike) -> tuple[int, int]:
  """(frames, sampling rate) of an audio file from its header, checked like `read_audio` checks the
  decoded file: AudioError for a missing, unreadable, truncated (WAV) or empty file or a bad rate."""
  import soundfile as sf

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise AudioError(f"{path}: no such audio file")
  check_wav_complete(path)
  try:
    info = sf.info(path)
  except DECODE_ERRORS as e:
    raise AudioError(f"{path}: cannot decode audio ({type(e).__name__}: {e}); expected a WAV, FLAC or "
                     "OGG file readable by libsndfile") from e
  rate = check_sampling_rate(info.samplerate, path, "the file's")
  if info.frames <= 0:
    raise AudioError(f"{path}: the audio file is empty (0 frames)")
  return int(info.frames), rate


def read_audio(path: str | os.PathLike, sampling_rate: int = SAMPLE_RATE, *,
               max_seconds: float | None = None) -> np.ndarray:
  """Decodes an audio file (WAV, FLAC, OGG, ... whatever libsndfile reads), mixes it down to mono
  and resamples it.

  Args:
    path: the audio file.
    sampling_rate: the rate of the returned waveform (16 kHz for Whisper and WavLM).
    max_seconds: if given, longer files raise AudioError "audio_too_long" (checked on the header,
      before decoding, and again on the decoded frames).
  Returns:
    float32[N] in [-1, 1] (for integer PCM files) at `sampling_rate`.
  """
  import soundfile as sf  # only the decoder needs it

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise AudioError(f"{path}: no such audio file")
  if max_seconds is None:
    check_wav_complete(path)
  else:  # an hour-long file is refused without decoding it
    frames, rate = audio_info(path)
    if frames > max_seconds * rate:
      raise AudioError(f"{path}: {frames / rate:.2f} s long; at most {max_seconds:g} s allowed", "audio_too_long")
  try:
    data, rate = sf.read(path, dtype="float32", always_2d=True)
  except DECODE_ERRORS as e:
    raise AudioError(f"{path}: cannot decode audio ({type(e).__name__}: {e}); expected a WAV, FLAC or "
                     "OGG file readable by libsndfile") from e
  rate = check_sampling_rate(rate, path, "the file's")
  if data.shape[0] == 0:
    raise AudioError(f"{path}: the audio file is empty (0 frames)")
  if max_seconds is not None and data.shape[0] > max_seconds * rate:
    raise AudioError(f"{path}: {data.shape[0] / rate:.2f} s long; at most {max_seconds:g} s allowed",
                     "audio_too_long")
  x = check_waveform(to_mono(data, path), path)
  return resample(x, rate, sampling_rate, name=path)


# ---------------------------------------------------------------------------------------------
# Resampling.


def check_sampling_rate(rate, name: str = "audio", what: str = "the") -> int:
  """`rate` as a positive int of Hz; AudioError "bad_sampling_rate" for 0, negatives, fractions, NaN/inf,
  strings and booleans."""
  if isinstance(rate, np.ndarray) and rate.ndim == 0:
    rate = rate.item()
  ok = isinstance(rate, numbers.Real) and not isinstance(rate, bool) and math.isfinite(rate)
  ok = ok and rate == int(rate) and int(rate) > 0
  if not ok:
    raise AudioError(f"{name}: {what} sample rate {rate!r} is not a positive whole number of Hz; "
                     "cannot resample it", "bad_sampling_rate")
  return int(rate)


@functools.lru_cache(maxsize=16)
def _resample_filter(up: int, down: int) -> np.ndarray:
  from scipy import signal
  m = max(up, down)
  # Low-pass at the lower of the two Nyquist rates (cutoff 1/m of the upsampled Nyquist).
  return signal.firwin(2 * _ZERO_CROSSINGS * m + 1, 1.0 / m, window=("kaiser", _KAISER_BETA))


def resample(x, orig_rate, target_rate=SAMPLE_RATE, *, name: str = "audio") -> np.ndarray:
  """Polyphase resampling of float[N] (or float[N, channels]) from `orig_rate` to `target_rate`.

  Exact rational ratio (gcd-reduced); see the module docstring for the filter and its accuracy.
  Returns float32 with ceil(N · target / orig) samples; the input itself when the rates are equal.
  """
  orig = check_sampling_rate(orig_rate, name, "source")
  target = check_sampling_rate(target_rate, name, "target")
  x = np.asarray(x, np.float32)
  if orig == target:
    return x
  g = math.gcd(orig, target)
  up, down = target // g, orig // g
  if max(up, down) > MAX_RESAMPLE_FACTOR:
    raise AudioError(f"{name}: cannot resample {orig} Hz -> {target} Hz: the reduced ratio {up}/{down} "
                     f"needs more than {MAX_RESAMPLE_FACTOR} polyphase branches; convert the file to a "
                     "standard rate (8, 16, 22.05, 24, 32, 44.1 or 48 kHz) first", "bad_sampling_rate")
  from scipy import signal
  y = signal.resample_poly(x.astype(np.float64), up, down, axis=0, window=_resample_filter(up, down))
  return y.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Whisper log-mel features.


@dataclasses.dataclass(frozen=True)
class WhisperFeatureConfig:
  """The settings of transformers' WhisperFeatureExtractor (preprocessor_config.json names)."""
  feature_size: int = 80  # mel bins: 80 (tiny ... large-v2) or 128 (large-v3)
  sampling_rate: int = SAMPLE_RATE
  hop_length: int = 160
  chunk_length: int = 30  # seconds: every clip is padded to this and longer ones are refused
  n_fft: int = 400
  padding_value: float = 0.0
  do_normalize: bool = False  # zero-mean unit-variance waveform first (off for all OpenAI checkpoints)

  def __post_init__(self):
    for f in ("feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft"):
      if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
        raise ValueError(f"WhisperFeatureConfig.{f} must be a positive int, got {getattr(self, f)!r}")

  @property
  def n_samples(self) -> int:
    return self.chunk_length * self.sampling_rate

  @property
  def n_frames(self) -> int:
    """Mel frames of a full chunk (3000 for 30 s): the encoder input length 2·max_source_positions."""
    return self.n_samples // self.hop_length

  @classmethod
  def from_preprocessor_config(cls, path: str | os.PathLike) -> WhisperFeatureConfig:
    """Reads a snapshot's preprocessor_config.json (WhisperFeatureExtractor / WhisperProcessor)."""
    from modrwkv_jax.models.encoders.hf_snapshot import read_preprocessor_config
    cfg = read_preprocessor_config(path)
    kind = cfg.get("feature_extractor_type", "WhisperFeatureExtractor")
    if kind != "WhisperFeatureExtractor":
      raise ValueError(f"{path}/preprocessor_config.json: feature_extractor_type is {kind!r}; "
                       "expected 'WhisperFeatureExtractor'")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in cfg.items() if k in fields})


@functools.lru_cache(maxsize=8)
def mel_filter_bank(n_mels: int, n_fft: int = 400, sampling_rate: int = SAMPLE_RATE,
                    fmin: float = 0.0, fmax: float = 8000.0) -> np.ndarray:
  """Slaney-scale, Slaney-normalised triangular mel filters (librosa's default, Whisper's filters).

  Returns float64[n_fft // 2 + 1, n_mels]; mel power = power_spectrum @ filters.
  """
  def hz_to_mel(f):
    f = np.asarray(f, np.float64)
    lin = 3.0 * f / 200.0  # linear below 1 kHz: 200/3 Hz per mel
    log = 15.0 + np.log(np.maximum(f, 1e-300) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)

  def mel_to_hz(m):
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), 200.0 * m / 3.0)

  fft_freqs = np.linspace(0, sampling_rate // 2, n_fft // 2 + 1)
  band = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # edges and centres
  slopes = band[None, :] - fft_freqs[:, None]  # [F, n_mels + 2]
  diff = np.diff(band)
  down = -slopes[:, :-2] / diff[:-1]
  up = slopes[:, 2:] / diff[1:]
  filters = np.maximum(0.0, np.minimum(down, up))
  return filters * (2.0 / (band[2:] - band[:-2]))[None, :]  # equal area per filter


def _normalize(x: np.ndarray, eps: float = 1e-7) -> np.ndarray:
  """(x - mean) / sqrt(var + 1e-7) over a clip (transformers' zero_mean_unit_var_norm)."""
  x64 = x.astype(np.float64)
  return ((x64 - x64.mean()) / np.sqrt(x64.var() + eps)).astype(np.float32)


def _log_mel(wave: np.ndarray, n_frames: int, config: WhisperFeatureConfig) -> np.ndarray:
  """Whisper's log-mel of one zero-padded waveform: float32[n_frames, n_mels] (time-major)."""
  n_fft, hop = config.n_fft, config.hop_length
  padded = np.pad(wave.astype(np.float64), n_fft // 2, mode="reflect")  # torch.stft(center=True)
  frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]  # [T, n_fft]
  window = np.hanning(n_fft + 1)[:-1]  # periodic Hann
  power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # [T, F]
  mel = power @ mel_filter_bank(config.feature_size, n_fft, config.sampling_rate)
  log = np.log10(np.maximum(mel, 1e-10))  # floor: -10, i.e. -100 dB
  log = np.maximum(log, log.max() - 8.0)  # 80 dB dynamic range below the clip's loudest bin
  return ((log + 4.0) / 4.0).astype(np.float32)


def _clip_lengths(waveforms, max_samples: int | None, too_long: str, rate: int, names) -> list[np.ndarray]:
  if too_long not in ("error", "truncate"):
    raise ValueError(f"too_long must be 'error' or 'truncate', got {too_long!r}")
  if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
    raise AudioError("expected a batch (a list of float[N] waveforms or float[B, N]); got one float[N] "
                     "waveform: wrap it in a list")
  if len(waveforms) == 0:
    raise AudioError("the batch is empty")
  names = list(names) if names is not None else [f"audio sample {i}" for i in range(len(waveforms))]
  out = []
  for x, name in zip(waveforms, names):
    x = check_waveform(x, name)
    if max_samples is not None and x.shape[0] > max_samples:
      message = (f"{name}: {x.shape[0] / rate:.2f} s long ({x.shape[0]} samples at {rate} Hz); the encoder "
                 f"takes at most {max_samples / rate:g} s")
      if too_long == "error":
        raise AudioError(message + "; split the clip or pass too_long='truncate'", "audio_too_long")
      warnings.warn(message + f"; keeping the first {max_samples / rate:g} s", stacklevel=3)
      x = x[:max_samples]
    out.append(x)
  return out


def whisper_features(waveforms: Sequence[np.ndarray], config: WhisperFeatureConfig = WhisperFeatureConfig(), *,
                     pad_to_chunk: bool = True, too_long: str = "error",
                     names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Whisper log-mel features of a batch of 16 kHz mono clips.

  Args:
    waveforms: B clips float[N_b] at `config.sampling_rate` (see `read_audio` / `resample`).
    config: the feature extractor settings (`WhisperFeatureConfig.from_preprocessor_config(path)`).
    pad_to_chunk: True (the paper's and transformers' behaviour): T = config.n_frames (3000 for 30 s).
      False: T = the frames that touch audio in the longest clip (<= n_frames); the real frames are
      identical to the 30 s version (see module docstring); for `whisper.forward(mode="real_length")`.
    too_long: "error" (default) or "truncate" (warn and keep the first chunk_length seconds) for clips
      longer than config.chunk_length.
    names: per-clip names for error messages (e.g. file paths).
  Returns:
    (features float32[B, T, n_mels], mel_mask bool[B, T]); mel_mask[b, t] = t·hop < N_b.
  """
  rate, hop, n_fft = config.sampling_rate, config.hop_length, config.n_fft
  clips = _clip_lengths(waveforms, config.n_samples, too_long, rate, names)
  lengths = np.array([x.shape[0] for x in clips])
  # Without pad_to_chunk: the frames t with t·hop - n_fft/2 < N, i.e. every frame whose window reaches
  # the longest clip, and zeros past every clip's end (as in the 30 s window).
  n_frames = -(-(int(lengths.max()) + n_fft // 2) // hop)
  n_wave = n_frames * hop + n_fft // 2 + 1
  if pad_to_chunk or n_frames >= config.n_frames:
    n_frames, n_wave = config.n_frames, config.n_samples
  feats = np.empty((len(clips), n_frames, config.feature_size), np.float32)
  for b, x in enumerate(clips):
    wave = np.full(n_wave, config.padding_value, np.float32)
    wave[:x.shape[0]] = x
    if config.do_normalize:  # transformers normalises the padded clip over its real part, padding -> value
      wave[:x.shape[0]] = _normalize(x)
    feats[b] = _log_mel(wave, n_frames, config)
  mask = np.arange(n_frames)[None, :] * hop < lengths[:, None]
  return feats, mask


# ---------------------------------------------------------------------------------------------
# wav2vec2 / WavLM input normalisation.


@dataclasses.dataclass(frozen=True)
class Wav2Vec2FeatureConfig:
  """The settings of transformers' Wav2Vec2FeatureExtractor (WavLM's front end)."""
  sampling_rate: int = SAMPLE_RATE
  do_normalize: bool = True
  padding_value: float = 0.0
  return_attention_mask: bool = True  # False for group-norm checkpoints trained without masks

  @classmethod
  def from_preprocessor_config(cls, path: str | os.PathLike) -> Wav2Vec2FeatureConfig:
    from modrwkv_jax.models.encoders.hf_snapshot import read_preprocessor_config
    cfg = read_preprocessor_config(path)
    kind = cfg.get("feature_extractor_type", "Wav2Vec2FeatureExtractor")
    if kind != "Wav2Vec2FeatureExtractor":
      raise ValueError(f"{path}/preprocessor_config.json: feature_extractor_type is {kind!r}; "
                       "expected 'Wav2Vec2FeatureExtractor'")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in cfg.items() if k in fields})


def wav2vec2_inputs(waveforms: Sequence[np.ndarray], config: Wav2Vec2FeatureConfig = Wav2Vec2FeatureConfig(), *,
                    max_seconds: float | None = None, too_long: str = "error",
                    names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """WavLM / wav2vec2 inputs of a batch of 16 kHz mono clips, padded on the right to the longest.

  Args:
    waveforms: B clips float[N_b] at `config.sampling_rate`.
    max_seconds: optional length limit (WavLM itself has none; attention cost grows as N²).
  Returns:
    (input_values float32[B, N], mask bool[B, N]): each clip normalised over its own real samples
    when config.do_normalize, padding = config.padding_value.
  """
  rate = config.sampling_rate
  max_samples = None if max_seconds is None else int(round(max_seconds * rate))
  clips = _clip_lengths(waveforms, max_samples, too_long, rate, names)
  n = max(x.shape[0] for x in clips)
  values = np.full((len(clips), n), config.padding_value, np.float32)
  mask = np.zeros((len(clips), n), bool)
  for b, x in enumerate(clips):
    values[b, :x.shape[0]] = _normalize(x) if config.do_normalize else x
    mask[b, :x.shape[0]] = True
  return values, mask
