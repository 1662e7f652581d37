"""Data: modality preprocessing (image, audio, series), sources, transforms and Grain pipelines."""
