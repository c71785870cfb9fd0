# SPDX-License-Identifier: Apache-2.0
"""The README's serve path, `vllm-helix serve-demo` (embedded SmolLM2, here its own 9 heads at Helix KVP 3 ×
TPA 1; the default 2-rank grid on the 12-head padding is test_user_config.py's), in float32 with 32-token
blocks: the sockets it binds, /helix/status and /metrics values, then completions, streaming and chat, all
identical to stock offline vLLM TP = 1 (float32, greedy).

One server for every check. The order matters: /helix/status is read before any request (no KV written) and
after exactly one request, whose written KV per rank the round-robin placement predicts exactly
(`vllm_helix.sharding.local_lengths`); the status counters count slots written over the server's lifetime, so
later requests would blur that.
"""

import json
import math
from pathlib import Path

import pytest
import requests

from tests.e2e.demo_serve import is_loopback, listening_tcp_sockets, serve_demo
from tests.e2e.engine import run_engine
from vllm_helix.grid import HelixGrid
from vllm_helix.sharding import local_lengths

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

# the last prompt spans more than KVP = 3 blocks of 32 tokens, so every rank holds some of its KV
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away, " + "there lived a dragon who loved to read books. " * 12,
]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]  # the README's question
# structured output: the engine core computes a grammar bitmask after the forward pass, so these steps keep
# vLLM's two RPCs (execute_model, then sample_tokens) where plain steps take one (vllm_helix.compat.step_rpc)
CHOICE = {
    "prompts": ["The capital of France is the city of"],
    "choice": ["Paris", "Lyon", "Berlin", "a dragon"],
}
MAX_TOKENS = 32
BLOCK, KVP, TPA = 32, 3, 1


@pytest.fixture(scope="module")
def smollm2():
    from vllm_helix.demo.model import ensure_demo_model

    return str(ensure_demo_model("float32", quiet=True))


def _stream_text(resp) -> str:
    text = []
    for line in resp.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            choice = json.loads(line[6:])["choices"][0]
            text.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return "".join(text)


def _helix_gauges(metrics_text: str) -> dict[tuple[str, str], float]:
    """{(gauge name, rank label): value} of the vllm_helix_* gauges in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, s.labels["rank"]): s.value
        for fam in text_string_to_metric_families(metrics_text)
        for s in fam.samples
        if s.name.startswith("vllm_helix_")
    }


def assert_status_matches_grid(status: dict, model_dir: str) -> None:
    """/helix/status's grid and rank table are the ones `HelixGrid` derives for SmolLM2 (9 heads, 3 KV
    heads)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    grid = HelixGrid(KVP * TPA, KVP, heads, kv_heads, BLOCK)
    assert status["active"]
    g = status["grid"]
    assert (g["world_size"], g["kvp"], g["tpa"], g["num_heads"], g["num_kv_heads"], g["block_size"]) == (
        3,
        3,
        1,
        heads,
        kv_heads,
        BLOCK,
    ), g
    assert g["attention"] == "helix" and g["interleave"] == BLOCK, g
    assert g["rank_table"] == grid.rank_table()
    # SmolLM2 at KVP 3 × TPA 1: every rank attends with all 9 heads over all 3 KV heads (its third of the
    # sequence) and holds 3 heads after the all-to-all
    assert [(r["attention_heads"], r["kv_heads"], r["output_heads"]) for r in g["rank_table"]] == [
        ([0, 8], [0, 2], [0, 2]),
        ([0, 8], [0, 2], [3, 5]),
        ([0, 8], [0, 2], [6, 8]),
    ]
    assert [(r["rank"], r["tpa_index"], r["kvp_index"]) for r in status["ranks"]] == [
        (row["rank"], row["tpa_index"], row["kvp_index"]) for row in grid.rank_table()
    ]


def assert_gauges_equal_status(base: str, status: dict) -> None:
    """Every rank's vllm_helix_* gauge on /metrics carries the value /helix/status just reported."""
    gauges = _helix_gauges(requests.get(f"{base}/metrics", timeout=30).text)
    for r in status["ranks"]:
        rank = str(r["rank"])
        assert gauges[("vllm_helix_kv_tokens", rank)] == r["kv_tokens"], (gauges, r)
        assert gauges[("vllm_helix_kv_blocks_in_use", rank)] == r["kv_blocks"], (gauges, r)
        assert gauges[("vllm_helix_exchange_seconds", rank)] == pytest.approx(
            r["exchange_seconds"], rel=1e-12
        )


