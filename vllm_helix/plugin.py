# SPDX-License-Identifier: Apache-2.0
"""The `vllm.general_plugins` entry point: `register()`.

vLLM calls it in every process (API server, engine core, each worker). It is idempotent and cheap, and
changes nothing in vLLM's behaviour unless `--worker-cls vllm_helix.Worker` is used: it only installs the
guarded config wrappers of `vllm_helix.compat.config_checks` and, in an API server process, the guarded
`/helix/status` route (`vllm_helix.compat.status_route`). The attention backend, model re-sharding and slot
mapping are installed by the Helix worker itself, in its own process (every hook: `vllm_helix.compat`).
"""

from __future__ import annotations

import sys

_REGISTERED = False


def register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from vllm_helix.compat import config_checks

    config_checks.apply()
    if "vllm.entrypoints.launchers.app" in sys.modules:  # an API server (not engine core, not a worker)
        from vllm_helix.compat.status_route import install_status_route

        install_status_route()
    _REGISTERED = True
