"""The mesh CA in Kubernetes mode: a TrustPolicy CR on the hub's API server, cacerts Secrets in each cluster's.

Every API server is tests.fakekube over HTTP with the real `kubernetes` client. The hub keeps its
generated root as a Secret in its own namespace; each agent keeps `istio-system/cacerts` in its
cluster; the TrustPolicy's status shows the phase, the roots and each cluster's state.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import CustomObjectsApi

from agent.applying import KubernetesSink
from agent.cacerts import SecretCaStore
from agent.discovering import ClusterDiscovery
from agent.kubeapi import Rest, RetryPolicy
from meshfleet import pki
from meshfleet.crdschemas import CRDSchemas
from meshfleet.demo import EXAMPLES, Fleet, demo_clusters
from mgmt import rotation
from mgmt.kubewatching import KubePolicySource, WatchSettings
from mgmt.roots import SecretRootStore
from mgmt.statuswriting import PolicyStatusWriter
from mgmt.trust import ROTATE
from tests.fakekube import FakeKube
from tests.fleets import run, until
from tests.meshtls import handshake_matrix, issue_workload, spiffe_id

CRDS = Path(__file__).resolve().parents[1] / "crds"
FAST = WatchSettings(resync=30.0, watch_timeout=1, backoff_initial=0.01, backoff_max=0.05)
CLUSTERS = ("us-east-1", "eu-west-1", "ap-south-1")
HUB_NAMESPACE = "meshfleet-system"
V1A1 = "meshfleet.io/v1alpha1"


def istiod(multiroot: bool) -> dict[str, Any]:
    env = [{"name": "ISTIO_MULTIROOT_MESH", "value": "true"}] if multiroot else []
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"namespace": "istio-system", "name": "istiod"},
            "spec": {"template": {"spec": {"containers": [{"name": "discovery", "env": env}]}}}}


@pytest.fixture
def apis() -> Iterator[dict[str, FakeKube]]:
    schemas = CRDSchemas.from_documents(
        d for p in sorted(CRDS.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()))
    with ExitStack() as stack:
        servers = {"hub": stack.enter_context(FakeKube(crds=schemas))}
        for name in CLUSTERS:
            fake = stack.enter_context(FakeKube())
            fake.put(istiod(multiroot=name != "ap-south-1"))
            servers[name] = fake
        yield servers


def cacerts(kube: FakeKube) -> dict[str, bytes]:
    secret = kube.get("v1", "Secret", "cacerts", "istio-system") or {}
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def test_trust_policy_cr_issues_cacerts_secrets_and_reports_in_its_status(tmp_path: Path,
                                                                        apis: dict[str, FakeKube]) -> None:
    async def scenario() -> None:
        hub = apis["hub"]
        with ExitStack() as stack:
            hub_api = stack.enter_context(hub.api_client())
            source = KubePolicySource.for_api(hub_api, settings=FAST)
            fleet = Fleet(tmp_path, demo_clusters(3, tmp_path), None, heartbeat=0.5, grace=3, source=source,
                          roots=SecretRootStore(hub_api, HUB_NAMESPACE), kube_api=hub_api)
            source.on_change = fleet.hub.policy_changed
            writer = PolicyStatusWriter(fleet.hub, source, hub_api, interval=0.1)
            await fleet.start(agents=[])
            for name in CLUSTERS:
                rest = Rest(stack.enter_context(apis[name].api_client()), RetryPolicy(initial=0.001, maximum=0.01))
                fleet.start_agent(name, sink=KubernetesSink(rest, name), discovery=ClusterDiscovery(rest),
                                  ca_store=SecretCaStore(rest, name))
            source.start()
            task = asyncio.create_task(writer.run())
            try:
                doc = yaml.safe_load((EXAMPLES / "crs" / "trustpolicy.yaml").read_text())
                CustomObjectsApi(hub_api).create_cluster_custom_object("meshfleet.io", "v1alpha1", "trustpolicies", doc)

                def status() -> dict[str, Any]:
                    return dict((hub.get(V1A1, "TrustPolicy", "mesh") or {}).get("status") or {})

                def cluster_states() -> dict[str, str]:
                    return {c["cluster"]: c["state"] for c in status().get("clusters", [])}

                await until(lambda: cluster_states() == dict.fromkeys(CLUSTERS, "Applied"), 30,
                            "every cluster's cacerts Applied")
                st = status()
                assert st["phase"] == "Idle"
                [root] = st["roots"]
                assert root["state"] == "Active"
                ready = next(c for c in st["conditions"] if c["type"] == "Ready")
                assert ready["status"] == "True"
                assert all("intermediateExpiry" in c for c in st["clusters"])
                # the istiod of ap-south-1 lacks ISTIO_MULTIROOT_MESH: said where the user looks
                by_cluster = {c["cluster"]: c for c in st["clusters"]}
                assert "ISTIO_MULTIROOT_MESH" in by_cluster["ap-south-1"]["message"]
                assert "ISTIO_MULTIROOT_MESH" not in by_cluster["us-east-1"]["message"]

                # the root lives only on the hub, in a Secret of its namespace
                secrets = [s for s in hub.objects("v1", "Secret", HUB_NAMESPACE)
                           if s["metadata"]["name"].startswith("meshfleet-root-")]
                assert len(secrets) == 1
                assert pki.fingerprint(pki.load_certs(base64.b64decode(secrets[0]["data"]["tls.crt"]))[0]) \
                    == root["fingerprint"]
                workloads = {}
                for name in CLUSTERS:
                    files = cacerts(apis[name])
                    assert set(files) == {"ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"}
                    roots = pki.load_certs(files["root-cert.pem"])
                    assert [pki.fingerprint(r) for r in roots] == [root["fingerprint"]]
                    # no cluster holds the root's key: its only key is its own intermediate's
                    intermediate = pki.load_certs(files["ca-cert.pem"])[0]
                    assert pki.same_public_key(pki.load_key(files["ca-key.pem"]), intermediate)
                    assert all(b"PRIVATE KEY" not in base64.b64decode(v)
                               for s in apis[name].objects("v1", "Secret", "istio-system")
                               if s["metadata"]["name"] != "cacerts" for v in (s.get("data") or {}).values())
                    workloads[name] = issue_workload(files["ca-cert.pem"], files["ca-key.pem"],
                                                     files["cert-chain.pem"], files["root-cert.pem"],
                                                     spiffe_id("cluster.local", "bookinfo", name))
                assert handshake_matrix(workloads) == {}

                # a rotation shows in the status: phase 1 adds the new root as Incoming
                fleet.hub.trust.command(ROTATE)
                fleet.hub._retrust()
                await until(lambda: status().get("phase") == rotation.ADDING_ROOT
                            and [r["state"] for r in status().get("roots", [])] == ["Active", "Incoming"],
                            20, "TrustPolicy status in AddingRoot")
                await until(lambda: all(len(pki.load_certs(cacerts(apis[n])["root-cert.pem"])) == 2
                                        for n in CLUSTERS), 20, "every cluster trusts both roots")
                rotating = next(c for c in status()["conditions"] if c["type"] == "Rotating")
                assert rotating["status"] == "True" and rotating["reason"] == rotation.ADDING_ROOT
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await fleet.stop()
                await asyncio.to_thread(source.stop)
    run(scenario())
