# SPDX-License-Identifier: Apache-2.0
"""Pure bundle planning (no Ray cluster): one domain, KVP groups on trays, rank order, error messages."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_helix.placement.layout import (
    NodeView,
    PlacementError,
    order_placed_bundles,
    plan_bundles,
    rank_order,
)

pytestmark = pytest.mark.timeout(60)


def rack(name: str, trays: int, free: list[int] | None = None, ip_base: int = 0) -> list[NodeView]:
    free = free or [4] * trays
    return [NodeView(f"{name}-t{i:02d}", free[i], name, f"10.0.{ip_base}.{i + 10}", 4) for i in range(trays)]


def legacy_vllm_order(plan) -> list[int]:
    """What vLLM 0.32's RayDistributedExecutor does (ray_executor.py:246-270): workers created in bundle
    order, driver (launcher) on rank 0's node, then a stable sort by (ip != driver_ip, ip_count, ip)."""
    ips = dict(plan.node_ips)
    worker_ips = [ips[n] for n in plan.bundle_nodes]
    counts = Counter(worker_ips)
    driver_ip = worker_ips[0]
    return sorted(range(len(worker_ips)), key=lambda i: (worker_ips[i] != driver_ip, counts[worker_ips[i]],
                                                         worker_ips[i]))  # fmt: skip


