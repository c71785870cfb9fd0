# SPDX-License-Identifier: Apache-2.0
"""With vllm-helix installed, stock vLLM (no `--worker-cls vllm_helix.Worker`) behaves exactly as without it
and shows nothing of Helix: the same tokens at TP = 2 (vLLM's CPU communicator on the path — its shared-memory
ops where vLLM's CPU build has them, i.e. on AVX-512 machines), the same attention implementation, no log line
of an offline engine or of `vllm serve` that mentions Helix (such as vLLM's warning about an endpoint-plugin
entry point while `VLLM_PLUGINS` is unset), no /helix/status route and no Helix gauge. The plugin is checked
to be loaded in the stock runs, so that the comparison is not vacuous.
"""

import os

import pytest
import requests

from tests.e2e.conftest import llm_args, prompt_ids
from tests.e2e.engine import REPO, run_engine
from tests.e2e.server import vllm_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

RPC = {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}  # lets collective_rpc ship the inspection functions
CPU_ATTN = "vllm.v1.attention.backends.cpu_attn.CPUAttentionBackendImpl"


def helix_plugin_loaded(worker) -> bool:
    """Run inside a worker (collective_rpc): whether the general plugin ran in this process (its config
    wrappers are installed), i.e. whether this stock engine really had the package's plugin loaded."""
    from vllm.config.vllm import VllmConfig

    return bool(getattr(VllmConfig.__post_init__, "__helix_patched__", False))


def assert_no_helix(log: str, where: str) -> None:
    """No line of `log` mentions Helix (case-insensitive). The test's own traces do not count: the checkout's
    path, the engine runner's RESULT line (it names this module's rpc function) and the access-log line of the
    test's own `GET /helix/status` (answered 404)."""
    lines = [
        line
        for line in log.replace(str(REPO), "<checkout>").splitlines()
        if "helix" in line.lower()
        and not line.startswith("RESULT ")
        and '"GET /helix/status HTTP/1.1" 404' not in line
    ]
    assert not lines, f"{where} mentions Helix:\n" + "\n".join(lines[:20])


@pytest.fixture
def stock_user_env(monkeypatch):
    """The environment of a stock user: none of Helix's own variables, no VLLM_PLUGINS allow-list."""
    for name in list(os.environ):
        if name.startswith("VLLM_HELIX") or name == "VLLM_PLUGINS":
            monkeypatch.delenv(name)


def test_stock_tp2_is_identical_with_and_without_the_plugin_and_silent(tiny_models, stock_user_env):
    prompts = prompt_ids(5, [7, 45, 130])
    loaded = "tests.e2e.test_stock_unaffected:helix_plugin_loaded"
    spec = {
        "llm": llm_args(tiny_models["gqa2"], tp=2),
        "prompts": prompts,
        "max_tokens": 24,
        "impl_classes": True,
        "phases": [{"prompts": prompts[:1], "rpc_after": [loaded]}],
    }
    log: list[str] = []
    with_plugin = run_engine(spec, env_extra=RPC, log=log)
    without_plugin = run_engine(spec, env_extra={**RPC, "VLLM_PLUGINS": "none-such"})  # no general plugin
    assert with_plugin["phases"][0]["rpc"][loaded] == [True, True]
    assert without_plugin["phases"][0]["rpc"][loaded] == [False, False]
    assert with_plugin["tokens"] == without_plugin["tokens"]
    assert with_plugin["phases"][0]["tokens"] == without_plugin["phases"][0]["tokens"]
    assert with_plugin["impl_classes"] == without_plugin["impl_classes"] == [[CPU_ATTN], [CPU_ATTN]]
    assert_no_helix(log[0], "stock offline LLM (TP = 2) with vllm-helix installed")


def test_stock_vllm_serve_is_silent_and_serves_no_helix_route(tiny_models, stock_user_env):
    from importlib.metadata import entry_points

    # what `vllm serve` loads here (no VLLM_PLUGINS): the package's general plugin, and no endpoint plugin
    assert "helix" in {ep.name for ep in entry_points(group="vllm.general_plugins")}
    assert not [ep for ep in entry_points(group="vllm.endpoint_plugins") if ep.value.startswith("vllm_helix")]
    model = str(tiny_models["gqa2"])
    log: list[str] = []
    args = [
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "512",
        "--max-num-seqs",
        "4",
        "--skip-tokenizer-init",
    ]
    with vllm_server(model, args, log_text=log) as (base, _):
        reply = requests.post(
            f"{base}/v1/completions",
            timeout=120,
            json={"model": model, "prompt": prompt_ids(6, [20])[0], "max_tokens": 8, "temperature": 0},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["finish_reason"] == "length"
        assert requests.get(f"{base}/helix/status", timeout=30).status_code == 404
        assert "helix" not in requests.get(f"{base}/metrics", timeout=30).text.lower()
        assert "/helix/status" not in requests.get(f"{base}/openapi.json", timeout=30).text
    assert "Found endpoint plugin" not in log[0]
    assert_no_helix(log[0], "stock `vllm serve` with vllm-helix installed")


def test_stock_dcp_limit_is_still_enforced_without_the_helix_worker(tiny_models):
    """vLLM's own DCP checks (TP > KV heads, DCP ≤ TP / KV heads) still refuse what only Helix can run."""
    with pytest.raises(AssertionError, match="Decode context parallelism for GQA/MQA requires"):
        run_engine({"llm": llm_args(tiny_models["gqa2"], tp=2, dcp=2), "prompts": [[1, 2, 3]]}, timeout=120)


def test_register_is_idempotent_and_leaves_non_helix_configs_alone():
    from vllm.config.model import ModelConfig

    from vllm_helix import plugin

    plugin.register()
    first = ModelConfig.verify_with_parallel_config
    plugin.register()
    assert ModelConfig.verify_with_parallel_config is first
    assert getattr(first, "__helix_patched__", False) and first.__wrapped__ is not None


def test_status_route_is_attached_only_for_the_helix_worker():
    """The one hook into vLLM's app construction: for a stock server `build_app` gets exactly vLLM's own
    endpoint-plugin wiring (no Helix route, no plugin state); for `--worker-cls vllm_helix.Worker` the
    /helix/status route and its phase-B plugin."""
    import vllm.entrypoints.launchers.app as app_module  # an API server process imports it before plugins run
    from fastapi import FastAPI

    from vllm_helix.compat import status_route

    assert status_route.install_status_route()
    status_route.install_status_route()  # idempotent: one wrapper
    wrapper = app_module.attach_endpoint_plugins
    assert wrapper.__helix_patched__ and not getattr(wrapper.__wrapped__, "__helix_patched__", False)

    def build(worker_cls, tasks=("generate",)):
        app = FastAPI()
        app.state.args = type("Args", (), {"worker_cls": worker_cls})()
        wrapper(app, tasks)
        return app

    for stock in (
        build("auto"),
        build(None),
        build("vllm.v1.worker.cpu_worker.CPUWorker"),
        build("vllm_helix.Worker", tasks=("embed",)),
    ):
        assert not [r for r in stock.routes if "helix" in getattr(r, "path", "")]
        assert not [p for p in getattr(stock.state, "endpoint_plugins", []) if "helix" in p.name]
    for worker_cls in ("vllm_helix.Worker", "vllm_helix.worker.Worker"):
        helix = build(worker_cls)
        assert [r.path for r in helix.routes if "helix" in getattr(r, "path", "")] == ["/helix/status"]
        assert [p.name for p in helix.state.endpoint_plugins] == ["helix_status"]
