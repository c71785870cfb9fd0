# SPDX-License-Identifier: Apache-2.0
"""vLLM's rule for comparing two greedy generations in low precision (`check_logprobs_close` in vLLM's
tests/models/utils.py), rewritten here: vLLM's tests are not an installed package.

Greedy decoding takes an argmax at every step. In bf16 two correct computations of the same logits can round
a near-tie differently, and from that step on their contexts differ, so comparing whole sequences would fail
for reasons that are not bugs. The rule walks both token sequences t^A, t^B and, at the first index i with
t^A_i ≠ t^B_i, requires

    t^A_i ∈ top_k(logprobs^B_i)  and  t^B_i ∈ top_k(logprobs^A_i)

(each side's choice is a strong candidate of the other), then stops: after i the two runs condition on
different prefixes. Identical sequences pass without looking at logprobs. A sequence that ends early (EOS)
ends with the EOS token, which then differs from the other side's token at that index and is checked like
any other. With greedy sampling vLLM's `logprobs=k` entry of a step is the top k (the sampled token is rank 1
and adds no entry).

Logprobs are given per step as [[token_id, logprob], ...] best first, the format `tests.e2e.engine` records.
"""

from __future__ import annotations

Step = list[list]  # [[token_id, logprob], ...] best first


def _token_id(token: str) -> int:
    assert token.startswith("token_id:"), token
    return int(token[len("token_id:") :])


def openai_logprobs(logprobs: list[dict] | dict) -> tuple[list[int], list[Step]]:
    """(token ids, per-step top logprobs, best first) from an OpenAI response's `choices[0].logprobs`,
    requested with vLLM's `return_tokens_as_token_ids` (tokens spelled "token_id:123"): a chat response's
    `content` list ({"token", "top_logprobs": [{"token", "logprob"}]} per step) or a completion's
    {"tokens", "top_logprobs": [{token: logprob}]} (that dict may also hold the sampled token)."""
    if isinstance(logprobs, list):  # chat
        tokens = [_token_id(entry["token"]) for entry in logprobs]
        steps = [
            [[_token_id(alt["token"]), alt["logprob"]] for alt in entry["top_logprobs"]] for entry in logprobs
        ]
    else:  # completion
        tokens = [_token_id(t) for t in logprobs["tokens"]]
        steps = [[[_token_id(t), lp] for t, lp in top.items()] for top in logprobs["top_logprobs"]]
    return tokens, [sorted(step, key=lambda e: -e[1]) for step in steps]


def first_divergence(tokens_a: list[int], tokens_b: list[int]) -> int | None:
    """The first index where both sequences have a token and the tokens differ; None if one is a prefix of
    the other (equal included)."""
    for i, (a, b) in enumerate(zip(tokens_a, tokens_b, strict=False)):
        if a != b:
            return i
    return None


def assert_logprobs_close(
    tokens_a: list[int],
    logprobs_a: list[Step],
    tokens_b: list[int],
    logprobs_b: list[Step],
    name_a: str = "a",
    name_b: str = "b",
    top_k: int = 5,
) -> int | None:
    """Assert vLLM's low-precision closeness of one generation pair (module docstring); return the index
    where the greedy paths diverged (None: one is a prefix of the other)."""
    i = first_divergence(tokens_a, tokens_b)
    if i is None:
        return None
    top_a = [t for t, _ in logprobs_a[i][:top_k]]
    top_b = [t for t, _ in logprobs_b[i][:top_k]]
    msg = (
        f"greedy paths diverge at token {i}: {name_a} chose {tokens_a[i]} "
        f"(top-{top_k} {logprobs_a[i][:top_k]}), {name_b} chose {tokens_b[i]} "
        f"(top-{top_k} {logprobs_b[i][:top_k]}); common prefix {tokens_a[:i]}"
    )
    assert tokens_a[i] in top_b and tokens_b[i] in top_a, msg
    return i