def test_docstring_example_n8_kvp2():
    plan = plan_bundles(rack("rack-0", 2), 8, 2)
    assert plan.bundle_nodes == ("rack-0-t00",) * 4 + ("rack-0-t01",) * 4
    assert [plan.coords(r) for r in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert plan.tpa == 4 and plan.split_groups() == []
    assert plan.bundle_indices_env() == "0,1,2,3,4,5,6,7"
    table = plan.table().splitlines()
    assert [c.strip() for c in table[2].split("|")[:4]] == ["0", "0", "0", "0"]
    assert "rack-0-t01 (10.0.0.11)" in table[-1]


def test_kvp3_keeps_groups_whole_and_leaves_a_gpu_free():
    plan = plan_bundles(rack("rack-0", 2), 6, 3)
    assert plan.node_counts() == {"rack-0-t00": 3, "rack-0-t01": 3}
    assert plan.split_groups() == []


@pytest.mark.parametrize("n,kvp,trays", [(16, 4, 4), (72, 4, 18), (72, 2, 18), (8, 1, 2), (36, 3, 12)])
def test_nvl72_groups_share_a_tray(n, kvp, trays):
    plan = plan_bundles(rack("nvl72-a", 18), n, kvp)
    assert plan.split_groups() == []
    assert len(plan.node_counts()) == trays
    for g in range(n // kvp):
        assert len(set(plan.bundle_nodes[g * kvp : (g + 1) * kvp])) == 1


def test_kvp8_spans_exactly_two_consecutive_trays():
    plan = plan_bundles(rack("nvl72-a", 18), 72, 8)
    for g in range(9):
        assert len(set(plan.bundle_nodes[g * 8 : (g + 1) * 8])) == 2
    assert len(plan.node_counts()) == 18


def test_kvp3_full_rack_must_straddle_but_stays_in_domain():
    plan = plan_bundles(rack("nvl72-a", 18), 72, 3)
    assert len(plan.bundle_nodes) == 72 and plan.domain == "nvl72-a"
    assert plan.split_groups()  # 18 x 4 GPUs cannot hold 24 whole groups of 3


def test_partially_used_trays_keep_groups_whole():
    plan = plan_bundles(rack("rack-0", 4, free=[3, 4, 1, 2]), 8, 2)
    assert plan.split_groups() == []
    assert all(c % 2 == 0 for c in plan.node_counts().values())


def test_best_fit_domain_and_never_mixing_domains():
    nodes = rack("rack-0", 3) + rack("rack-1", 3, free=[4, 4, 0], ip_base=1)
    plan = plan_bundles(nodes, 8, 2)
    assert plan.domain == "rack-1"  # 8 free: the tighter fit; rack-0 (12) stays whole
    assert plan_bundles(nodes, 12, 4).domain == "rack-0"
    assert plan_bundles(nodes, 4, 4, domain="rack-0").domain == "rack-0"


def test_not_enough_gpus_in_one_domain_names_domains_and_commands():
    nodes = rack("rack-0", 3) + rack("rack-1", 3, ip_base=1)  # 24 GPUs in all, 12 per domain
    with pytest.raises(PlacementError) as e:
        plan_bundles(nodes, 16, 4)
    msg = str(e.value)
    for part in ("16 free GPUs", "rack-0: 12 free of 12 GPUs on 3 node(s)", "rack-1: 12 free", "ray status",
                 "ray list nodes", "never cross"):  # fmt: skip
        assert part in msg, msg


def test_grid_errors():
    nodes = rack("nvl72-a", 18) + rack("nvl72-b", 18, ip_base=1)
    with pytest.raises(PlacementError, match="exceeds one NVLink domain .72 GPUs"):
        plan_bundles(nodes, 80, 4)
    with pytest.raises(PlacementError, match="not a multiple"):
        plan_bundles(nodes, 8, 3)
    with pytest.raises(PlacementError, match="kvp >= 1"):
        plan_bundles(nodes, 8, 0)
    with pytest.raises(PlacementError, match="domain 'rack-9' has no alive node.*nvl72-a: 72 free"):
        plan_bundles(nodes, 8, 2, domain="rack-9")


def test_unlabelled_nodes_are_single_node_domains():
    nodes = [NodeView("box-a", 8, None, "10.0.0.1", 8), NodeView("box-b", 8, None, "10.0.0.2", 8)]
    plan = plan_bundles(nodes, 8, 4)
    assert plan.domain == "node:box-a" and not plan.labelled and len(plan.node_counts()) == 1
    with pytest.raises(PlacementError, match="2 node.s. carry no ray.io/gpu-domain label.*ray-start-tray.sh"):
        plan_bundles(nodes, 16, 4)


def test_gpu_less_nodes_are_ignored():
    nodes = [NodeView("head", 0, None, "10.0.0.1", 0)] + rack("rack-0", 1)
    assert plan_bundles(nodes, 4, 2).domain == "rack-0"


def test_order_placed_bundles_groups_nodes():
    placed = ["b", "a", "b", "a", "b", "b"]
    order = order_placed_bundles(placed, {"a": "10.0.0.2", "b": "10.0.0.1"})
    assert order == [1, 3, 0, 2, 4, 5]  # a has fewer bundles: first
    # IPs compare as strings, as in vLLM
    assert rank_order({"x": 4, "y": 4}, {"x": "10.0.0.9", "y": "10.0.0.10"}) == ["y", "x"]


@settings(max_examples=200, deadline=None)
@given(
    free=st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=6), min_size=1, max_size=3),
    kvp=st.sampled_from([1, 2, 3, 4, 8]),
    tpa=st.integers(1, 6),
)
def test_plan_invariants(free, kvp, tpa):
    n = kvp * tpa
    nodes = [NodeView(f"d{d}-t{i}", f, f"d{d}", f"10.{d}.0.{i}", 4) for d, row in enumerate(free)
             for i, f in enumerate(row)]  # fmt: skip
    try:
        plan = plan_bundles(nodes, n, kvp)
    except PlacementError:
        assert all(sum(row) < n for row in free)
        return
    by_id = {x.node_id: x for x in nodes}
    assert {by_id[b].domain for b in plan.bundle_nodes} == {plan.domain}
    assert all(c <= by_id[nid].free_gpus for nid, c in plan.node_counts().items())
    row = free[int(plan.domain[1:])]
    if sum(f // kvp * kvp for f in row) >= n:
        assert plan.split_groups() == []
    # each node's ranks are contiguous, and the legacy executor's re-sort keeps rank r on bundle r
    seen = [b for i, b in enumerate(plan.bundle_nodes) if i == 0 or plan.bundle_nodes[i - 1] != b]
    assert len(seen) == len(set(seen))
    assert legacy_vllm_order(plan) == list(range(n))
