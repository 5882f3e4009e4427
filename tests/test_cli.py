"""The `meshfleet` command: exit codes and messages, and real processes end to end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from meshfleet import jointokens
from meshfleet.cli import main
from meshfleet.demo import EXAMPLES

ADD = ["cluster", "add", "east", "--region", "us-east", "--zone", "us-east-1a", "--network", "n1"]


def test_cluster_add_prints_a_join_token_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ADD, "--state-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    token = jointokens.parse(out.strip())
    assert "valid until" in err
    assert token.secret not in (tmp_path / "hub.db").read_bytes().decode(errors="replace")
    assert main([*ADD, "--state-dir", str(tmp_path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["cluster", "token", "east", "--state-dir", str(tmp_path)]) == 0
    assert jointokens.parse(capsys.readouterr().out.strip()).token_id != token.token_id


@pytest.mark.parametrize("args, message", [
    pytest.param(["cluster", "add", "East_1", "--region", "r", "--zone", "z", "--network", "n"],
                 "cluster name", id="bad-name"),
    pytest.param(["cluster", "add", "east", "--region", "us/east", "--zone", "z", "--network", "n"],
                 "region", id="slash-in-region"),
    pytest.param([*ADD, "--ttl", "soon"], "invalid duration", id="bad-ttl"),
    pytest.param(["cluster", "token", "nope"], "unknown cluster 'nope'", id="token-unknown-cluster"),
    pytest.param(["cluster", "remove", "nope"], "unknown cluster 'nope'", id="remove-unknown-cluster"),
])
def test_cluster_commands_refuse_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                           message: str) -> None:
    assert main([*args, "--state-dir", str(tmp_path)]) == 1
    assert message in capsys.readouterr().err


def test_cluster_add_labels_show_in_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ADD, "--label", "env=prod", "--label", "example.com/tier=", "--state-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["status", "--state-dir", str(tmp_path), "-o", "json"]) == 0
    [east] = json.loads(capsys.readouterr().out)["clusters"]
    assert (east["labels"], east["origin"]) == ({"env": "prod", "example.com/tier": ""}, "cli")


@pytest.mark.parametrize("label, message", [
    pytest.param("env", "expected KEY=VALUE", id="no-equals"),
    pytest.param("=prod", "label key ''", id="empty-key"),
    pytest.param("bad key=x", "label key 'bad key'", id="space-in-key"),
    pytest.param("env=not ok", "label value 'not ok'", id="space-in-value"),
    pytest.param("env=" + "x" * 64, "no more than 63 characters", id="value-too-long"),
    pytest.param("a/b/c=x", "label key 'a/b/c'", id="two-slashes"),
])
def test_cluster_add_refuses_a_malformed_label_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           label: str, message: str) -> None:
    assert main([*ADD, "--label", "ok=yes", "--label", label, "--state-dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert message in err and err.startswith("error: --label")
    assert out == ""
    assert not (tmp_path / "hub.db").exists()  # refused before anything was stored


def test_cluster_add_refuses_a_label_given_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ADD, "--label", "env=a", "--label", "env=b", "--state-dir", str(tmp_path)]) == 2
    assert "given twice" in capsys.readouterr().err


def test_cluster_remove_leaves_a_meshcluster_managed_cluster_unless_forced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mgmt.registry import ORIGIN_MESHCLUSTER, Registry

    registry = Registry(tmp_path)
    registry.add_cluster("east", "us-east", "us-east-1a", "n1", 1.0, origin=ORIGIN_MESHCLUSTER)
    registry.close()
    assert main(["cluster", "token", "east", "--state-dir", str(tmp_path)]) == 0  # MeshCluster entries get tokens
    capsys.readouterr()
    assert main(["cluster", "remove", "east", "--state-dir", str(tmp_path)]) == 1
    assert "kubectl delete meshcluster east" in capsys.readouterr().err
    assert main(["cluster", "remove", "east", "--force", "--state-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["status", "--state-dir", str(tmp_path), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["clusters"] == []


def test_status_without_state_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--state-dir", str(tmp_path)]) == 1
    assert "no hub state" in capsys.readouterr().err


def test_status_json_lists_pending_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ADD, "--state-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["status", "--state-dir", str(tmp_path), "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(c["name"], c["connection"], c["registered"]) for c in doc["clusters"]] == [("east", "Pending", False)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def meshfleet(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshfleet.cli", *args]


@pytest.mark.slow
def test_hub_and_agent_processes_converge_and_stop_cleanly(tmp_path: Path) -> None:
    hub_dir, port = tmp_path / "hub", free_port()
    bport = free_port()
    token = subprocess.run(meshfleet("cluster", "add", "us-east-1", "--region", "us-east", "--zone", "us-east-1a",
                                     "--network", "net-us-east", "--state-dir", str(hub_dir)),
                           check=True, capture_output=True, text=True).stdout.strip()
    hub_log, agent_log = (tmp_path / "hub.log").open("w"), (tmp_path / "agent.log").open("w")
    procs = [subprocess.Popen(meshfleet("hub", "--state-dir", str(hub_dir), "--listen", f"127.0.0.1:{port}",
                                        "--bootstrap-listen", f"127.0.0.1:{bport}", "--policies",
                                        str(EXAMPLES / "policies"), "--heartbeat-interval", "0.5"),
                              stderr=hub_log)]
    try:
        procs.append(subprocess.Popen(meshfleet(
            "agent", "--hub", f"127.0.0.1:{port}", "--hub-bootstrap", f"127.0.0.1:{bport}", "--cluster",
            "us-east-1", "--token", token, "--state-dir", str(tmp_path / "agent"), "--inventory",
            str(EXAMPLES / "inventories" / "us-east-1.yaml"), "--output", str(tmp_path / "out"),
            "--heartbeat-interval", "0.5"), stderr=agent_log))
        deadline = time.monotonic() + 30
        doc: dict[str, list[dict[str, object]]] = {"clusters": []}
        while time.monotonic() < deadline:
            out = subprocess.run(meshfleet("status", "--state-dir", str(hub_dir), "-o", "json"),
                                 capture_output=True, text=True)
            doc = json.loads(out.stdout) if out.returncode == 0 else doc
            if doc["clusters"] and doc["clusters"][0]["inSync"] and doc["clusters"][0]["connection"] == "Connected":
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"agent never in sync: {doc}")
        assert (tmp_path / "out" / "bookinfo" / "virtualservice-reviews-global.yaml").exists()
        assert os.stat(tmp_path / "agent" / "agent.key").st_mode & 0o777 == 0o600
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=15) for p in procs]
        hub_log.close()
        agent_log.close()
    assert codes == [0, 0], [(tmp_path / f"{n}.log").read_text() for n in ("hub", "agent")]


def test_agent_with_bad_token_exits_3_with_message(tmp_path: Path) -> None:
    result = subprocess.run(meshfleet("agent", "--hub", "127.0.0.1:1", "--cluster", "c1", "--token", "nonsense",
                                      "--state-dir", str(tmp_path / "s"), "--inventory", str(tmp_path / "i.yaml"),
                                      "--output", str(tmp_path / "o")), capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert "malformed join token" in result.stderr


@pytest.mark.slow
def test_demo_converges_and_prints_the_table(tmp_path: Path) -> None:
    result = subprocess.run(meshfleet("--log-level", "ERROR", "demo", "--clusters", "4", "--workdir", str(tmp_path)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["CLUSTER", "REGION", "CONNECTED"]
    assert sum("Connected" in ln for ln in lines) == 4
    assert "converged: 4 clusters" in result.stdout
    assert (tmp_path / "clusters" / "us-east-1" / "bookinfo" / "virtualservice-reviews-global.yaml").exists()


def test_demo_that_cannot_converge_in_time_exits_1(tmp_path: Path) -> None:
    result = subprocess.run(meshfleet("demo", "--timeout", "0.001", "--workdir", str(tmp_path)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "did not converge within 0.001 s" in result.stderr


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "nobody"}}],
        "users": [{"name": "nobody", "user": {}}]}))
    return path


@pytest.mark.slow
def test_hub_and_agent_in_kubernetes_mode(tmp_path: Path) -> None:
    """`hub --kubeconfig` watches CRs on one fake API server; `agent --kubeconfig` applies to another."""
    from kubernetes.client import CustomObjectsApi

    from tests.fakekube import FakeKube

    with FakeKube() as hub_cluster, FakeKube() as workload:
        workload.put({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "bookinfo", "name": "reviews"},
                      "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]}})
        hub_dir, port, bport = tmp_path / "hub", free_port(), free_port()
        token = subprocess.run(meshfleet("cluster", "add", "us-east-1", "--region", "us-east", "--zone", "a",
                                         "--network", "n1", "--state-dir", str(hub_dir)),
                               check=True, capture_output=True, text=True).stdout.strip()
        logs = [(tmp_path / "hub.log").open("w"), (tmp_path / "agent.log").open("w")]
        procs = [subprocess.Popen(meshfleet("hub", "--state-dir", str(hub_dir), "--listen", f"127.0.0.1:{port}",
                                            "--bootstrap-listen", f"127.0.0.1:{bport}", "--kubeconfig",
                                            str(kubeconfig(tmp_path / "hub.kubeconfig", hub_cluster.url))),
                                  stderr=logs[0]),
                 subprocess.Popen(meshfleet("agent", "--hub", f"127.0.0.1:{port}", "--hub-bootstrap",
                                            f"127.0.0.1:{bport}", "--cluster", "us-east-1", "--token", token,
                                            "--state-dir", str(tmp_path / "agent"), "--kubeconfig",
                                            str(kubeconfig(tmp_path / "agent.kubeconfig", workload.url)),
                                            "--discovery-interval", "0.5"), stderr=logs[1])]
        try:
            with hub_cluster.api_client() as api:
                policy = {"apiVersion": "meshfleet.io/v1alpha1", "kind": "TrafficPolicy",
                          "metadata": {"name": "reviews-local", "namespace": "bookinfo"},
                          "spec": {"destination": {"service": "reviews"},
                                   "route": [{"cluster": "us-east-1", "weight": 100}]}}
                CustomObjectsApi(api).patch_namespaced_custom_object(
                    "meshfleet.io", "v1alpha1", "bookinfo", "trafficpolicies", "reviews-local", policy,
                    field_manager="kubectl", force=True, _content_type="application/apply-patch+yaml")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                vs = workload.get("networking.istio.io/v1", "VirtualService", "reviews-global", "bookinfo")
                if vs is not None:
                    break
                time.sleep(0.2)
            assert vs is not None, [(tmp_path / f"{n}.log").read_text()[-2000:] for n in ("hub", "agent")]
            assert vs["spec"]["http"][0]["route"] == [
                {"destination": {"host": "reviews.bookinfo.global", "subset": "us-east-1"}, "weight": 100}]
            # and the hub writes back, through the status subresource, that the cluster applied it
            state = None
            while time.monotonic() < deadline and state != "Applied":
                cr = hub_cluster.get("meshfleet.io/v1alpha1", "TrafficPolicy", "reviews-local", "bookinfo") or {}
                state = next((c["state"] for c in (cr.get("status") or {}).get("clusters", [])), None)
                time.sleep(0.2)
            assert state == "Applied", cr.get("status")
        finally:
            for p in reversed(procs):
                p.send_signal(signal.SIGTERM)
            codes = [p.wait(timeout=15) for p in procs]
            for log in logs:
                log.close()
        assert codes == [0, 0], [(tmp_path / f"{n}.log").read_text()[-2000:] for n in ("hub", "agent")]
