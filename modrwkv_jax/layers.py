"""The layers every model of the library is built from: one home for Dense, LayerNorm and Conv1d.

    matmul     x @ w in the compute dtype, float32 accumulation (modrwkv_jax.ops.matmul)
    Dense      y = x @ kernel (+ bias); adapter-aware: Bone / Bat / LoRA leaves next to the kernel
               (modrwkv_jax.peft.add_adapters) make it the adapted projection
    layer_norm the LayerNorm factory (float32 statistics, exact variance, logical axis names)
    Conv1d     torch.nn.Conv1d on channels-last arrays, and its op `conv1d`
    rematerialise / check_stack_options   the `scan_layers` / `remat` options every layer stack shares

Kernels are Flax layout: Dense [in, out] = the torch Linear weight transposed, Conv1d [K, in/groups,
out] = the torch weight [out, in/groups, K] transposed (2, 1, 0). Every parameter carries logical
axis names from the vocabulary of `modrwkv_jax.sharding`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from modrwkv_jax.ops.matmul import matmul
from modrwkv_jax.peft import adapters as peft_adapters

__all__ = ["REMAT_CHOICES", "Conv1d", "Dense", "check_stack_options", "conv1d", "layer_norm", "matmul",
           "rematerialise"]


class Dense(nn.Module):
  """y = x @ kernel (+ bias), float32 accumulation; kernel float[in, out] is the torch weight transposed.

  x: float[..., in] -> float[..., out] in `out_dtype` (default `dtype`).
  axes: logical names of (in, out); the bias is named by `axes[1]`.
  When the params hold adapter leaves next to the kernel ("bone", "bat", "lora_a"/"lora_b"/
  "lora_scale", see modrwkv_jax.peft), the projection is the adapted one (peft.linear).
  """
  features: int
  axes: tuple[str, str]
  use_bias: bool = False
  dtype: Any = jnp.float32
  out_dtype: Any = None
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.axes),
                        (x.shape[-1], self.features))
    adapter = {n: nn.meta.unbox(self.get_variable("params", n))
               for n in peft_adapters.ADAPTER_LEAVES if self.has_variable("params", n)}
    y = peft_adapters.linear(x, kernel, adapter, self.dtype) if adapter else matmul(x, kernel, self.dtype)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]), (self.features,))
      y = y + bias.astype(jnp.float32)
    return y.astype(self.out_dtype or self.dtype)


def layer_norm(name: str, eps: float, dtype=jnp.float32, axes: tuple[str] = ("embed",),
               scale_init: Callable = nn.initializers.ones) -> nn.LayerNorm:
  """LayerNorm over the last axis: float32 statistics (flax upcasts bf16), exact two-pass variance;
  params scale, bias [C] named `axes`."""
  return nn.LayerNorm(epsilon=eps, dtype=dtype, use_fast_variance=False, name=name,
                      scale_init=nn.with_logical_partitioning(scale_init, axes),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes))


class Conv1d(nn.Module):
  """torch.nn.Conv1d on channels-last input: float[B, T, C_in] -> float[B, T_out, features].

  kernel float[K, C_in / groups, features] is the torch weight [out, in/groups, K] transposed;
  T_out = (T + pad_left + pad_right − dilation·(K − 1) − 1) // stride + 1. `padding` is (left, right)
  or one int for both (a causal conv pads (K−1)·dilation on the left).
  axes: logical names of (input channels, output channels); the two must differ.
  """
  features: int
  kernel_size: int
  axes: tuple[str | None, str | None]
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
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, ("conv_window",) + tuple(self.axes)),
                        (self.kernel_size, c_in // self.groups, self.features))
    bias = None
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.axes[1:])),
                        (self.features,))
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


# `jax.checkpoint_policies` attributes that are policies themselves (the others are factories that
# need arguments, e.g. save_only_these_names(...)).
REMAT_POLICIES = tuple(p for p in ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                                   "checkpoint_dots", "checkpoint_dots_with_no_batch_dims", "everything_saveable")
                       if hasattr(jax.checkpoint_policies, p))
REMAT_CHOICES = ("none", "block") + REMAT_POLICIES


def check_stack_options(where: str, scan_layers, remat) -> None:
  """Config validation of `scan_layers` / `remat` (called from each config's __post_init__)."""
  if not isinstance(scan_layers, bool):
    raise ValueError(f"{where}.scan_layers must be True or False, got {scan_layers!r}")
  if remat not in REMAT_CHOICES:
    raise ValueError(f"{where}.remat={remat!r}; choose 'none', 'block' (recompute the whole layer in the backward "
                     f"pass) or a jax.checkpoint_policies name: {list(REMAT_POLICIES)}")


def rematerialise(module_cls, remat: str, scanned: bool):
  """`module_cls` wrapped by `nn.remat` per `remat`: "none" (as is), "block" (only the layer's inputs
  are saved; everything inside is recomputed in the backward pass) or a `jax.checkpoint_policies` name.
  prevent_cse is needed only outside a scan (scan already keeps XLA from merging the recomputation)."""
  if remat == "none":
    return module_cls
  policy = None if remat == "block" else getattr(jax.checkpoint_policies, remat)
  return nn.remat(module_cls, policy=policy, prevent_cse=not scanned)
