# SPDX-License-Identifier: Apache-2.0
"""`vllm-helix serve-ray`: place a Helix engine in one NVLink domain of a Ray cluster, run `vllm serve` there.

    vllm-helix serve-ray --address 10.0.0.1:6379 -tp 16 -dcp 4 -- /models/llama --port 8000 \\
        --worker-cls vllm_helix.Worker

Everything after our own options (and an optional `--`) goes to `vllm serve` unchanged; we add
`-tp N -dcp KVP --distributed-executor-backend ray --host HOST`. `--dry-run` prints the rank table only.
The group lives as long as this process: Ctrl-C stops the server and frees the GPUs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["build_parser", "serve_ray_main", "vllm_argv"]

# Never copied from this host to the launcher: they name this host's devices / addresses.
_HOST_SPECIFIC = {"VLLM_HOST_IP", "VLLM_HOST_PORT", "CUDA_VISIBLE_DEVICES", "LOCAL_RANK"}
_FORWARD_PREFIXES = ("VLLM_", "NCCL_", "HF_")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm-helix serve-ray",
        description="Place N = KVP x TPA one-GPU bundles in one NVLink domain and run `vllm serve` there.",
        epilog="Unrecognised arguments are passed to `vllm serve` (model first).",
    )
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or 'auto')")
    p.add_argument("-tp", "--tensor-parallel-size", dest="tp", type=int, required=True, help="N = KVP x TPA")
    p.add_argument("-dcp", "--decode-context-parallel-size", dest="kvp", type=int, default=1, help="KVP")
    p.add_argument("-pp", "--pipeline-parallel-size", dest="pp", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--distributed-executor-backend", dest="backend", default="ray", choices=["ray"],
                   help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--host", default="127.0.0.1",
                   help="API server address (127.0.0.1; '{node_ip}': the serving tray's IP)")  # fmt: skip
    p.add_argument("--domain", default=None, help="use this ray.io/gpu-domain (default: best fit)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the placement group")
    p.add_argument("--device-key", default="GPU", help="Ray resource per rank (GPU; a custom key on CPU)")
    p.add_argument("--cpus-per-bundle", type=float, default=0.0, help="CPUs reserved with each rank's GPU")
    p.add_argument("--launcher-cpus", type=float, default=1.0, help="CPUs for the vllm serve process")
    p.add_argument("--launcher-label", action="append", default=[], metavar="KEY=VALUE",
                   help="run vllm serve on the tray with this Ray label (default: rank 0's)")  # fmt: skip
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for one domain to have N free GPUs (trays joining)")  # fmt: skip
    p.add_argument("--no-pin-trays", dest="pin", action="store_false",
                   help="let Ray pick trays inside the domain (rank order follows Ray's choice)")  # fmt: skip
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for vllm serve (repeatable)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the rank table and exit")
    return p


def vllm_argv(args: argparse.Namespace, rest: list[str]) -> list[str]:
    """The `sys.argv` the vLLM CLI sees inside the launcher actor."""
    rest = rest[1:] if rest[:1] == ["--"] else rest
    return [
        "vllm", "serve", *rest,
        "--tensor-parallel-size", str(args.tp),
        "--decode-context-parallel-size", str(args.kvp),
        "--distributed-executor-backend", "ray",
        "--host", args.host,
    ]  # fmt: skip


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _launcher_env(extra: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARD_PREFIXES) and k not in _HOST_SPECIFIC}
    env |= _pairs(extra, "--env")
    env.pop("VLLM_RAY_BUNDLE_INDICES", None)  # ours, from the placement
    return env


def _plan_when_ready(args: argparse.Namespace):
    """Plan on the live cluster, retrying for up to `--wait` seconds while trays join."""
    from vllm_helix.placement.layout import PlacementError, plan_bundles
    from vllm_helix.placement.ray_adapter import cluster_view

    deadline = time.monotonic() + args.wait
    while True:
        try:
            return plan_bundles(cluster_view(args.device_key), args.tp, args.kvp, domain=args.domain)
        except PlacementError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


def serve_ray_main(argv: list[str]) -> int:
    """Entry point for `vllm-helix serve-ray`; returns the process exit code."""
    args, rest = build_parser().parse_known_args(argv)
    if args.pp != 1:
        print("serve-ray places one Helix TP group; pipeline parallel is not supported", file=sys.stderr)
        return 2
    if not args.dry_run and not [a for a in rest if a != "--"]:
        print("serve-ray: give the model (and any vllm serve options) after the placement options",
              file=sys.stderr)  # fmt: skip
        return 2

    import ray

    from vllm_helix.placement.layout import PlacementError
    from vllm_helix.placement.ray_adapter import create_placement_group, launch_serve

    env = _launcher_env(args.env)
    launcher_labels = _pairs(args.launcher_label, "--launcher-label")
    ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or "auto", namespace="vllm-helix")
    placement = None
    try:
        plan = _plan_when_ready(args)
        if args.dry_run:
            print(plan.table())
            return 0
        placement = create_placement_group(
            plan,
            device_key=args.device_key,
            cpus_per_bundle=args.cpus_per_bundle,
            launcher_cpus=args.launcher_cpus or 1.0,
            launcher_labels=launcher_labels,
            pin=args.pin,
            timeout_s=args.timeout,
        )
        print(placement.plan.table(placement.bundle_indices), flush=True)
        if placement.plan.split_groups():
            print(f"note: KVP groups {placement.plan.split_groups()} span more than one tray", flush=True)
        actor, done = launch_serve(
            placement, vllm_argv(args, rest), env=env, launcher_cpus=args.launcher_cpus or 1.0
        )
        try:
            return int(ray.get(done))
        except KeyboardInterrupt:
            ray.kill(actor)
            return 130
        except ray.exceptions.RayError as e:  # the server's actor died: vLLM's own error is in the log above
            print(f"serve-ray: vllm serve failed: {type(e).__name__}: {str(e)[-2000:]}", file=sys.stderr)
            return 1
    except PlacementError as e:
        print(f"serve-ray: {e}", file=sys.stderr)
        return 1
    finally:
        if placement is not None:
            placement.remove()
        ray.shutdown()


if __name__ == "__main__":
    raise SystemExit(serve_ray_main(sys.argv[1:]))
