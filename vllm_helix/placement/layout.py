# SPDX-License-Identifier: Apache-2.0
"""Pure bundle planning: which tray (Ray node) each Helix rank's one-GPU bundle lands on.

No Ray import here: the cluster view comes in as `NodeView`s, the answer goes out as a `BundlePlan`.

A Helix engine of N = KVP x TPA ranks runs as `vllm serve -tp N -dcp KVP`. Rank r has
tpa index r // KVP and kvp index r % KVP, so a KVP group (vLLM's DCP group) is a run of KVP
consecutive ranks. The plan keeps all N bundles inside one NVLink domain (Ray node label
`ray.io/gpu-domain`; a GB200 NVL72 rack is one domain of 18 trays x 4 GPUs) and packs each KVP
group onto one tray whenever the free GPUs allow it (KVP <= 4 and 4 % KVP == 0 on empty trays);
otherwise groups run over consecutive trays.

Bundle index == rank. Worked example, N = 8, KVP = 2 (TPA = 4), two empty trays a and b
(same free count, so they are ordered by IP, see `rank_order`):

    rank | tpa | kvp | bundle | tray
      0  |  0  |  0  |   0    |  a
      1  |  0  |  1  |   1    |  a      <- KVP group 0 = ranks 0,1 on tray a
      2  |  1  |  0  |   2    |  a
      3  |  1  |  1  |   3    |  a
      4  |  2  |  0  |   4    |  b
      5  |  2  |  1  |   5    |  b
      6  |  3  |  0  |   6    |  b
      7  |  3  |  1  |   7    |  b

With N = 6, KVP = 3 on the same trays each tray takes one whole group (3 + 3) and one GPU per
tray stays free, rather than 4 + 2 with group 1 split over both trays.

Node order (which tray gets ranks 0..) is `rank_order`: fewer planned bundles first, then IP, then
node id. That is the order vLLM 0.32's legacy `RayDistributedExecutor` re-sorts workers into when
the driver sits on the first tray (its key is `(ip != driver_ip, count_on_ip, ip)`), and
`RayExecutorV2` follows bundle order exactly when `VLLM_RAY_BUNDLE_INDICES` is set; so both
executors give rank r to bundle r. See `ray_adapter.py` for the vLLM side.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vllm_helix.grid import rank_coords

__all__ = [
    "DOMAIN_LABEL",
    "NODE_ID_LABEL",
    "NVL72_GPUS",
    "BundlePlan",
    "NodeView",
    "PlacementError",
    "order_placed_bundles",
    "plan_bundles",
    "rank_order",
]

DOMAIN_LABEL = "ray.io/gpu-domain"
NODE_ID_LABEL = "ray.io/node-id"
NVL72_GPUS = 72
HINT = "Check `ray status` and `ray list nodes`."


class PlacementError(ValueError):
    """A Helix grid cannot be placed on the cluster as it is; the message says why and what to run."""


@dataclass(frozen=True, slots=True)
class NodeView:
    """One alive Ray node (a tray) as the planner sees it.

    `domain` is the node's `ray.io/gpu-domain` label, or None when the node has none; an unlabelled
    node is treated as a domain of its own (a single 8-GPU box is one NVLink domain too).
    """

    node_id: str
    free_gpus: int
    domain: str | None = None
    ip: str = ""
    total_gpus: int | None = None

    def __post_init__(self):
        if self.free_gpus < 0:
            raise ValueError(f"node {self.node_id}: free_gpus={self.free_gpus} < 0")

    @property
    def domain_key(self) -> str:
        return self.domain if self.domain is not None else f"node:{self.node_id}"


@dataclass(frozen=True, slots=True)
class BundlePlan:
    """Bundle index == rank -> node id, for `world_size` ranks in KVP groups of `kvp`."""

    world_size: int
    kvp: int
    domain: str
    labelled: bool  # False: the domain is one unlabelled node
    bundle_nodes: tuple[str, ...]  # rank -> node id (rank r uses bundle r when pinned)
    node_ips: tuple[tuple[str, str], ...]  # (node_id, ip) for every node used

    @property
    def tpa(self) -> int:
        return self.world_size // self.kvp

    def coords(self, rank: int) -> tuple[int, int]:
        """(tpa index, kvp index) of `rank`."""
        return rank_coords(rank, self.kvp)

    def node_counts(self) -> dict[str, int]:
        return dict(Counter(self.bundle_nodes))

    def split_groups(self) -> list[int]:
        """KVP groups whose ranks sit on more than one tray."""
        k = self.kvp
        return [g for g in range(self.tpa) if len(set(self.bundle_nodes[g * k : (g + 1) * k])) > 1]

    def bundle_indices_env(self) -> str:
        """Value for `VLLM_RAY_BUNDLE_INDICES`: rank r uses bundle r."""
        return ",".join(str(i) for i in range(self.world_size))

    def table(self, bundle_indices: Sequence[int] | None = None) -> str:
        """Rank table as in the module docstring; `bundle_indices[r]` is rank r's bundle (default r)."""
        ips = dict(self.node_ips)
        lines = [f"domain {self.domain}", "rank | tpa | kvp | bundle | node (ip)"]
        for r, node in enumerate(self.bundle_nodes):
            t, k = self.coords(r)
            b = r if bundle_indices is None else bundle_indices[r]
            lines.append(f"{r:4d} | {t:3d} | {k:3d} | {b:6d} | {node} ({ips.get(node, '?')})")
        return "\n".join(lines)


