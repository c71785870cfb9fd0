# SPDX-License-Identifier: Apache-2.0
"""Thin Ray shell around `layout.plan_bundles`: read the cluster, build and wait for the placement group,
run `vllm serve` inside it.

How vLLM 0.32 takes the group (checked against the installed source):

* `EngineArgs.create_engine_config` (engine/arg_utils.py ~2331) sets `parallel_config.placement_group =
  ray.util.get_current_placement_group()` only when it runs *inside a Ray actor* (`is_in_ray_actor()`). The
  config, group included, is pickled into the EngineCore process, where `initialize_ray_cluster`
  (v1/executor/ray_utils.py:579) reuses it, checks bundles hold at most one device and skips its own
  `PACK` group. A `vllm serve` started as a plain subprocess would build its own group, so
  `launch_serve` runs the vLLM CLI in-process in an actor placed in our group (as Ray Serve LLM does).
* Rank order. `RayExecutorV2` (the 0.32 default, `VLLM_USE_RAY_V2_EXECUTOR_BACKEND=1`) gives rank i to
  bundle `VLLM_RAY_BUNDLE_INDICES[i]` (`get_bundles_for_indices`, ray_utils.py:356); without that
  variable it sorts GPU bundles driver node first, then by *node id* (`get_bundles_sorted_by_node`,
  ray_utils.py:385), which scatters trays arbitrarily. We always set it to "0,1,...,N-1".
  The legacy `RayDistributedExecutor` (`VLLM_USE_RAY_V2_EXECUTOR_BACKEND=0`) creates workers in
  that bundle order and then re-sorts them by `(ip != driver_ip, workers_on_ip, ip)`
  (v1/executor/ray_executor.py:250); the plan's node order (`layout.rank_order`) plus the launcher
  sitting on rank 0's tray make that the same order. It also needs a GPU bundle on the driver node.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from vllm_helix.placement.layout import (
    DOMAIN_LABEL,
    HINT,
    NODE_ID_LABEL,
    BundlePlan,
    NodeView,
    PlacementError,
    order_placed_bundles,
    plan_bundles,
)

__all__ = [
    "Placement",
    "PlacementTimeout",
    "cluster_view",
    "create_placement_group",
    "launch_serve",
    "place",
    "supports_topology_strategy",
]


class PlacementTimeout(PlacementError, TimeoutError):
    """The placement group was not ready in time; it has been removed."""


def _available_per_node() -> dict[str, dict[str, float]]:
    try:  # the same private accessor vLLM 0.32 uses (ray_utils.py:49)
        from ray._private.state import available_resources_per_node

        return available_resources_per_node()
    except Exception:  # noqa: BLE001 - fall back to totals; the group wait then reports the truth
        return {}


def cluster_view(device_key: str = "GPU") -> list[NodeView]:
    """Alive nodes with their free `device_key` count and `ray.io/gpu-domain` label."""
    avail = _available_per_node()
    view = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        total = int(n.get("Resources", {}).get(device_key, 0))
        # a fully used resource is absent from the node's available map: 0, not "unknown"
        free = int(avail[n["NodeID"]].get(device_key, 0)) if n["NodeID"] in avail else total
        labels = n.get("Labels") or {}
        view.append(NodeView(n["NodeID"], free, labels.get(DOMAIN_LABEL), n["NodeManagerAddress"], total))
    return view


def supports_topology_strategy() -> bool:
    """Ray >= 2.56 takes `topology_strategy={"ray.io/gpu-domain": "STRICT_PACK"}`."""
    return "topology_strategy" in inspect.signature(ray.util.placement_group).parameters


@dataclass
class Placement:
    """A ready group for a plan: bundles 0..N-1 hold one device each; rank r uses `bundle_indices[r]`."""

    pg: PlacementGroup
    plan: BundlePlan
    bundle_indices: list[int]
    launcher_bundle: int | None
    env: dict[str, str] = field(default_factory=dict)

    def remove(self) -> None:
        ray.util.remove_placement_group(self.pg)


def placement_group_args(
    plan: BundlePlan,
    *,
    device_key: str = "GPU",
    cpus_per_bundle: float = 0.0,
    launcher_cpus: float = 1.0,
    launcher_labels: dict[str, str] | None = None,
    pin: bool = True,
    topology: bool | None = None,
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Bundles and keyword arguments for `ray.util.placement_group` (split out so it can be unit-tested).

    Bundle r (r < N) is `{device_key: 1}` (+ CPUs) for rank r; bundle N, if `launcher_cpus`, is the CPU
    bundle for the `vllm serve` actor: on rank 0's tray, or on a tray of the same domain matching
    `launcher_labels` (a fixed tray that a Kubernetes Service can point at). It must be a GPU node: the
    EngineCore process that vLLM starts there picks its platform from the devices it can see.
    Pinning adds `ray.io/node-id` per bundle.
    """
    topology = supports_topology_strategy() if topology is None else topology
    topology = topology and plan.labelled
    gpu = {device_key: 1.0} | ({"CPU": float(cpus_per_bundle)} if cpus_per_bundle else {})
    bundles = [dict(gpu) for _ in plan.bundle_nodes]
    selectors: list[dict[str, str]] = []
    for node in plan.bundle_nodes:
        sel = {NODE_ID_LABEL: node} if pin or not plan.labelled else {}  # unlabelled domain = one node
        if plan.labelled and not topology:
            sel[DOMAIN_LABEL] = plan.domain
        selectors.append(sel)
    if launcher_cpus:
        bundles.append({"CPU": float(launcher_cpus)})
        if launcher_labels:
            domain_only = {DOMAIN_LABEL: plan.domain} if plan.labelled and not topology else {}
            selectors.append(domain_only | launcher_labels)
        else:
            selectors.append(dict(selectors[0]))
    kwargs: dict[str, Any] = {"bundle_label_selector": selectors}
    if topology:
        kwargs["topology_strategy"] = {DOMAIN_LABEL: "STRICT_PACK", NODE_ID_LABEL: "PACK"}
    else:
        kwargs["strategy"] = "PACK"
    return bundles, kwargs


