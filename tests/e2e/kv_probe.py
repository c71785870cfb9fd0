# SPDX-License-Identifier: Apache-2.0
"""Worker functions (shipped through `collective_rpc`) that read a rank's KV cache *tensors*, independent of
the Helix counters that `helix_status` reports.

vLLM 0.32 allocates every layer's KV cache as a view of one zero-filled int8 backing buffer per rank
(`vllm.v1.worker.utils.allocate_kv_cache`: `torch.zeros(buf_size, dtype=torch.int8)`) and binds the per-layer
views, in layer order, to `GPUModelRunner.kv_caches` (`bind_kv_cache`; the CPU model runner inherits both). A
slot nobody wrote therefore reads as zero; a written K or V row of a random-weight model is non-zero.

The Helix backend stores a layer's (blocks, kv_heads, block_size, 2·D) buffer token-major, all keys then all
values (`vllm_helix.attention.backend.split_kv_cache`), so local slot s of layer l is

    key   = kv.view(2, blocks · block_size, kv_heads · D)[0, s]
    value = kv.view(2, blocks · block_size, kv_heads · D)[1, s]

and a slot is *written* when its key or value row has a non-zero element. The layout-free count — non-zero
bytes of the whole buffer — needs no layout at all and bounds the same quantity from the other side.
"""

from __future__ import annotations


def _layer_caches(worker) -> list:
    """The rank's per-layer KV cache tensors (vLLM 0.32 `GPUModelRunner.kv_caches`, filled by
    `bind_kv_cache`)."""
    caches = list(worker.model_runner.kv_caches)
    if not caches:
        raise RuntimeError("no KV cache tensors bound on this worker")
    return caches


def zero_kv_caches(worker) -> int:
    """Zero every KV cache tensor of the rank (between generate calls, no request running). Returns the
    bytes."""
    import torch

    total = 0
    with torch.inference_mode():
        for kv in _layer_caches(worker):
            kv.zero_()
            total += kv.numel() * kv.element_size()
    return total


def measure_kv_caches(worker) -> dict:
    """What the rank's KV cache tensors hold now.

    Returns rank, the per-layer shape and element size, the allocated bytes (unique backing storages and the
    sum of the layer views), `written_slots` (local slots with a non-zero K or V row, read token-major as the
    Helix backend stores them; identical for every layer or `same_slots_all_layers` is False), `written_bytes`
    (written slots × the bytes of one slot's K and V, summed over layers) and `nonzero_bytes` (non-zero
    elements × element size over all layers, layout-free)."""
    import torch

    caches = _layer_caches(worker)
    storages: dict[int, int] = {}
    slot_sets = []
    layer_bytes = written_bytes = nonzero_bytes = 0
    for kv in caches:
        storage = kv.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        num_blocks, kv_heads, block_size, two_d = kv.shape
        elem = kv.element_size()
        layer_bytes += kv.numel() * elem
        rows = kv.contiguous().view(2, num_blocks * block_size, kv_heads * two_d // 2)  # (K|V, slots, K_r·D)
        written = (rows != 0).any(dim=2).any(dim=0)  # (slots,)
        slot_sets.append(written)
        written_bytes += int(written.sum()) * kv_heads * two_d * elem
        nonzero_bytes += int(torch.count_nonzero(rows)) * elem
    first = slot_sets[0]
    return {
        "rank": int(worker.rank),
        "layers": len(caches),
        "kv_shape": list(caches[0].shape),
        "dtype_bytes": caches[0].element_size(),
        "allocated_bytes": sum(storages.values()),
        "layer_bytes": layer_bytes,
        "written_slots": int(first.sum()),
        "same_slots_all_layers": all(bool(torch.equal(s, first)) for s in slot_sets),
        "written_bytes": written_bytes,
        "nonzero_bytes": nonzero_bytes,
    }
