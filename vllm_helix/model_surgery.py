# SPDX-License-Identifier: Apache-2.0
"""Re-shard a stock vLLM model's attention for Helix: QKV and attention over TPA, out-projection over N.

Stock vLLM builds every attention block with TP = N: a `QKVParallelLinear` producing H/N query heads, an
`Attention` layer for them and a `RowParallelLinear` out-projection reading H/N heads. Helix keeps the
out-projection (and the FFN) at TP = N but runs attention on a KVP × TPA grid, so right after the model is
constructed — before weights are loaded — each attention block gets:

    qkv_proj : a `QKVParallelLinear` built for TP = TPA, rank t = r // KVP → H/TPA query heads, ⌈K/TPA⌉ KV
    heads
               (its weight loader then loads the TPA shard; the KVP peers of a shard load the same one)
    attn     : the same `Attention` layer, re-headed to H/TPA query and K/TPA KV heads, returning H/N heads
               (the Helix backend's exchange turns H/TPA partial heads into H/N exact ones)
    o_proj   : unchanged, TP = N

One mechanism for every model built from the usual `qkv_proj` + `attn` + `o_proj` pattern (Llama, Mistral,
Qwen2, Qwen3, …): `make_helix_model_class(cls)` returns a subclass whose `__init__` applies it, registered
under the model's architecture in the Helix worker process only. The vLLM seams it uses (the `_TP` view,
the `Attention` class swap, the constructor's KV-head count, the model registry) are `vllm_helix.compat.model`
and `vllm_helix.compat.registry`.
"""

from __future__ import annotations

from torch import nn
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear

from vllm_helix.compat.model import constructible_kv_heads, rehead_attention, tensor_parallel_view
from vllm_helix.compat.registry import load_model_class, register_model_class
from vllm_helix.config import MLA_ARCHITECTURES, SUPPORTED_ARCHITECTURES
from vllm_helix.grid import HelixConfigError
from vllm_helix.runtime import HelixRuntime, get_runtime

# MLA models need no re-sharding: vLLM's MLAAttention + DCP (q_b_proj replicated over the KVP group, latent KV
# sharded by DCP, LSE combine to H/N heads, kv_b_proj/o_proj at TP = N) is the Helix split once the backend
# returns an LSE — see vllm_helix.attention.mla.


def _attention_blocks(model: nn.Module):
    for name, module in model.named_modules():
        qkv, attn, o_proj = (getattr(module, a, None) for a in ("qkv_proj", "attn", "o_proj"))
        if (
            isinstance(qkv, QKVParallelLinear)
            and isinstance(attn, Attention)
            and isinstance(o_proj, RowParallelLinear)
        ):
            yield name, module


def reshard_attention(model: nn.Module, rt: HelixRuntime) -> int:
    """Apply the Helix re-sharding to every attention block of `model`. Returns how many blocks changed."""
    grid = rt.grid
    count = 0
    for name, block in _attention_blocks(model):
        old: QKVParallelLinear = block.qkv_proj
        if type(block.attn) is not Attention:
            raise HelixConfigError(
                f"{name}.attn is a {type(block.attn).__name__}; Helix supports plain Attention"
            )
        with tensor_parallel_view(
            rt.tpa_coordinator
        ):  # the model's true head counts (see constructible_kv_heads)
            new = QKVParallelLinear(
                old.hidden_size,
                old.head_size,
                grid.num_heads,
                grid.num_kv_heads,
                bias=old.bias is not None,
                params_dtype=old.params_dtype,
                quant_config=None,
                prefix=old.prefix,
                v_head_size=old.v_head_size,
            )
        assert new.num_heads == grid.heads_per_tpa_rank and new.num_kv_heads == grid.kv_heads_per_tpa_rank
        block.qkv_proj = new.to(old.weight.device)
        block.num_heads, block.num_kv_heads = new.num_heads, new.num_kv_heads
        block.q_size = new.num_heads * new.head_size
        block.kv_size = new.num_kv_heads * new.head_size
        rehead_attention(block.attn, new.num_heads, new.num_kv_heads, grid.heads_per_rank)
        count += 1
    return count


def make_helix_model_class(base: type[nn.Module]) -> type[nn.Module]:
    """A subclass of `base` whose constructor re-shards attention for Helix (see module docstring)."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        with constructible_kv_heads(vllm_config):
            base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        if reshard_attention(self, get_runtime()) == 0:
            raise HelixConfigError(
                f"{base.__name__} has no qkv_proj/attn/o_proj attention block Helix can shard"
            )

    return type(f"Helix{base.__name__}", (base,), {"__init__": __init__, "__module__": __name__})


def register_helix_models(architectures: list[str]) -> None:
    """Register Helix subclasses for `architectures` in this process's vLLM model registry."""
    for arch in architectures:
        if arch in MLA_ARCHITECTURES:
            continue
        if arch not in SUPPORTED_ARCHITECTURES:
            raise HelixConfigError(
                f"architecture {arch} is not supported by Helix yet; supported: "
                f"{', '.join(SUPPORTED_ARCHITECTURES + MLA_ARCHITECTURES)}"
            )
        base = load_model_class(arch)
        if base is None:
            raise HelixConfigError(f"vLLM cannot load the model class for {arch}")
        if not base.__name__.startswith("Helix"):
            register_model_class(arch, make_helix_model_class(base))
