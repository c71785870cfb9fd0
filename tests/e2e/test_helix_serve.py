# SPDX-License-Identifier: Apache-2.0
"""`vllm serve` with the Helix worker on the embedded SmolLM2 at KVP 3 × TPA 1: completions, chat, streaming,
/helix/status and /metrics; text identical to stock offline vLLM (float32, greedy)."""

import json

import pytest
import requests

from tests.e2e.engine import run_engine
from tests.e2e.server import vllm_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

# the last prompt spans more than KVP = 3 blocks of 32 tokens, so every rank holds some of its KV
PROMPTS = ["The capital of France is", "def fibonacci(n):",
           "Once upon a time, in a land far away, " + "there lived a dragon who loved to read books. " * 12]
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def smollm2():
    from vllm_helix.demo_model import ensure_demo_model

    return str(ensure_demo_model("float32", quiet=True))


def _stream_text(resp) -> str:
    text = []
    for line in resp.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            choice = json.loads(line[6:])["choices"][0]
            text.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return "".join(text)


def test_serve_helix_smollm2_matches_stock_offline(smollm2):
    stock = run_engine({"llm": dict(model=smollm2, dtype="float32", enforce_eager=True, max_model_len=2048,
                                    seed=0), "prompts": PROMPTS, "max_tokens": MAX_TOKENS})["texts"]
    args = ["--worker-cls", "vllm_helix.Worker", "-tp", "3", "-dcp", "3", "--dtype", "float32", "--enforce-eager",
            "--max-model-len", "2048", "--served-model-name", "smollm2", "--block-size", "32"]
    with vllm_server(smollm2, args, ranks=3) as (base, _):
        for prompt, expected in zip(PROMPTS, stock):
            body = {"model": "smollm2", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
                    "ignore_eos": True}
            r = requests.post(f"{base}/v1/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == expected
            with requests.post(f"{base}/v1/completions", json={**body, "stream": True}, stream=True,
                               timeout=120) as resp:
                assert _stream_text(resp) == expected
        chat = {"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 24, "temperature": 0}
        r = requests.post(f"{base}/v1/chat/completions", json=chat, timeout=120)
        assert r.status_code == 200, r.text
        answer = r.json()["choices"][0]["message"]["content"]
        assert "Paris" in answer
        with requests.post(f"{base}/v1/chat/completions", json={**chat, "stream": True}, stream=True,
                           timeout=120) as resp:
            assert _stream_text(resp) == answer

        status = requests.get(f"{base}/helix/status", timeout=60).json()
        assert status["active"] and status["grid"]["kvp"] == 3 and status["grid"]["tpa"] == 1
        assert [r["kvp_index"] for r in status["ranks"]] == [0, 1, 2]
        assert all(r["kv_tokens"] > 0 for r in status["ranks"])
        metrics = requests.get(f"{base}/metrics", timeout=30).text
        assert 'vllm_helix_kv_blocks_in_use{kvp_index="2",rank="2",tpa_index="0"}' in metrics
        assert "vllm_helix_exchange_seconds" in metrics
