"""Modality encoders (vision, audio, time series) with local Hugging Face snapshot loading."""
