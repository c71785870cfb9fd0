# SPDX-License-Identifier: Apache-2.0
"""The low-precision comparison rule of the e2e tests (`tests.e2e.logprobs_close`, vLLM's
check_logprobs_close): passes exactly where vLLM's rule passes, fails where it fails."""

import pytest

from tests.e2e.logprobs_close import assert_logprobs_close, first_divergence, openai_logprobs


def steps(*tops):
    return [[[t, -0.1 * (r + 1)] for r, t in enumerate(top)] for top in tops]


def test_identical_sequences_pass_without_logprobs():
    assert assert_logprobs_close([1, 2, 3], [], [1, 2, 3], []) is None
    assert first_divergence([1, 2], [1, 2, 3]) is None  # a prefix (ended at max_tokens) is no divergence


def test_divergence_with_each_token_in_the_others_top_k_passes_and_stops_there():
    a, b = [1, 2, 7, 9], [1, 2, 8, 4]  # after index 2 the contexts differ: index 3 is not compared
    assert assert_logprobs_close(a, steps([1], [2], [7, 8], [9]), b, steps([1], [2], [8, 7], [4])) == 2


@pytest.mark.parametrize(
    "top_a,top_b",
    [
        ([7, 1, 2, 3, 4, 5], [8, 7]),  # b's token 8 is only 6th in a's list: outside the top 5
        ([7, 8], [8, 1]),  # a's token 7 is not in b's list
    ],
)
def test_divergence_outside_the_top_k_fails(top_a, top_b):
    with pytest.raises(AssertionError, match="diverge at token 0"):
        assert_logprobs_close([7], steps(top_a), [8], steps(top_b))


def test_openai_formats():
    chat = [
        {
            "token": "token_id:5",
            "top_logprobs": [
                {"token": "token_id:3", "logprob": -2.0},
                {"token": "token_id:5", "logprob": -0.1},
            ],
        }
    ]
    assert openai_logprobs(chat) == ([5], [[[5, -0.1], [3, -2.0]]])
    completion = {"tokens": ["token_id:5"], "top_logprobs": [{"token_id:3": -2.0, "token_id:5": -0.1}]}
    assert openai_logprobs(completion) == ([5], [[[5, -0.1], [3, -2.0]]])
