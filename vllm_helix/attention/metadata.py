# SPDX-License-Identifier: Apache-2.0
"""Per-step attention metadata of the Helix backend (vLLM 0.32 v1 `AttentionMetadataBuilder`).

vLLM's scheduler already works in virtual blocks of block_size × KVP under `-dcp KVP`, so the block table rows
a rank sees index its *local* blocks directly: local block b of KVP rank k holds the round-robin units b·KVP +
k. From the global sequence lengths this builder derives what each rank holds (`local_seq_lens`, see
`vllm_helix.sharding`) and every query token's global position (tokens of a request in one step are the last
`query_len` positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.attention.backends.cpu_attn import CPUAttentionMetadataBuilder

from vllm_helix.runtime import get_runtime
from vllm_helix.sharding import local_lengths_tensor


@dataclass
class HelixAttentionMetadata:
    num_actual_tokens: int
    num_reqs: int
    query_start_loc: torch.Tensor  # (num_reqs + 1,) int64, cpu
    local_seq_lens: torch.Tensor  # (num_reqs,) tokens this KVP rank holds
    query_positions: torch.Tensor  # (num_actual_tokens,) global position of each query token
    block_table: torch.Tensor  # (num_reqs, max_blocks) local block ids
    num_decode_reqs: int  # leading requests with query_len == 1 (decode; one token each)


def build_helix_metadata(
    cm: CommonAttentionMetadata, kvp: int, kvp_rank: int, interleave: int
) -> HelixAttentionMetadata:
    """Derive the Helix view of one step from vLLM's common metadata (pure tensor math)."""
    num_reqs, num_tokens = cm.num_reqs, cm.num_actual_tokens
    qsl = cm.query_start_loc_cpu[: num_reqs + 1].to(torch.int64)
    seq_lens = cm.seq_lens[:num_reqs].to("cpu", torch.int64)
    query_lens = qsl[1:] - qsl[:-1]  # (num_reqs,)
    req_of_token = torch.repeat_interleave(torch.arange(num_reqs), query_lens)  # (num_tokens,)
    first_pos = seq_lens - query_lens  # (num_reqs,)
    positions = first_pos[req_of_token] + (torch.arange(num_tokens) - qsl[:-1][req_of_token])
    decode_reqs = int((query_lens == 1).cumprod(0).sum())
    return HelixAttentionMetadata(
        num_actual_tokens=num_tokens,
        num_reqs=num_reqs,
        query_start_loc=qsl,
        local_seq_lens=local_lengths_tensor(seq_lens, interleave, kvp, kvp_rank),
        query_positions=positions,
        block_table=cm.block_table_tensor[:num_reqs],
        num_decode_reqs=decode_reqs,
    )


class HelixAttentionMetadataBuilder(CPUAttentionMetadataBuilder):
    """CPU builder's setup (ISA for the KV-write kernel), Helix metadata instead of the C++ scheduler's."""

    def build(
        self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata, fast_build: bool = False
    ) -> HelixAttentionMetadata:
        rt = get_runtime()
        return build_helix_metadata(
            common_attn_metadata,
            rt.grid.kvp,
            rt.kvp_rank,
            rt.interleave,
        )
