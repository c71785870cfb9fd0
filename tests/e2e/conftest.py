# SPDX-License-Identifier: Apache-2.0
"""Fixtures for end-to-end tests: tiny checkpoints, the embedded model, and cached stock-vLLM reference
outputs."""

from __future__ import annotations

import random

import pytest

from tests.e2e.engine import run_engine
from tests.e2e.tiny_models import make_tiny_llama

NEW_TOKENS = 64
BLOCK = 32


def prompt_ids(seed: int, lengths: list[int], vocab: int = 500) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, vocab) for _ in range(n)] for n in lengths]


# lengths not block multiples, a batch of different lengths, one prompt spanning many blocks
PROMPT_LENGTHS = [5, 33, 70, 100, 419]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "mqa": make_tiny_llama(root / "mqa", heads=8, kv_heads=1, seed=1),
        "gqa2": make_tiny_llama(root / "gqa2", heads=8, kv_heads=2, seed=2),
        "gqa4": make_tiny_llama(root / "gqa4", heads=8, kv_heads=4, seed=3),
        "qwen3": make_tiny_llama(root / "qwen3", heads=8, kv_heads=2, seed=4, arch="qwen3"),
        # the other architectures the README lists (test_architectures.py, test_user_config.py)
        "mha": make_tiny_llama(root / "mha", heads=8, kv_heads=8, seed=21),
        "mistral": make_tiny_llama(root / "mistral", heads=8, kv_heads=2, seed=22, arch="mistral"),
        "qwen2": make_tiny_llama(root / "qwen2", heads=8, kv_heads=4, seed=23, arch="qwen2"),
    }


def llm_args(model, tp=1, dcp=1, helix=False, block_size=BLOCK, additional_config=None, **extra) -> dict:
    args = dict(
        model=str(model),
        tensor_parallel_size=tp,
        decode_context_parallel_size=dcp,
        dtype="float32",
        enforce_eager=True,
        block_size=block_size,
        max_model_len=2048,
        max_num_seqs=8,
        seed=0,
        **extra,
    )
    if helix:
        args["worker_cls"] = "vllm_helix.Worker"
    if additional_config is not None:
        args["additional_config"] = additional_config
    if "tokenizer" not in extra:
        args.setdefault("skip_tokenizer_init", True)
    return args


_STOCK_CACHE: dict = {}


class StockReference:
    """Greedy tokens of stock vLLM TP = 1 for (model, prompts), computed once per session.

    `groups(model, [prompts_a, prompts_b, ...])` runs each prompt list as its own generate call on one stock
    engine (the first as the engine's prompts, the rest as phases), so a test that needs a batch and then a
    long prompt alone starts one stock engine, not two."""

    def __call__(self, model, prompts, max_tokens=NEW_TOKENS, **extra) -> list[list[int]]:
        return self.groups(model, [prompts], max_tokens, **extra)[0]

    def groups(self, model, groups: list, max_tokens=NEW_TOKENS, **extra) -> list[list[list[int]]]:
        keys = [(str(model), repr(g), max_tokens, repr(sorted(extra.items()))) for g in groups]
        missing = [(k, g) for k, g in zip(keys, groups, strict=True) if k not in _STOCK_CACHE]
        if missing:
            result = run_engine(
                {
                    "llm": llm_args(model, **extra),
                    "prompts": missing[0][1],
                    "max_tokens": max_tokens,
                    "phases": [{"prompts": g} for _, g in missing[1:]],
                }
            )
            tokens = [result["tokens"]] + [phase["tokens"] for phase in result.get("phases", [])]
            for (key, _), got in zip(missing, tokens, strict=True):
                _STOCK_CACHE[key] = got
        return [_STOCK_CACHE[k] for k in keys]


@pytest.fixture(scope="session")
def stock_tokens() -> StockReference:
    return StockReference()