def test_serve_demo_smollm2(smollm2):
    stock = run_engine(
        {
            "llm": dict(model=smollm2, dtype="float32", enforce_eager=True, max_model_len=2048, seed=0),
            "prompts": PROMPTS,
            "chats": [CHAT],
            "structured": CHOICE,
            "max_tokens": MAX_TOKENS,
        }
    )
    # serve-demo as `make serve` runs it, but float32 (exact comparison), the 9-head checkpoint at KVP 3 and
    # 32-token blocks; no --host
    with serve_demo(
        ["--dtype", "float32", "--max-model-len", "2048", "--tp", "3", "--dcp", "3"],
        ["--block-size", str(BLOCK)],
    ) as srv:
        base = srv.base

        # 1. sockets: every listening TCP socket of the server's process tree (API server, engine core,
        #    workers and their gloo/torch.distributed sockets) is bound to loopback, and the API port is one
        #    of them
        sockets = listening_tcp_sockets(srv.proc.pid)
        assert (srv.proc.pid, "127.0.0.1", srv.port) in {(pid, ip, port) for pid, _, ip, port in sockets}, (
            sockets
        )
        exposed = [s for s in sockets if not is_loopback(s[2])]
        # (gloo listens on the address the host name resolves to unless GLOO_SOCKET_IFNAME names an interface)
        assert not exposed, f"sockets listening beyond loopback: {exposed}"

        # 2. /helix/status before any request: the grid, and no KV written
        status = requests.get(f"{base}/helix/status", timeout=60).json()
        assert_status_matches_grid(status, smollm2)
        assert [(r["kv_tokens"], r["kv_blocks"]) for r in status["ranks"]] == [(0, 0)] * 3
        assert_gauges_equal_status(base, status)

        # 3. exactly one request, then each rank's KV is its round-robin share of prompt + generated tokens
        body = {
            "model": "smollm2",
            "prompt": PROMPTS[2],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "ignore_eos": True,
        }
        r = requests.post(f"{base}/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == stock["texts"][2]
        written = r.json()["usage"]["prompt_tokens"] + MAX_TOKENS - 1  # the last token's KV is never written
        expected = local_lengths(written, BLOCK, KVP)
        status = requests.get(f"{base}/helix/status", timeout=60).json()
        assert [r["kv_tokens"] for r in status["ranks"]] == expected, (written, status["ranks"])
        assert [r["kv_blocks"] for r in status["ranks"]] == [math.ceil(n / BLOCK) for n in expected]
        assert all(r["exchanges"] > 0 and r["exchange_seconds"] > 0 for r in status["ranks"]), status["ranks"]
        # every decode step of that request was answered in one executor round trip (sampled with the forward)
        assert all(r["steps_sampled_with_forward"] >= MAX_TOKENS for r in status["ranks"]), status["ranks"]
        assert_gauges_equal_status(base, status)

        # 4. completions and streams, every prompt: text equal to stock TP = 1
        for prompt, expected_text in zip(PROMPTS, stock["texts"], strict=True):
            body = {
                "model": "smollm2",
                "prompt": prompt,
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "ignore_eos": True,
            }
            r = requests.post(f"{base}/v1/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == expected_text
            with requests.post(
                f"{base}/v1/completions", json={**body, "stream": True}, stream=True, timeout=120
            ) as resp:
                assert _stream_text(resp) == expected_text

        # 5. the README's chat question: same prompt tokens (chat template) and same answer tokens as stock
        #    `LLM.chat`; the server stops at EOS, stock (ignore_eos) runs on, so the answer is a prefix of it
        chat = {
            "model": "smollm2",
            "messages": CHAT,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "return_token_ids": True,
        }
        r = requests.post(f"{base}/v1/chat/completions", json=chat, timeout=120)
        assert r.status_code == 200, r.text
        reply = r.json()
        assert reply["prompt_token_ids"] == stock["chat_prompt_ids"][0]
        choice = reply["choices"][0]
        ids, stock_ids = choice["token_ids"], stock["chat_tokens"][0]
        assert ids == stock_ids[: len(ids)], (ids, stock_ids)
        assert len(ids) == MAX_TOKENS or choice["finish_reason"] == "stop", choice
        answer = choice["message"]["content"]
        assert "Paris" in answer and stock["chat_texts"][0].startswith(answer), (
            answer,
            stock["chat_texts"][0],
        )
        with requests.post(
            f"{base}/v1/chat/completions", json={**chat, "stream": True}, stream=True, timeout=120
        ) as resp:
            assert _stream_text(resp) == answer

        # 6. structured output (a choice): the same answer as stock under the same constraint
        body = {
            "model": "smollm2",
            "prompt": CHOICE["prompts"][0],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "structured_outputs": {"choice": CHOICE["choice"]},
        }
        r = requests.post(f"{base}/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == stock["structured_texts"][0] in CHOICE["choice"]
