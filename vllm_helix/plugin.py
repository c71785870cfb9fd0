# SPDX-License-Identifier: Apache-2.0
"""The `vllm.general_plugins` entry point: `register()`.

vLLM calls it in every process (API server, engine core, each worker). It is idempotent and cheap, and changes
nothing in vLLM's behaviour unless `--worker-cls vllm_helix.Worker` is used: it only installs the guarded config
wrappers of `vllm_helix.patches`. The attention backend, model re-sharding and slot mapping are installed by the
Helix worker itself, in its own process.
"""

from __future__ import annotations

_REGISTERED = False


def register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from vllm_helix import patches

    patches.apply()
    _REGISTERED = True
