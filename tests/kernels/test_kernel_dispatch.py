# SPDX-License-Identifier: Apache-2.0
"""Backend selection: Triton launchers on CUDA (platform check monkeypatched, no GPU), native ops (or torch)
on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from vllm_helix.kernels import dispatch


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def test_select_impl_modes(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(dispatch, "_native_unavailable", lambda: None)
    assert dispatch.select_impl(cpu) == "native"
    assert dispatch.select_impl(cpu, force="native") == "native"
    monkeypatch.setattr(dispatch, "_native_unavailable", lambda: "no compiler")
    assert dispatch.select_impl(cpu) == "torch"  # auto degrades when the native ops cannot build
    with pytest.raises(RuntimeError, match="no compiler"):
        dispatch.select_impl(cpu, force="native")
    assert dispatch.select_impl(cpu, force="torch") == "torch"
    monkeypatch.setattr(dispatch, "_is_cuda", lambda device: True)
    assert dispatch.select_impl(cpu) == "triton"
    assert dispatch.select_impl(cpu, force="torch") == "torch"
    with pytest.raises(RuntimeError, match="CPU ops"):
        dispatch.select_impl(cpu, force="native")
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert dispatch.select_impl(cpu) == "torch"
    assert dispatch.select_impl(cpu, force="auto") == "triton"  # force wins over the environment
    monkeypatch.setenv(dispatch.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="VLLM_HELIX_KERNELS='bogus'"):
        dispatch.select_impl(cpu)
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    assert dispatch.select_impl(cpu, force="auto") == "torch"  # auto degrades without Triton
    with pytest.raises(RuntimeError, match="not importable"):
        dispatch.select_impl(cpu, force="triton")


def test_select_impl_real_platform_check():
    assert dispatch._is_cuda(torch.device("cpu")) is False
    assert dispatch._is_cuda("cuda:0") is True  # no device needed to parse


def _spy(monkeypatch, module, name):
    """Wrap module.name so calls are recorded and still run (interpreter mode on CPU tensors)."""
    calls = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _decode_inputs():
    key_cache, value_cache = torch.randn(4, 16, 2, 64), torch.randn(4, 16, 2, 64)
    table, lens = torch.tensor([[2, 0], [1, 3]], dtype=torch.int32), torch.tensor([20, 0], dtype=torch.int32)
    return torch.randn(2, 4, 64), key_cache, value_cache, table, lens, 0.125


def _mla_inputs():
    kv = torch.randn(3, 16, 48)
    table, lens = torch.tensor([[1, 2], [0, 0]], dtype=torch.int32), torch.tensor([19, 4], dtype=torch.int32)
    return torch.randn(2, 2, 32), torch.randn(2, 2, 16), kv, table, lens, 0.15


@pytest.mark.parametrize("on_cuda", [True, False])
def test_ops_call_triton_launchers_on_cuda(monkeypatch, on_cuda):
    pytest.importorskip("triton")
    from vllm_helix.attention.torch_attention import decode_attention_reference
    from vllm_helix.kernels import triton_combine, triton_decode_attention, triton_mla_decode_attention

    monkeypatch.setattr(dispatch, "_is_cuda", lambda device: on_cuda)
    seen = {
        name: _spy(monkeypatch, module, name)
        for module, name in (
            (triton_decode_attention, "partial_decode_attention"),
            (triton_combine, "combine"),
            (triton_mla_decode_attention, "mla_partial_decode_attention"),
        )
    }
    decode_args, mla_args = _decode_inputs(), _mla_inputs()

    out, lse = dispatch.decode_attention(*decode_args, num_splits=2)
    combined, combined_lse = dispatch.combine(torch.stack([out, out]), torch.stack([lse, lse]))
    mla_out, mla_lse = dispatch.mla_decode_attention(*mla_args)

    expected = 1 if on_cuda else 0
    assert {name: len(c) for name, c in seen.items()} == dict.fromkeys(seen, expected)
    ref_out, ref_lse = decode_attention_reference(*decode_args)
    mla_ref_out, mla_ref_lse = triton_mla_decode_attention.mla_partial_decode_attention_reference(*mla_args)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=0)
    torch.testing.assert_close(combined, out, atol=1e-5, rtol=0)  # two identical shards: same output
    torch.testing.assert_close(combined_lse[1], lse[1])  # an empty sequence stays -inf
    torch.testing.assert_close(mla_out, mla_ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(mla_lse, mla_ref_lse, atol=1e-5, rtol=0)


def test_torch_path_without_triton():
    """With triton unimportable and the native ops off, `vllm_helix.kernels` imports and every op runs its
    torch reference."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch
        from vllm_helix.kernels import dispatch, triton_available
        assert not triton_available()
        assert dispatch.select_impl(torch.device("cpu")) == "torch"
        kc, vc = torch.randn(2, 16, 1, 64), torch.randn(2, 16, 1, 64)
        t, n = torch.tensor([[1, 0]], dtype=torch.int32), torch.tensor([20], dtype=torch.int32)
        o, l = dispatch.decode_attention(torch.randn(1, 2, 64), kc, vc, t, n, 0.125)
        o, l = dispatch.combine(torch.stack([o, o]), torch.stack([l, l]))
        qn, qp, kv = torch.randn(1, 2, 32), torch.randn(1, 2, 16), torch.randn(2, 16, 48)
        o, l = dispatch.mla_decode_attention(qn, qp, kv, t, n, 0.1)
        assert o.shape == (1, 2, 32) and torch.isfinite(l).all()
        print("ok")
        """
    )
    env = {**os.environ, "VLLM_HELIX_NATIVE": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
