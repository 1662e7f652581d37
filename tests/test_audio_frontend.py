"""Audio front end (modrwkv_jax.data.audio) against transformers' feature extractors and analytic tones.

References: `WhisperFeatureExtractor` (80 and 128 mel bins; its torch float32 STFT, and its numpy
float64 path) and `Wav2Vec2FeatureExtractor` (do_normalize on and off), on real speech synthesised
offline with eSpeak NG (the `espeakng-loader` wheel ships libespeak-ng and its voice data) and on
tones at 8 / 22.05 / 44.1 kHz resampled to 16 kHz by our resampler. Tolerances: log-mel rel-RMS
< 1e-5 and max |diff| < 5e-4 against the float32 torch path (its STFT rounding in near-silent bins
reaches ~5e-5), < 1e-5 max against the float64 numpy path; wav2vec2 inputs < 1e-5 max; masks
identical. Resampling: tones within 7.5 kHz reproduced to rel-RMS < 1e-5, tones above 8 kHz
suppressed to < 1e-5 of their RMS.
"""

import ctypes
import functools
import importlib.util
import os
import warnings

import numpy as np
import pytest

from modrwkv_jax.data import audio

SR = 16000


def rel_rms(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.sqrt(np.mean((x - ref) ** 2)) / np.sqrt(np.mean(ref ** 2)))


def tone(freq, rate, seconds, amp=0.3):
  return (amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


HAVE_ESPEAK = importlib.util.find_spec("espeakng_loader") is not None


@functools.lru_cache(maxsize=1)
def _espeak():
  import espeakng_loader
  lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
  data_parent = os.path.dirname(espeakng_loader.get_data_path()).encode()
  rate = lib.espeak_Initialize(2, 0, data_parent, 0)  # 2 = AUDIO_OUTPUT_SYNCHRONOUS
  assert rate > 0, f"espeak_Initialize failed ({rate})"
  return lib, rate


def speak(text: str, voice: str = "en") -> tuple[np.ndarray, int]:
  """Synthesises `text` with eSpeak NG: (float32[N] in [-1, 1], sample rate 22050)."""
  lib, rate = _espeak()
  chunks = []
  callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

  @callback_type
  def on_audio(wav, n, events):
    del events
    if n > 0:
      chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
    return 0

  lib.espeak_SetSynthCallback(on_audio)
  assert lib.espeak_SetVoiceByName(voice.encode()) == 0
  raw = text.encode()
  status = lib.espeak_Synth(ctypes.c_char_p(raw), ctypes.c_size_t(len(raw) + 1), ctypes.c_uint(0), ctypes.c_int(1),
                            ctypes.c_uint(0), ctypes.c_uint(1), None, None)  # POS_CHARACTER, espeakCHARS_UTF8
  lib.espeak_Synchronize()
  assert status == 0 and chunks, f"espeak_Synth failed ({status})"
  return np.concatenate(chunks).astype(np.float32) / 32768.0, rate


@pytest.fixture(scope="module")
def clips():
  """Speech at 22.05 kHz (when espeakng-loader is installed) and tones at 8 / 22.05 / 44.1 kHz, all
  resampled to 16 kHz by us."""
  out = {}
  sentences = (("speech_en", "The quick brown fox jumps over the lazy dog."),
               ("speech_en2", "Hello world, this is a test of the audio front end, spoken slowly."))
  for name, text in sentences if HAVE_ESPEAK else ():
    wave, rate = speak(text)
    out[name] = audio.resample(wave, rate, SR)
  out["tone_8k"] = audio.resample(tone(440, 8000, 1.3), 8000, SR)
  out["tone_22k"] = audio.resample(tone(1000, 22050, 0.7) + tone(3000, 22050, 0.7), 22050, SR)
  out["tone_44k"] = audio.resample(tone(6000, 44100, 2.1), 44100, SR)
  return out


@pytest.mark.skipif(not HAVE_ESPEAK, reason="pip install espeakng-loader: real speech for the parity tests")
def test_real_speech_is_part_of_the_parity_set(clips):
  speech = clips["speech_en"]
  assert 2.0 < len(speech) / SR < 4.0 and 0.1 < np.abs(speech).max() <= 1.0
  assert {"speech_en", "speech_en2"} <= set(clips)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_whisper_features_match_transformers(clips, n_mels):
  from transformers import WhisperFeatureExtractor

  wavs = list(clips.values())
  hf = WhisperFeatureExtractor(feature_size=n_mels)
  ref = hf(wavs, sampling_rate=SR, return_attention_mask=True, return_tensors="np")
  feats, mask = audio.whisper_features(wavs, audio.WhisperFeatureConfig(feature_size=n_mels))
  want = ref["input_features"].transpose(0, 2, 1)  # HF [B, n_mels, T] -> ours [B, T, n_mels]
  assert feats.shape == (len(wavs), 3000, n_mels) and feats.dtype == np.float32
  np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))
  err, max_err = rel_rms(feats, want), float(np.abs(feats - want).max())
  print(f"whisper log-mel {n_mels} bins vs HF torch path: rel-RMS {err:.2e}, max |diff| {max_err:.2e}")
  assert err < 1e-5 and max_err < 5e-4, (err, max_err)
  # HF's numpy (float64) STFT path, the one used without torch: agreement to float32 rounding.
  padded = np.stack([np.pad(w, (0, 480000 - len(w))) for w in wavs])
  want64 = hf._np_extract_fbank_features(padded, "cpu").transpose(0, 2, 1)
  err64 = float(np.abs(feats - want64).max())
  print(f"whisper log-mel {n_mels} bins vs HF numpy path: max |diff| {err64:.2e}")
  assert err64 < 1e-5, err64
  np.testing.assert_allclose(audio.mel_filter_bank(n_mels), hf.mel_filters, rtol=0, atol=1e-12)


