# SPDX-License-Identifier: Apache-2.0
"""`GET /helix/status` on a Helix server: one guarded wrapper of vLLM 0.32's
`vllm.entrypoints.launchers.app.attach_endpoint_plugins`.

Why here and not a `vllm.endpoint_plugins` entry point: vLLM 0.32 loads those only when named in
`VLLM_PLUGINS`, and warns on every start of every server — stock ones included — that it found one while
`VLLM_PLUGINS` is unset. `build_app` (same module; `vllm.entrypoints.openai.api_server` re-exports it) calls
`attach_endpoint_plugins` after the core routers, with `app.state.args` already set, and looks the name up in
its module at call time, so replacing the module attribute is enough.

Guard: `vllm_helix.observability.serves_helix_status` (the app is built for `--worker-cls vllm_helix.Worker`
and serves generation); for any other worker only vLLM's original runs.
"""

from __future__ import annotations

import functools
import sys

from vllm_helix.compat import wrap_once

APP_MODULE = "vllm.entrypoints.launchers.app"  # defines build_app and imports attach_endpoint_plugins by name


def _with_helix_status(original):
    @functools.wraps(original)
    def attach_endpoint_plugins(app, supported_tasks, *args, **kwargs):
        from vllm_helix.observability import HelixStatusPlugin, serves_helix_status

        result = original(app, supported_tasks, *args, **kwargs)  # vLLM's own endpoint plugins, unchanged
        if serves_helix_status(app, supported_tasks):
            plugin = HelixStatusPlugin()
            plugin.attach_router(app)
            app.state.endpoint_plugins = [*getattr(app.state, "endpoint_plugins", []), plugin]  # phase B
            app.openapi_schema = None
        return result

    return attach_endpoint_plugins


def install_status_route() -> bool:
    """Wrap `attach_endpoint_plugins` once if its module is loaded — it is in every API server process
    (`vllm serve` imports it before any plugin runs), nowhere else. Returns whether the wrapper is in
    place."""
    module = sys.modules.get(APP_MODULE)
    if getattr(module, "attach_endpoint_plugins", None) is None:
        return False
    wrap_once(module, "attach_endpoint_plugins", _with_helix_status)
    return True
