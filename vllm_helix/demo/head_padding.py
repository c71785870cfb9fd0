# SPDX-License-Identifier: Apache-2.0
"""The demo checkpoint with more query heads and the same function (`vllm-helix demo-model --heads 12`).

SmolLM2 has H = 9 query heads in K = 3 GQA groups of g = 3. Padding to H' heads appends g' − g = H'/K − g
zero heads to each group: their q_proj rows and o_proj columns are zero. A padded head still attends (its zero
query gives uniform weights) and yields some output o_pad, but o_proj multiplies o_pad by zero columns, so
every layer's output — and every token — is unchanged. 9 heads admit Helix grids of 3 or 9 ranks only; 12 also
admit 2 ranks (KVP 2 × TPA 1 with 3 KV heads, a grid vLLM's own DCP refuses), one rank per core on 2 cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HEADS = (9, 12)  # the checkpoint's own query heads, or padded to 12 by zero heads (pad_query_heads)


def heads_for(ranks: int) -> int:
    """The demo checkpoint's query heads for a grid of `ranks` (N = KVP × TPA): 9 if N divides 9, else 12."""
    for heads in HEADS:
        if heads % ranks == 0:
            return heads
    raise ValueError(
        f"-tp {ranks}: SmolLM2's 9 query heads (or 12, padded) do not divide by {ranks}; "
        "use -tp 2, 3, 4, 6, 9 or 12"
    )


def pad_query_heads(state: dict, config: dict, heads: int) -> tuple[dict, dict]:
    """The same model with `heads` query heads: each GQA group of g = H/K heads gets heads/K − g zero heads
    appended, their q_proj rows and o_proj columns zero. A zero q gives that head some attention output o_pad,
    and o_proj multiplies it by zero columns: the layer output is unchanged, exactly. → (state, config)."""
    import torch

    h, k, d = (
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
    )
    if heads % k or heads < h or (heads // k) < h // k:
        raise ValueError(f"cannot pad {h} heads / {k} KV heads to {heads}")
    g, g_new = h // k, heads // k
    keep = torch.tensor([grp * g_new + i for grp in range(k) for i in range(g)])  # new index of each old head
    out = dict(state)
    for name, w in state.items():
        if name.endswith("self_attn.q_proj.weight"):  # (H·D, hidden) → (heads·D, hidden)
            new = w.new_zeros(heads, d, w.shape[1])
            new[keep] = w.view(h, d, -1)
            out[name] = new.reshape(heads * d, -1)
        elif name.endswith("self_attn.o_proj.weight"):  # (hidden, H·D) → (hidden, heads·D)
            new = w.new_zeros(w.shape[0], heads, d)
            new[:, keep] = w.view(w.shape[0], h, d)
            out[name] = new.reshape(w.shape[0], -1)
        elif name.endswith("self_attn.q_proj.bias"):
            new = w.new_zeros(heads, d)
            new[keep] = w.view(h, d)
            out[name] = new.reshape(-1)
    return out, {**config, "num_attention_heads": heads, "head_dim": d}


def pad_checkpoint(src: Path, out: Path, heads: int, skip: tuple[str, ...] = ()) -> None:
    """Write the `heads`-head version of the checkpoint `src` into `out`; its other files (tokenizer, …) are
    copied, except those named in `skip`."""
    from safetensors.torch import load_file, save_file

    config = json.loads((src / "config.json").read_text())
    state, config = pad_query_heads(load_file(str(src / "model.safetensors")), config, heads)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in src.iterdir():
        if f.is_file() and f.name not in ("config.json", "model.safetensors", *skip):
            shutil.copy2(f, out / f.name)
    out.chmod(0o755)
    for f in out.iterdir():
        f.chmod(0o644)