def rank_order(counts: Mapping[str, int], ips: Mapping[str, str]) -> list[str]:
    """Order of nodes in rank space: fewer bundles first, then IP (string order, as vLLM), then id."""
    return sorted(counts, key=lambda n: (counts[n], ips.get(n, ""), n))


def _describe_domains(by_domain: Mapping[str, list[NodeView]]) -> str:
    parts = []
    for dom, nodes in sorted(by_domain.items()):
        free = sum(n.free_gpus for n in nodes)
        total = sum(n.total_gpus if n.total_gpus is not None else n.free_gpus for n in nodes)
        parts.append(f"{dom}: {free} free of {total} GPUs on {len(nodes)} node(s)")
    return "; ".join(parts) if parts else "no alive node with GPUs"


def _fill(nodes: Sequence[NodeView], n: int, unit: int) -> dict[str, int]:
    """Greedy: most free GPUs first, each node takes a multiple of `unit` bundles."""
    counts: dict[str, int] = {}
    left = n
    for node in sorted(nodes, key=lambda x: (-x.free_gpus, x.ip, x.node_id)):
        take = min(node.free_gpus // unit * unit, left)
        if take:
            counts[node.node_id] = take
            left -= take
        if not left:
            break
    return counts


def plan_bundles(
    nodes: Sequence[NodeView],
    world_size: int,
    kvp: int,
    *,
    domain: str | None = None,
    max_domain_gpus: int = NVL72_GPUS,
) -> BundlePlan:
    """Place `world_size` one-GPU bundles for a Helix grid inside one NVLink domain.

    Args:
        nodes: alive nodes with their free GPU counts and domain labels.
        world_size: N = KVP x TPA (vLLM `-tp N`).
        kvp: KVP = vLLM `-dcp`; consecutive ranks of one KVP group are packed on one tray if possible.
        domain: use this domain only (default: the domain with the fewest free GPUs that still fits N,
            ties by name, so large domains stay free for large engines).
        max_domain_gpus: GPUs in one NVLink domain (72 on GB200 NVL72).

    Returns:
        A `BundlePlan` whose `bundle_nodes[r]` is the node of rank r.

    Raises:
        PlacementError: the grid is invalid, exceeds a domain, or no domain has N free GPUs.
    """
    if world_size < 1 or kvp < 1:
        raise PlacementError(f"need world_size >= 1 and kvp >= 1, got -tp {world_size} -dcp {kvp}")
    if world_size % kvp:
        raise PlacementError(f"-tp {world_size} is not a multiple of -dcp {kvp} (N = KVP x TPA)")
    if world_size > max_domain_gpus:
        raise PlacementError(
            f"-tp {world_size} exceeds one NVLink domain ({max_domain_gpus} GPUs, one GB200 NVL72 rack); "
            "Helix ranks must not cross racks. Lower -tp (and -dcp) to fit one domain."
        )
    by_domain: dict[str, list[NodeView]] = defaultdict(list)
    for node in nodes:
        if node.free_gpus or (node.total_gpus or 0):
            by_domain[node.domain_key].append(node)
    if domain is not None:
        if domain not in by_domain:
            raise PlacementError(
                f"domain {domain!r} has no alive node with GPUs. "
                f"Domains: {_describe_domains(by_domain)}. {HINT}"
            )
        candidates = [domain]
    else:
        candidates = sorted(by_domain, key=lambda d: (sum(n.free_gpus for n in by_domain[d]), d))
    fits = [d for d in candidates if sum(n.free_gpus for n in by_domain[d]) >= world_size]
    if not fits:
        unlabelled = sum(1 for dom in by_domain.values() for n in dom if n.domain is None)
        label_hint = (
            f" {unlabelled} node(s) carry no {DOMAIN_LABEL} label and count as one domain each: "
            "start trays with deploy/ray-start-tray.sh."
            if unlabelled
            else ""
        )
        where = f"domain {domain!r}" if domain is not None else "any single NVLink domain"
        raise PlacementError(
            f"Helix -tp {world_size} -dcp {kvp} needs {world_size} free GPUs in {where} "
            f"(label {DOMAIN_LABEL}); ranks never cross domains. Available: {_describe_domains(by_domain)}."
            f"{label_hint} {HINT}"
        )
    chosen = fits[0]
    members = by_domain[chosen]
    counts = _fill(members, world_size, kvp)
    if sum(counts.values()) < world_size:
        counts = _fill(members, world_size, 1)  # groups must straddle trays
    ips = {n.node_id: n.ip for n in members if n.node_id in counts}
    bundle_nodes: list[str] = []
    for node_id in rank_order(counts, ips):
        bundle_nodes += [node_id] * counts[node_id]
    assert len(bundle_nodes) == world_size, (bundle_nodes, world_size)
    return BundlePlan(
        world_size=world_size,
        kvp=kvp,
        domain=chosen,
        labelled=any(n.domain is not None for n in members),
        bundle_nodes=tuple(bundle_nodes),
        node_ips=tuple(sorted(ips.items())),
    )


def order_placed_bundles(bundle_nodes: Sequence[str], ips: Mapping[str, str]) -> list[int]:
    """Rank -> bundle index for bundles Ray placed itself (unpinned): node order as `rank_order`,
    bundle index order within a node. The result is what `VLLM_RAY_BUNDLE_INDICES` should hold."""
    counts = Counter(bundle_nodes)
    by_node: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(bundle_nodes):
        by_node[node].append(i)
    return [i for node in rank_order(counts, ips) for i in by_node[node]]
