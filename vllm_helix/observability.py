# SPDX-License-Identifier: Apache-2.0
"""`GET /helix/status` and Helix gauges on vLLM's `/metrics`: served by a Helix server, with no opt-in.

No `vllm.endpoint_plugins` entry point: vLLM 0.32 loads those only when named in `VLLM_PLUGINS`, and warns on
every start of every server — stock ones included — that it found one while `VLLM_PLUGINS` is unset. Instead
the general plugin (`vllm_helix.plugin.register`, run in the API server process before the app is built) calls
`vllm_helix.compat.status_route.install_status_route`: one guarded wrapper of
`vllm.entrypoints.launchers.app.attach_endpoint_plugins`, which `build_app` calls after the core routers to
attach endpoint plugins, with `app.state.args` already set. For `--worker-cls vllm_helix.Worker` it attaches
`HelixStatusPlugin` and lists it in `app.state.endpoint_plugins`, so that vLLM's own phase B
(`init_endpoint_plugins_state`, from `init_app_state`) hands it the engine client; for any other worker it
only calls vLLM's original: a stock server has no Helix route, gauge or log line.

The router reaches the workers only through the engine client's `collective_rpc("helix_status")`, the
documented way, and refreshes these gauges (label `rank`) on every status call and every `poll_seconds`:

    vllm_helix_kv_blocks_in_use      paged KV blocks this rank has written (first attention layer)
    vllm_helix_kv_tokens             tokens whose KV this rank holds
    vllm_helix_exchange_seconds      cumulative seconds in the KVP all-to-all + combine (exposed under HOP-B)
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from vllm_helix.config import is_helix_worker

_GAUGES = None


def _gauges():
    global _GAUGES
    if _GAUGES is None:
        from prometheus_client import Gauge

        _GAUGES = {
            "kv_blocks": Gauge(
                "vllm_helix_kv_blocks_in_use",
                "Paged KV blocks written on this Helix rank",
                ["rank", "kvp_index", "tpa_index"],
                multiprocess_mode="livemax",
            ),
            "kv_tokens": Gauge(
                "vllm_helix_kv_tokens",
                "Tokens whose KV this Helix rank holds",
                ["rank", "kvp_index", "tpa_index"],
                multiprocess_mode="livemax",
            ),
            "exchange": Gauge(
                "vllm_helix_exchange_seconds",
                "Seconds spent in the Helix KVP exchange",
                ["rank", "kvp_index", "tpa_index"],
                multiprocess_mode="livemax",
            ),
        }
    return _GAUGES


def update_gauges(ranks: list[dict]) -> None:
    gauges = _gauges()
    for r in ranks:
        labels = (str(r["rank"]), str(r["kvp_index"]), str(r["tpa_index"]))
        gauges["kv_blocks"].labels(*labels).set(r["kv_blocks"])
        gauges["kv_tokens"].labels(*labels).set(r["kv_tokens"])
        gauges["exchange"].labels(*labels).set(r["exchange_seconds"])


async def collect_status(engine_client) -> dict:
    """The /helix/status document: grid, rank table and per-rank KV use and exchange time."""
    if engine_client is None:
        return {"active": False, "reason": "no engine"}
    try:
        ranks = await engine_client.collective_rpc("helix_status", timeout=30)
    except Exception as exc:  # a stock worker has no helix_status
        return {"active": False, "reason": f"{type(exc).__name__}: {exc}"[:300]}
    ranks = sorted(ranks, key=lambda r: r["rank"])
    update_gauges(ranks)
    return {"active": True, "grid": ranks[0]["grid"], "ranks": ranks}


class HelixStatusPlugin:
    """`GET /helix/status` plus the gauges above, in the shape of a vLLM 0.32 endpoint plugin
    (`vllm.plugins.endpoint_plugins.interface.EndpointPlugin`), attached by
    `vllm_helix.compat.status_route`."""

    name = "helix_status"
    required_tasks = ("generate",)
    poll_seconds = 5.0

    def attach_router(self, app: FastAPI) -> None:
        router = APIRouter()

        @router.get("/helix/status")
        async def helix_status(request: Request) -> JSONResponse:
            return JSONResponse(await collect_status(getattr(request.app.state, "helix_engine_client", None)))

        app.include_router(router)

    async def init_state(self, engine_client, state, args) -> None:
        state.helix_engine_client = engine_client
        if engine_client is not None:
            state.helix_poll_task = asyncio.get_running_loop().create_task(self._poll(engine_client))

    async def _poll(self, engine_client) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            with contextlib.suppress(Exception):
                await collect_status(engine_client)


def serves_helix_status(app: FastAPI, supported_tasks) -> bool:
    """The guard: the app is built for `--worker-cls vllm_helix.Worker` and serves generation."""
    args = getattr(app.state, "args", None)
    tasks = set(supported_tasks or ())
    return is_helix_worker(getattr(args, "worker_cls", None)) and bool(
        tasks & set(HelixStatusPlugin.required_tasks)
    )
