"""The trainer: configs, parameter groups, optimizer, step, checkpoints, loop (`python train.py`)."""
