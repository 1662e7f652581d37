"""Modality encoders (vision, audio, time series) with local Hugging Face snapshot loading.

Every encoder module (siglip, clip, whisper, wavlm, timeseries) has the same surface, so a caller
(modrwkv.py, a data pipeline) needs no per-encoder branches:

    init_params(config, key) -> params                         random, jitted
    param_logical_axes(config) -> PartitionSpec tree           names from modrwkv_jax.sharding
    encode(config, params, x, mask=None, **options)            -> (features float[N, L, C], mask bool[N, L]),
                                                                  real tokens first in each row
    num_tokens(config, n, **options) -> int                    tokens of one item with n real input steps
    check_inputs(config, x, mask=None, **options)              value checks on numpy inputs, at the boundary
    load_hf(path, *, param_dtype=..., mesh=None, ...)          (not timeseries) -> (config, params)

`options` are the encoder's keyword options (CLIP layer / drop_cls, Whisper mode, WavLM exact_padding,
SigLIP2 NaFlex spatial_shapes, time-series stats / normalize). Configs with a transformer stack
(SigLIP, CLIP, Whisper, WavLM, Timer) also take `scan_layers` and `remat` (transformer.py).
"""
