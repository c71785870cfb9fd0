# SPDX-License-Identifier: Apache-2.0
"""Placement on a fake Ray cluster: 2 racks (ray.io/gpu-domain) x 3 trays x 4 logical GPUs, head with no CPUs.

One cluster for the whole module; every test reconnects if an earlier one (the CLI) shut the driver down.
Ray is bound to 127.0.0.1 with no dashboard.
"""

from __future__ import annotations

import os
import time

import pytest

ray = pytest.importorskip("ray")

from ray.util.placement_group import PlacementGroup  # noqa: E402

from vllm_helix.placement import ray_adapter  # noqa: E402
from vllm_helix.placement.cli import serve_ray_main  # noqa: E402
from vllm_helix.placement.layout import PlacementError, plan_bundles  # noqa: E402
from vllm_helix.placement.ray_adapter import (  # noqa: E402
    PlacementTimeout,
    cluster_view,
    create_placement_group,
    launch_serve,
    place,
)

pytestmark = pytest.mark.timeout(180)

RACKS, TRAYS, GPUS = 2, 3, 4
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray uses 127.0.0.1 instead of the host's IP


@pytest.fixture(scope="module")
def cluster():
    import ray._private.ray_constants as rc
    from ray.cluster_utils import Cluster

    ray.shutdown()  # an earlier test module may have left a driver connected elsewhere
    old_env, old_flag = os.environ.get(_LOOPBACK_ENV), rc.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_ENV], rc.ENABLE_RAY_CLUSTER = "0", False
    c = None
    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                          "node_ip_address": "127.0.0.1"})  # fmt: skip
        for r in range(RACKS):
            for _ in range(TRAYS):
                labels = {"ray.io/gpu-domain": f"rack-{r}", "ray.io/accelerator-type": "GB200"}
                c.add_node(wait=False, num_cpus=1, num_gpus=GPUS, node_ip_address="127.0.0.1", labels=labels)
        c.wait_for_nodes(timeout=90)
        yield c
    finally:
        ray.shutdown()
        if c is not None:
            c.shutdown()
        rc.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = old_env


@pytest.fixture(autouse=True)
def connected(cluster):
    if ray.is_initialized() and ray.get_runtime_context().gcs_address != cluster.address:
        ray.shutdown()
    if not ray.is_initialized():
        ray.init(address=cluster.address, log_to_driver=False)
    yield
    for pg_id, info in ray.util.placement_group_table().items():  # leave the cluster empty for the next test
        if info["state"] != "REMOVED":
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
    deadline = time.monotonic() + 20  # removal is asynchronous: wait until every GPU is free again
    while ray.available_resources().get("GPU", 0) < RACKS * TRAYS * GPUS and time.monotonic() < deadline:
        time.sleep(0.2)


def _domains() -> dict[str, str]:
    return {n["NodeID"]: (n.get("Labels") or {}).get("ray.io/gpu-domain") for n in ray.nodes() if n["Alive"]}


def test_cluster_view_sees_trays_and_domains():
    view = [n for n in cluster_view() if n.total_gpus]
    assert len(view) == RACKS * TRAYS
    assert sorted({n.domain for n in view}) == ["rack-0", "rack-1"]
    assert all(n.free_gpus == GPUS and n.ip == "127.0.0.1" for n in view)


def test_dummy_ranks_land_per_plan_in_one_domain():
    placement = place(8, 2, launcher_cpus=0, timeout_s=60)
    plan = placement.plan
    assert placement.env == {"VLLM_RAY_BUNDLE_INDICES": "0,1,2,3,4,5,6,7"}

    @ray.remote(num_cpus=0, num_gpus=1)
    class Rank:
        def where(self):
            ctx = ray.get_runtime_context()
            return ctx.get_node_id(), ctx.get_accelerator_ids()["GPU"]

    strategy = ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy
    actors = [
        Rank.options(scheduling_strategy=strategy(placement.pg, placement_group_bundle_index=r)).remote()
        for r in range(8)
    ]
    try:
        where = ray.get([a.where.remote() for a in actors], timeout=120)
    finally:
        for a in actors:
            ray.kill(a)
    nodes = [w[0] for w in where]
    assert nodes == list(plan.bundle_nodes)
    domains = _domains()
    assert {domains[n] for n in nodes} == {plan.domain}
    assert len(set(nodes)) == 2  # 8 ranks on two full trays
    for g in range(4):  # KVP group g = ranks 2g, 2g+1 on one tray, on different GPUs
        assert nodes[2 * g] == nodes[2 * g + 1] and where[2 * g][1] != where[2 * g + 1][1]


def test_vllm_reads_ranks_in_bundle_order():
    """vLLM's RayExecutorV2 helper, given our VLLM_RAY_BUNDLE_INDICES, returns ranks in plan order."""
    ray_utils = pytest.importorskip("vllm.v1.executor.ray_utils")
    placement = place(8, 4, launcher_cpus=0, timeout_s=60)
    indices = [int(i) for i in placement.env["VLLM_RAY_BUNDLE_INDICES"].split(",")]
    got = ray_utils.get_bundles_for_indices(placement.pg, indices, 8)
    assert [b for b, _, _ in got] == list(range(8))
    assert [node for _, node, _ in got] == list(placement.plan.bundle_nodes)


