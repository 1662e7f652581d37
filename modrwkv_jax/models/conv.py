"""Conv1d with torch semantics on channels-last arrays, shared by the audio / series encoders and the projector.

torch.nn.Conv1d(C_in, C_out, K, stride, padding, dilation, groups) on x float[B, C_in, T] equals
`conv1d(x_channels_last, kernel)` with kernel float[K, C_in/groups, C_out] = torch weight [out, in/groups, K]
transposed (2, 1, 0); T_out = (T + pad_left + pad_right − dilation·(K − 1) − 1) // stride + 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class Conv1d(nn.Module):
  """torch.nn.Conv1d on channels-last input: float[B, T, C_in] -> float[B, T_out, features].

  kernel float[K, C_in / groups, features] is the torch weight [out, in/groups, K] transposed;
  T_out = (T + 2·padding − K) // stride + 1. Shared by the audio and time-series encoders.
  `padding` is (left, right) or one int for both (a causal conv pads (K−1)·dilation on the left).
  """
  features: int
  kernel_size: int
  axes: tuple[str | None, str | None]  # logical names of (input channels, output channels)
  stride: int = 1
  padding: int | tuple[int, int] = 0
  dilation: int = 1
  groups: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    c_in = x.shape[-1]
    if c_in % self.groups or self.features % self.groups:
      raise ValueError(f"{self.name}: channels {c_in} -> {self.features} not divisible by groups={self.groups}")
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, ("conv_window",) + self.axes),
                        (self.kernel_size, c_in // self.groups, self.features))
    bias = None
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]), (self.features,))
    return conv1d(x, kernel, bias, stride=self.stride, padding=self.padding, dilation=self.dilation,
                  groups=self.groups, dtype=self.dtype)


def conv1d(x, kernel, bias=None, *, stride=1, padding=0, dilation=1, groups=1, dtype=jnp.float32):
  """The Conv1d op: x float[B, T, C_in], kernel float[K, C_in/groups, C_out] -> float[B, T_out, C_out]."""
  pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
  y = jax.lax.conv_general_dilated(
      x.astype(dtype), kernel.astype(dtype), window_strides=(stride,), padding=[pad], rhs_dilation=(dilation,),
      dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups, preferred_element_type=jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y.astype(dtype)
