"""Parameter-efficient fine-tuning for RWKV-7: Bone and Bat (bone.py), LoRA and PiSSA (lora.py), and
the param-tree surface that adds, trains, merges and saves them in the unrolled and the scanned
layer layout (adapters.py). docs/architecture.md#parameter-efficient-fine-tuning."""

from modrwkv_jax.peft.adapters import (ADAPTER_LEAVES, RWKV7_TARGETS, TRAINABLE_LEAVES, PeftConfig, adapter_leaves,
                                       add_adapters, combine, count_params, layer_path, linear, load_adapters,
                                       logical_axes, merge_all, merged_kernel, partition, save_adapters, target_paths,
                                       trainable_mask)
from modrwkv_jax.peft.bone import bat_apply, bat_merge, bat_unmerge, bone_apply, bone_merge, bone_unmerge
from modrwkv_jax.peft.lora import lora_apply, lora_merge, lora_unmerge, pissa_init

__all__ = [
    "ADAPTER_LEAVES", "RWKV7_TARGETS", "TRAINABLE_LEAVES", "PeftConfig", "adapter_leaves", "add_adapters",
    "bat_apply", "bat_merge", "bat_unmerge", "bone_apply", "bone_merge", "bone_unmerge", "combine", "count_params",
    "layer_path", "linear", "load_adapters", "logical_axes", "lora_apply", "lora_merge", "lora_unmerge",
    "merge_all", "merged_kernel", "partition", "pissa_init", "save_adapters", "target_paths", "trainable_mask",
]