def test_launch_serve_hands_the_group_to_vllm():
    placement = place(4, 2, timeout_s=60)
    expect_pg, expect_node = placement.pg.id.hex(), placement.plan.bundle_nodes[0]

    def probe():  # a closure: Ray ships it by value; runs where `vllm serve` would
        import sys
        import threading

        from vllm.ray.lazy_utils import is_in_ray_actor

        pg = ray.util.get_current_placement_group()
        assert is_in_ray_actor(), "vLLM would not pick up the placement group outside an actor"
        assert pg is not None and pg.id.hex() == expect_pg, pg
        assert ray.get_runtime_context().get_node_id() == expect_node  # driver on rank 0's tray
        assert os.environ["VLLM_RAY_BUNDLE_INDICES"] == "0,1,2,3" and os.environ["RAY_ADDRESS"]
        assert os.environ["HELIX_PROBE"] == "1" and sys.argv == ["vllm", "serve", "m"]
        assert threading.current_thread() is threading.main_thread()  # uvicorn/vLLM install signal handlers
        return 7

    actor, done = launch_serve(placement, ["vllm", "serve", "m"], env={"HELIX_PROBE": "1"}, main=probe)
    try:
        assert ray.get(done, timeout=120) == 7
    finally:
        ray.kill(actor)


def test_request_larger_than_a_domain_fails_fast():
    t = time.monotonic()
    with pytest.raises(PlacementError) as e:
        place(16, 4, timeout_s=60)
    assert time.monotonic() - t < 10
    msg = str(e.value)
    assert "rack-0: 12 free of 12" in msg and "rack-1: 12 free of 12" in msg and "ray status" in msg


def test_timeout_says_what_is_missing_and_does_not_hang():
    stale = plan_bundles(cluster_view(), 8, 2, domain="rack-0")
    blocker = place(12, 4, domain="rack-0", launcher_cpus=0, timeout_s=60)
    assert place(8, 2, launcher_cpus=0, timeout_s=60).plan.domain == "rack-1"  # the live view moves on
    t = time.monotonic()
    with pytest.raises(PlacementTimeout) as e:
        create_placement_group(stale, launcher_cpus=0, timeout_s=2)
    assert time.monotonic() - t < 30
    msg = str(e.value)
    assert "not ready after 2s and removed" in msg and "want 4, free 0 of 4" in msg and "ray status" in msg
    states = [v["state"] for v in ray.util.placement_group_table().values()]
    assert states.count("CREATED") == 2  # blocker + rack-1 group; the timed-out one is gone
    blocker.remove()


def test_launcher_on_a_chosen_tray():
    plan = plan_bundles(cluster_view(), 4, 4, domain="rack-0")
    other = next(n for n, d in _domains().items() if d == "rack-0" and n not in plan.bundle_nodes)
    placement = create_placement_group(plan, launcher_labels={"ray.io/node-id": other}, timeout_s=60)

    def probe():
        import sys

        assert ray.get_runtime_context().get_node_id() == other
        assert sys.argv == ["vllm", "--host", ray.util.get_node_ip_address()]
        assert ray.util.get_current_placement_group().id == placement.pg.id
        return 3

    actor, done = launch_serve(placement, ["vllm", "--host", "{node_ip}"], main=probe)
    try:
        assert ray.get(done, timeout=120) == 3
    finally:
        ray.kill(actor)


@pytest.mark.parametrize("topology,pin", [(False, True), (True, False)])
def test_label_selector_fallback_and_unpinned(topology, pin):
    if topology and not ray_adapter.supports_topology_strategy():
        pytest.skip("installed ray has no topology_strategy")
    plan = plan_bundles(cluster_view(), 8, 4)
    placement = create_placement_group(plan, launcher_cpus=0, topology=topology, pin=pin, timeout_s=60)
    table = ray.util.placement_group_table(placement.pg)
    nodes = [table["bundles_to_node_id"][i] for i in range(8)]
    assert len({_domains()[n] for n in nodes}) == 1
    ranked = [nodes[i] for i in placement.bundle_indices]
    assert ranked == list(placement.plan.bundle_nodes)
    assert ranked[:4] == [ranked[0]] * 4 or not pin  # pinned: KVP group 0 on one tray


def test_cli_dry_run_launch_and_errors(cluster, capsys, monkeypatch):
    addr = cluster.address
    ray.shutdown()  # the CLI is its own Ray driver
    assert serve_ray_main(["--address", addr, "-tp", "4", "-dcp", "2", "--dry-run"]) == 0
    assert "rank | tpa | kvp | bundle" in capsys.readouterr().out

    def probe():
        import sys

        argv = sys.argv
        assert argv[:3] == ["vllm", "serve", "/m"] and "--port" in argv
        assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
        assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
        assert argv[argv.index("--decode-context-parallel-size") + 1] == "2"
        assert argv[argv.index("--host") + 1] == "127.0.0.1"
        assert ray.util.get_current_placement_group() is not None
        return 5

    monkeypatch.setattr(ray_adapter, "_vllm_cli_main", probe)
    assert serve_ray_main(["--address", addr, "-tp", "4", "-dcp", "2", "--", "/m", "--port", "8001"]) == 5
    assert not ray.is_initialized()  # the CLI disconnects; its group went with it

    t = time.monotonic()
    assert serve_ray_main(["--address", addr, "-tp", "16", "-dcp", "4", "--wait", "1", "/m"]) == 1
    assert 1 <= time.monotonic() - t < 30
    assert "rack-1: 12 free of 12" in capsys.readouterr().err
