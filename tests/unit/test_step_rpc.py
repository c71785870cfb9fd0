# SPDX-License-Identifier: Apache-2.0
"""`vllm_helix.compat.step_rpc`: when a Helix worker may sample inside `execute_model`, and the two vLLM 0.32
behaviours that make it exact (the engine core skips `sample_tokens` when `execute_model` returned an output;
the grammar bitmask is None without structured-output requests)."""

import inspect
from types import SimpleNamespace

import pytest

from vllm_helix.compat.step_rpc import samples_with_forward


@pytest.mark.parametrize(
    "batches,structured,expected",
    [(1, False, True), (1, True, False), (2, False, False), (3, True, False)],
)
def test_samples_with_forward(batches, structured, expected):
    config = SimpleNamespace(max_concurrent_batches=batches)
    output = SimpleNamespace(has_structured_output_requests=structured)
    assert samples_with_forward(config, output) is expected


def test_grammar_bitmask_is_none_without_structured_requests():
    """`Scheduler.get_grammar_bitmask` returns None before it reads any scheduler state: the early sample's
    `sample_tokens(None)` is the call the engine core would make."""
    from vllm.v1.core.sched.scheduler import Scheduler

    output = SimpleNamespace(has_structured_output_requests=False)
    assert Scheduler.get_grammar_bitmask(object(), output) is None


def test_engine_core_step_samples_only_after_a_none_output():
    """`EngineCore.step` (one batch at a time) asks `sample_tokens` only when `execute_model` returned
    None."""
    from vllm.v1.engine.core import EngineCore

    source = inspect.getsource(EngineCore.step)
    assert "if model_output is None:" in source
    assert "model_output = self.model_executor.sample_tokens(grammar_output)" in source
    assert "self.step if self.batch_queue is None else self.step_with_batch_queue" in inspect.getsource(
        EngineCore.__init__
    )
