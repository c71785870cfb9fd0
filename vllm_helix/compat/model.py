# SPDX-License-Identifier: Apache-2.0
"""The seams of model surgery (`vllm_helix.model_surgery`) in vLLM 0.32's model layers.

- `tensor_parallel_view`: swaps `vllm.distributed.parallel_state._TP` for the TPA group while a
  `QKVParallelLinear` is built, so vLLM's TP getters size it for TP = TPA, rank t (restored after the block).
- `HelixAttention` / `rehead_attention`: an existing `vllm.model_executor.layers.attention.Attention` gets its
  `__class__` swapped (its registration in the static forward context, KV spec and impl stay) for a subclass
  whose output holds H/N heads while it attends with H/TPA; its forward is vLLM 0.32's `Attention.forward`
  path with a different output shape: `unified_kv_cache_update` + `unified_attention_with_output` (direct
  call) or the `torch.ops.vllm.*` ops with `_encode_layer_name` (compiled).
- `constructible_kv_heads`: shows the constructor N KV heads (`hf_text_config.num_key_value_heads`) when the
  model's K and N divide neither way, which vLLM's attention blocks assert; `reshard_attention` rebuilds the
  only K-dependent parts from the true K before weights load.

Guard: used only by the Helix model subclasses, which only the Helix worker registers.
"""

from __future__ import annotations

import contextlib

import torch
from vllm.distributed import parallel_state
from vllm.model_executor.layers.attention import Attention

__all__ = ["tensor_parallel_view", "HelixAttention", "rehead_attention", "constructible_kv_heads"]


@contextlib.contextmanager
def tensor_parallel_view(coordinator):
    """Make vLLM's TP getters report `coordinator` (the TPA group) while a layer is constructed."""
    saved = parallel_state._TP
    parallel_state._TP = coordinator
    try:
        yield
    finally:
        parallel_state._TP = saved


class HelixAttention(Attention):
    """`Attention` whose output holds H/N heads (after the exchange) while it attends with H/TPA heads."""

    helix_out_heads: int

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        output_shape: torch.Size | None = None,
        output_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        num_tokens = query.shape[0]
        output = torch.empty(
            num_tokens,
            self.helix_out_heads,
            self.head_size_v,
            dtype=output_dtype or query.dtype,
            device=query.device,
        )  # (tokens, H/N, D)
        query = query.view(-1, self.num_heads, self.head_size)  # (tokens, H/TPA, D)
        key = key.view(-1, self.num_kv_heads, self.head_size)  # (tokens, K/TPA, D)
        value = value.view(-1, self.num_kv_heads, self.head_size_v)
        if self.use_direct_call:
            from vllm.model_executor.layers.attention.attention import (
                unified_attention_with_output,
                unified_kv_cache_update,
            )

            dep = unified_kv_cache_update(key, value, self.layer_name)
            unified_attention_with_output(query, key, value, output, self.layer_name, kv_cache_dummy_dep=dep)
        else:
            from vllm.model_executor.layers.attention.attention import _encode_layer_name

            encoded = _encode_layer_name(self.layer_name)
            dep = torch.ops.vllm.unified_kv_cache_update(key, value, encoded)
            torch.ops.vllm.unified_attention_with_output(
                query, key, value, output, encoded, kv_cache_dummy_dep=dep
            )
        return output.view(num_tokens, -1)


def rehead_attention(attn: Attention, num_heads: int, num_kv_heads: int, out_heads: int) -> None:
    """Turn `attn` (and its impl) into a `HelixAttention` with `num_heads` / `num_kv_heads` attention heads
    and `out_heads` output heads, in place."""
    attn.__class__ = HelixAttention
    attn.num_heads, attn.num_kv_heads = num_heads, num_kv_heads
    attn.helix_out_heads = out_heads
    attn.impl.num_heads, attn.impl.num_kv_heads = num_heads, num_kv_heads


@contextlib.contextmanager
def constructible_kv_heads(vllm_config):
    """Let the stock model be built at TP = N when its K KV heads and N divide neither way (e.g. K = 3, N = 2:
    vLLM's attention blocks assert K % N == 0 or N % K == 0). Only the attention blocks' `qkv_proj` and `attn`
    depend on K, and `reshard_attention` rebuilds both from the true K right after construction, before any
    weight is loaded; so the constructor is shown N KV heads (`hf_config.num_key_value_heads`) meanwhile."""
    config = vllm_config.model_config.hf_text_config
    k, n = getattr(config, "num_key_value_heads", None), vllm_config.parallel_config.tensor_parallel_size
    if not k or k % n == 0 or n % k == 0:
        yield
        return
    config.num_key_value_heads = n
    try:
        yield
    finally:
        config.num_key_value_heads = k