def _timeout_message(plan: BundlePlan, bundles: Sequence[dict], timeout_s: float, device_key: str) -> str:
    want = plan.node_counts()
    have = {n.node_id: n for n in cluster_view(device_key)}
    rows = []
    for node_id, k in want.items():
        n = have.get(node_id)
        free = f"{n.free_gpus} of {n.total_gpus}" if n else "node gone"
        rows.append(f"{node_id[:12]} ({n.ip if n else '?'}): want {k}, free {free}")
    dom_free = sum(n.free_gpus for n in have.values() if n.domain_key == plan.domain)
    return (
        f"placement group for Helix -tp {plan.world_size} -dcp {plan.kvp} not ready after {timeout_s:g}s "
        f"and removed. Requested {len(bundles)} bundles {bundles[0]} x {plan.world_size}"
        f"{' + launcher ' + str(bundles[-1]) if len(bundles) > plan.world_size else ''} in domain "
        f"{plan.domain!r} ({dom_free} {device_key} free there now). Per node: {'; '.join(rows)}. {HINT}"
    )


def create_placement_group(
    plan: BundlePlan,
    *,
    device_key: str = "GPU",
    cpus_per_bundle: float = 0.0,
    launcher_cpus: float = 1.0,
    launcher_labels: dict[str, str] | None = None,
    pin: bool = True,
    topology: bool | None = None,
    timeout_s: float = 300.0,
    name: str = "",
) -> Placement:
    """Create the group for `plan` and wait at most `timeout_s` (never forever).

    Raises:
        PlacementTimeout: not ready in time (the group is removed; the message lists wanted vs free).
    """
    bundles, kwargs = placement_group_args(
        plan, device_key=device_key, cpus_per_bundle=cpus_per_bundle, launcher_cpus=launcher_cpus,
        launcher_labels=launcher_labels, pin=pin, topology=topology,
    )  # fmt: skip
    pg = ray.util.placement_group(bundles, name=name, **kwargs)
    if not pg.wait(timeout_seconds=timeout_s):
        ray.util.remove_placement_group(pg)
        raise PlacementTimeout(_timeout_message(plan, bundles, timeout_s, device_key))
    placed = ray.util.placement_group_table(pg)["bundles_to_node_id"]
    gpu_nodes = [placed[i] for i in range(plan.world_size)]
    if pin and gpu_nodes != list(plan.bundle_nodes):
        ray.util.remove_placement_group(pg)
        raise PlacementError(f"Ray placed bundles {gpu_nodes}, plan was {list(plan.bundle_nodes)}")
    ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
    indices = list(range(plan.world_size)) if pin else order_placed_bundles(gpu_nodes, ips)
    if not pin:  # Ray chose the trays: re-express the plan in rank order of what it chose
        plan = BundlePlan(
            plan.world_size, plan.kvp, plan.domain, plan.labelled,
            tuple(gpu_nodes[i] for i in indices), tuple(sorted((n, ips.get(n, "")) for n in set(gpu_nodes))),
        )  # fmt: skip
    env = {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, indices))}
    return Placement(pg, plan, indices, plan.world_size if launcher_cpus else None, env)


