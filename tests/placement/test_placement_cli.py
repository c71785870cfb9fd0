# SPDX-License-Identifier: Apache-2.0
"""The Ray shell without a cluster: placement-group arguments and the serve-ray command line."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from vllm_helix.placement.cli import _launcher_env, build_parser, serve_ray_main, vllm_argv  # noqa: E402
from vllm_helix.placement.layout import NodeView, plan_bundles  # noqa: E402
from vllm_helix.placement.ray_adapter import placement_group_args  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def _plan(labelled: bool = True):
    dom = "rack-0" if labelled else None
    nodes = [NodeView("a", 4, dom, "10.0.0.1", 4), NodeView("b", 4, dom, "10.0.0.2", 4)]
    return plan_bundles(nodes, 6 if labelled else 3, 3)


def test_topology_strategy_with_pinned_trays():
    bundles, kw = placement_group_args(_plan(), topology=True, cpus_per_bundle=2)
    assert bundles == [{"GPU": 1.0, "CPU": 2.0}] * 6 + [{"CPU": 1.0}]
    assert kw["topology_strategy"] == {"ray.io/gpu-domain": "STRICT_PACK", "ray.io/node-id": "PACK"}
    assert "strategy" not in kw  # Ray rejects strategy= together with topology_strategy
    assert [s["ray.io/node-id"] for s in kw["bundle_label_selector"]] == ["a"] * 3 + ["b"] * 3 + ["a"]


def test_label_selector_fallback_keeps_the_domain():
    bundles, kw = placement_group_args(_plan(), topology=False, launcher_cpus=0, pin=False)
    assert len(bundles) == 6 and kw["strategy"] == "PACK" and "topology_strategy" not in kw
    assert kw["bundle_label_selector"] == [{"ray.io/gpu-domain": "rack-0"}] * 6


def test_launcher_label_stays_in_the_domain():
    _, kw = placement_group_args(_plan(), topology=True, launcher_labels={"vllm-helix.io/role": "api"})
    assert "topology_strategy" in kw and kw["bundle_label_selector"][-1] == {"vllm-helix.io/role": "api"}
    _, kw = placement_group_args(_plan(), topology=False, launcher_labels={"vllm-helix.io/role": "api"})
    assert kw["bundle_label_selector"][-1] == {"ray.io/gpu-domain": "rack-0", "vllm-helix.io/role": "api"}
    assert kw["bundle_label_selector"][0] == {"ray.io/node-id": "a", "ray.io/gpu-domain": "rack-0"}


def test_unlabelled_node_is_pinned_without_topology():
    _, kw = placement_group_args(_plan(labelled=False), topology=True, pin=False, device_key="vcpu")
    assert kw["strategy"] == "PACK"
    assert all(s == {"ray.io/node-id": "a"} for s in kw["bundle_label_selector"][:3])


def test_vllm_argv_adds_grid_backend_and_loopback_host():
    args, rest = build_parser().parse_known_args(
        [
            "--address",
            "x:1",
            "-tp",
            "8",
            "-dcp",
            "2",
            "--",
            "/m",
            "--port",
            "9",
            "--worker-cls",
            "vllm_helix.Worker",
        ]  # fmt: skip
    )
    argv = vllm_argv(args, rest)
    assert argv[:6] == ["vllm", "serve", "/m", "--port", "9", "--worker-cls"]
    assert argv[-8:] == ["--tensor-parallel-size", "8", "--decode-context-parallel-size", "2",
                         "--distributed-executor-backend", "ray", "--host", "127.0.0.1"]  # fmt: skip


def test_launcher_env_forwards_vllm_settings_but_not_host_specific(monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_HOST_IP", "10.9.9.9")
    monkeypatch.setenv("VLLM_RAY_BUNDLE_INDICES", "3,2,1,0")
    env = _launcher_env(["NCCL_DEBUG=INFO"])
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1" and env["NCCL_DEBUG"] == "INFO"
    assert "VLLM_HOST_IP" not in env and "VLLM_RAY_BUNDLE_INDICES" not in env
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        _launcher_env(["oops"])


def test_cli_refuses_bad_usage_before_touching_ray(capsys):
    assert serve_ray_main(["-tp", "8", "-dcp", "2", "-pp", "2", "/m"]) == 2
    assert "pipeline parallel" in capsys.readouterr().err
    assert serve_ray_main(["-tp", "8", "-dcp", "2"]) == 2
    assert "give the model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve_ray_main(["-tp", "8", "--distributed-executor-backend", "mp", "/m"])


def _tray_script(tmp_path, *args, smi_lines=None, env=None):
    import subprocess
    from pathlib import Path

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if smi_lines is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\n" + "".join(f"echo '{line}'\n" for line in smi_lines))
        smi.chmod(0o755)
    script = Path(__file__).resolve().parents[2] / "deploy" / "ray-start-tray.sh"
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "NODE_IP": "10.0.0.5"} | (env or {})
    return subprocess.run(["bash", str(script), *args, "--dry-run"], env=full_env, capture_output=True,
                          text=True, timeout=30)  # fmt: skip


def test_tray_script_labels_the_clique_from_nvidia_smi(tmp_path):
    r = _tray_script(tmp_path, "--address", "10.0.0.1:6379", smi_lines=["uuid-1, 7"] * 4)
    assert r.returncode == 0, r.stderr
    assert "--labels=ray.io/gpu-domain=uuid-1.7,ray.io/accelerator-type=GB200" in r.stderr
    assert "--num-gpus=4" in r.stderr and "--node-manager-port=6380" in r.stderr


def test_tray_script_head_dashboard_on_loopback_and_refuses_unknown_clique(tmp_path):
    r = _tray_script(tmp_path, "--head", env={"NVIDIA_GPU_CLIQUE": "c.1"})
    assert r.returncode == 0 and "--dashboard-host=127.0.0.1" in r.stderr and "gpu-domain=c.1" in r.stderr
    r = _tray_script(tmp_path, "--address", "h:6379", smi_lines=["uuid-1, 7", "uuid-1, 8"])
    assert r.returncode == 1 and "different NVLink cliques" in r.stderr
    r = _tray_script(tmp_path, "--address", "h:6379", smi_lines=["N/A, N/A"] * 4)  # no NVLink fabric
    assert r.returncode == 1 and "--domain NAME" in r.stderr


def test_kuberay_manifest_is_one_private_rack_of_18_trays():
    import shlex
    import subprocess
    from pathlib import Path

    yaml = pytest.importorskip("yaml")
    path = Path(__file__).resolve().parents[2] / "deploy" / "kuberay-rayservice-nvl72.yaml"
    docs = {d["kind"]: d for d in yaml.safe_load_all(path.read_text())}
    rc = docs["RayCluster"]["spec"]
    groups = rc["workerGroupSpecs"]
    assert sum(g["replicas"] for g in groups) == 18
    for g in groups:
        pod = g["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
        assert pod["nodeSelector"]["nvidia.com/gpu.clique"] == g["template"]["metadata"]["labels"][
            "vllm-helix.io/nvlink-clique"]  # fmt: skip
    assert rc["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert docs["Service"]["spec"]["type"] == "ClusterIP"
    assert rc["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    scripts = [rc["headGroupSpec"]["template"]["spec"]["containers"][0]["args"][0]]
    scripts += [g["template"]["spec"]["containers"][0]["args"][0] for g in groups]
    for script in scripts:
        assert subprocess.run(["bash", "-n"], input=script, text=True, timeout=10).returncode == 0
    line = scripts[0][scripts[0].index("vllm-helix serve-ray") :].replace("\\\n", " ").splitlines()[0]
    args, rest = build_parser().parse_known_args(shlex.split(line)[2:])
    assert (args.tp, args.kvp, args.launcher_label) == (72, 4, ["vllm-helix.io/role=api"])
    assert "--worker-cls" in rest and "vllm_helix.Worker" in rest
    assert "vllm-helix.io/role=api" in scripts[1] and "vllm-helix.io/role=api" not in scripts[2]
