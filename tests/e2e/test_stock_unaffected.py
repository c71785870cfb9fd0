# SPDX-License-Identifier: Apache-2.0
"""With vllm-helix installed, stock vLLM (no `--worker-cls vllm_helix.Worker`) behaves exactly as without it."""

import pytest

from tests.e2e.conftest import llm_args, prompt_ids
from tests.e2e.engine import run_engine

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def test_stock_run_is_identical_with_and_without_the_plugin(tiny_models):
    prompts = prompt_ids(5, [7, 45, 130])
    spec = {"llm": llm_args(tiny_models["gqa2"]), "prompts": prompts, "max_tokens": 24, "impl_classes": True}
    rpc = {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}  # lets collective_rpc ship the inspection function
    with_plugin = run_engine(spec, env_extra=rpc)
    without_plugin = run_engine(spec, env_extra={**rpc, "VLLM_PLUGINS": "none-such"})  # no general plugin loads
    assert with_plugin["tokens"] == without_plugin["tokens"]
    assert with_plugin["impl_classes"] == without_plugin["impl_classes"] == [
        ["vllm.v1.attention.backends.cpu_attn.CPUAttentionBackendImpl"]]


def test_stock_dcp_limit_is_still_enforced_without_the_helix_worker(tiny_models):
    """vLLM's own DCP checks (TP > KV heads, DCP ≤ TP / KV heads) still refuse what only Helix can run."""
    with pytest.raises(AssertionError, match="Decode context parallelism for GQA/MQA requires"):
        run_engine({"llm": llm_args(tiny_models["gqa2"], tp=2, dcp=2), "prompts": [[1, 2, 3]]}, timeout=120)


def test_register_is_idempotent_and_leaves_non_helix_configs_alone():
    from vllm.config.model import ModelConfig

    from vllm_helix import plugin

    plugin.register()
    first = ModelConfig.verify_with_parallel_config
    plugin.register()
    assert ModelConfig.verify_with_parallel_config is first
    assert getattr(first, "__helix_patched__", False) and first.__wrapped__ is not None