def test_whisper_real_length_features_equal_the_30s_ones(clips):
  wavs = list(clips.values())
  full, full_mask = audio.whisper_features(wavs)
  short, mask = audio.whisper_features(wavs, pad_to_chunk=False)
  longest = max(len(w) for w in wavs)
  assert short.shape[1] == -(-(longest + 200) // 160) < 3000
  np.testing.assert_array_equal(mask, full_mask[:, :short.shape[1]])
  for b in range(len(wavs)):
    np.testing.assert_array_equal(short[b][mask[b]], full[b][:short.shape[1]][mask[b]])
  assert list(mask.sum(1)) == [-(-len(w) // 160) for w in wavs]


@pytest.mark.parametrize("do_normalize", [True, False])
def test_wav2vec2_inputs_match_transformers(clips, do_normalize):
  from transformers import Wav2Vec2FeatureExtractor

  wavs = list(clips.values())
  hf = Wav2Vec2FeatureExtractor(do_normalize=do_normalize, return_attention_mask=True)
  ref = hf(wavs, sampling_rate=SR, padding=True, return_attention_mask=True, return_tensors="np")
  values, mask = audio.wav2vec2_inputs(wavs, audio.Wav2Vec2FeatureConfig(do_normalize=do_normalize))
  np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))
  max_err = float(np.abs(values - ref["input_values"]).max())
  print(f"wav2vec2 inputs (do_normalize={do_normalize}) vs HF: max |diff| {max_err:.2e}")
  assert max_err < 1e-5, max_err


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampled_tones_match_analytic_tones(rate):
  for freq in (440.0, 3000.0, 7000.0, 7500.0):
    if freq >= rate / 2:
      continue
    y = audio.resample(tone(freq, rate, 1.0, amp=1.0), rate, SR)
    assert y.shape == (SR,) and y.dtype == np.float32
    want = np.sin(2 * np.pi * freq * np.arange(SR) / SR)
    inner = slice(1600, -1600)  # the filter's edge transients (it sees zeros outside the clip)
    err = rel_rms(y[inner], want[inner])
    assert err < 1e-5, (rate, freq, err)
  if rate > 2 * 9000:  # a 9 kHz tone cannot exist at 16 kHz: it must be filtered, not aliased to 7 kHz
    y = audio.resample(tone(9000.0, rate, 1.0, amp=1.0), rate, SR)
    leak = float(np.sqrt(np.mean(y[1600:-1600] ** 2)) / np.sqrt(0.5))
    assert leak < 1e-5, (rate, leak)


def test_read_audio_decodes_mixes_down_and_resamples(tmp_path):
  import soundfile as sf

  left, right = tone(440, 44100, 0.5), tone(880, 44100, 0.5)
  stereo = np.stack([left, right], axis=1)
  wav, flac = tmp_path / "stereo.wav", tmp_path / "stereo.flac"
  sf.write(wav, stereo, 44100, subtype="FLOAT")
  sf.write(flac, stereo, 44100, subtype="PCM_24")
  want = audio.resample((left + right) / 2, 44100, SR)
  got = audio.read_audio(wav)
  assert got.shape == (8000,) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(audio.read_audio(flac), want, atol=1e-5)  # 24-bit quantisation
  native = tmp_path / "native.wav"
  sf.write(native, left, SR)
  np.testing.assert_allclose(audio.read_audio(native), left, atol=1e-4)  # PCM_16, no resampling


def test_bad_audio_raises_clear_errors(tmp_path):
  import soundfile as sf

  garbage = tmp_path / "garbage.wav"
  garbage.write_bytes(b"RIFF not really a wave file" * 10)
  with pytest.raises(audio.AudioError, match="garbage.wav: cannot decode audio"):
    audio.read_audio(garbage)
  with pytest.raises(audio.AudioError, match="missing.flac: no such audio file"):
    audio.read_audio(tmp_path / "missing.flac")
  empty = tmp_path / "empty.wav"
  sf.write(empty, np.zeros((0,), np.float32), SR)
  with pytest.raises(audio.AudioError, match="empty.wav: the audio file is empty"):
    audio.read_audio(empty)
  nan_file = tmp_path / "nan.wav"
  sf.write(nan_file, np.array([0.0, np.nan, 0.5], np.float32), SR, subtype="FLOAT")
  with pytest.raises(audio.AudioError, match="nan.wav: sample 1 is nan"):
    audio.read_audio(nan_file)
  long_file = tmp_path / "long.wav"
  sf.write(long_file, np.zeros(3 * 8000, np.float32), 8000)
  with pytest.raises(audio.AudioError, match="long.wav: 3.00 s long; at most 2 s"):
    audio.read_audio(long_file, max_seconds=2)

  for bad_rate in (0, -16000, 22050.5, "44k"):
    with pytest.raises(audio.AudioError, match="not a positive whole number"):
      audio.resample(np.zeros(100), bad_rate, SR, name="clip.wav")
  with pytest.raises(audio.AudioError, match=r"clip.wav: cannot resample 16001 Hz -> 16000 Hz"):
    audio.resample(np.zeros(100), 16001, SR, name="clip.wav")

  with pytest.raises(audio.AudioError, match="audio sample 1: sample 2 is inf"):
    audio.whisper_features([np.zeros(400), np.array([0, 0, np.inf, 0])])
  with pytest.raises(audio.AudioError, match="a.wav: the audio is empty"):
    audio.wav2vec2_inputs([np.zeros(0)], names=["a.wav"])
  with pytest.raises(audio.AudioError, match="wrap it in a list"):
    audio.whisper_features(np.zeros(1000, np.float32))
  too_long = np.zeros(31 * SR, np.float32)
  with pytest.raises(audio.AudioError, match=r"audio sample 0: 31.00 s long .* at most 30 s"):
    audio.whisper_features([too_long])
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    feats, mask = audio.whisper_features([too_long], too_long="truncate")
  assert feats.shape == (1, 3000, 80) and mask.all() and "keeping the first 30 s" in str(caught[0].message)
  with pytest.raises(audio.AudioError, match="at most 1 s"):
    audio.wav2vec2_inputs([np.zeros(SR + 1)], max_seconds=1)


def test_feature_configs_from_preprocessor_config(tmp_path):
  from transformers import Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

  WhisperFeatureExtractor(feature_size=128).save_pretrained(tmp_path / "whisper")
  config = audio.WhisperFeatureConfig.from_preprocessor_config(tmp_path / "whisper")
  assert config == audio.WhisperFeatureConfig(feature_size=128) and config.n_frames == 3000
  Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=True).save_pretrained(tmp_path / "wavlm")
  config = audio.Wav2Vec2FeatureConfig.from_preprocessor_config(tmp_path / "wavlm")
  assert config == audio.Wav2Vec2FeatureConfig(do_normalize=False, return_attention_mask=True)
  with pytest.raises(ValueError, match="feature_extractor_type is 'Wav2Vec2FeatureExtractor'; expected 'Whisper"):
    audio.WhisperFeatureConfig.from_preprocessor_config(tmp_path / "wavlm")
