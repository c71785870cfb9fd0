# SPDX-License-Identifier: Apache-2.0
import pytest

from vllm_helix.grid import HelixConfigError, HelixGrid, grid_problems, working_grids


def test_rank_table_matches_docstring_example():
    g = HelixGrid(world_size=4, kvp=2, num_heads=8, num_kv_heads=2)
    assert g.tpa == 2
    assert [g.coords(r) for r in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert g.kvp_groups() == [[0, 1], [2, 3]]
    assert g.tpa_groups() == [[0, 2], [1, 3]]
    assert [list(g.attention_heads(r)) for r in range(4)] == [[0, 1, 2, 3]] * 2 + [[4, 5, 6, 7]] * 2
    assert [list(g.kv_heads(r)) for r in range(4)] == [[0], [0], [1], [1]]
    assert [list(g.output_heads(r)) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_output_heads_are_the_kvp_chunks_of_the_tpa_shard():
    for n, kvp, h, k in [(4, 2, 8, 2), (6, 3, 12, 4), (4, 4, 8, 1), (8, 2, 16, 8), (3, 3, 9, 3)]:
        g = HelixGrid(n, kvp, h, k)
        for r in range(n):
            t, j = g.coords(r)
            shard = list(g.attention_heads(r))
            chunk = shard[j * g.heads_per_rank : (j + 1) * g.heads_per_rank]
            assert chunk == list(g.output_heads(r))


def test_tpa_smaller_than_kv_heads_is_allowed():
    g = HelixGrid(world_size=3, kvp=3, num_heads=9, num_kv_heads=3)  # SmolLM2 at KVP 3 × TPA 1
    assert g.tpa == 1 and g.kv_heads_per_tpa_rank == 3 and g.heads_per_tpa_rank == 9


@pytest.mark.parametrize(
    "n,kvp,h,k,needle",
    [
        (4, 3, 8, 2, "divisible by -dcp"),
        (4, 2, 9, 3, "query heads (9) must be divisible by N"),
        (6, 2, 12, 4, "KV heads (4) must be divisible by TPA"),
        (6, 2, 12, 2, "exceeds KV heads (2) and is not a multiple"),
        (8, 1, 16, 3, "multiple of KV heads"),
    ],
)
def test_impossible_grids_name_values_and_a_working_grid(n, kvp, h, k, needle):
    with pytest.raises(HelixConfigError) as e:
        HelixGrid(n, kvp, h, k)
    msg = str(e.value)
    assert needle in msg and f"-tp {n} -dcp {kvp}" in msg and "Grids that work" in msg


def test_working_grids_for_smollm2():
    grids = working_grids(9, 3, 9)
    assert (3, 3) in grids and (3, 1) in grids and (9, 3) in grids
    assert all(not grid_problems(n, kvp, 9, 3) for n, kvp in grids)