def place(
    world_size: int,
    kvp: int,
    *,
    domain: str | None = None,
    device_key: str = "GPU",
    **create_kwargs: Any,
) -> Placement:
    """Plan on the live cluster (`ray.init` must have run) and create the group."""
    plan = plan_bundles(cluster_view(device_key), world_size, kvp, domain=domain)
    return create_placement_group(plan, device_key=device_key, **create_kwargs)


def _vllm_cli_main() -> None:
    from vllm.entrypoints.cli.main import main

    main()


NODE_IP_PLACEHOLDER = "{node_ip}"  # in argv: replaced by the launcher tray's IP (e.g. `--host {node_ip}`)


class _ServeActor:
    """Runs a CLI `main()` in this actor's process, so that vLLM sees the current placement group."""

    def run(self, main: Callable[[], Any], argv: list[str]) -> int:
        import sys

        ip = ray.util.get_node_ip_address()
        sys.argv = [a.replace(NODE_IP_PLACEHOLDER, ip) for a in argv]
        try:
            result = main()
        except SystemExit as e:  # argparse / CLI exits must not kill the actor silently
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return result if isinstance(result, int) else 0


def launch_serve(
    placement: Placement,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    main: Callable[[], Any] | None = None,
    launcher_cpus: float = 1.0,
    runtime_env: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Run `main()` with `sys.argv = argv` (`["vllm", "serve", ...]`) in an actor on the launcher bundle.

    The actor carries `placement.env` (VLLM_RAY_BUNDLE_INDICES), `RAY_ADDRESS` (for the EngineCore
    process's own `ray.init`) and `env`. vLLM copies the actor's runtime env (`runtime_env`, e.g. a
    `worker_process_setup_hook`) to its worker actors (arg_utils.py ~2313, ray_executor_v2.py:255).
    Returns (actor, ObjectRef of the exit code).
    """
    env_vars = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address} | placement.env | (env or {})
    runtime_env = dict(runtime_env or {})
    runtime_env["env_vars"] = dict(runtime_env.get("env_vars", {})) | env_vars
    if placement.launcher_bundle is None:
        raise PlacementError("the placement group has no launcher bundle (launcher_cpus=0)")
    actor = (
        ray.remote(_ServeActor)
        .options(
            num_cpus=launcher_cpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement.pg, placement_group_bundle_index=placement.launcher_bundle
            ),
            runtime_env=runtime_env,
        )
        .remote()
    )
    return actor, actor.run.remote(main or _vllm_cli_main, list(argv))
