"""Import rules of ARCHITECTURE.md: mgmt and agent never import each other; pure cores do no I/O imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PURE_CORES = [
    "mgmt/translate.py", "mgmt/topology.py", "mgmt/changes.py", "mgmt/statuses.py", "mgmt/policies.py",
    "mgmt/model.py", "mgmt/tokens.py", "mgmt/certs.py", "mgmt/rotation.py", "meshfleet/pki.py",
    "mgmt/failover.py", "mgmt/regions.py",
    "agent/render/__init__.py", "agent/render/context.py", "agent/render/serviceentries.py",
    "agent/render/destinationrules.py", "agent/render/virtualservices.py", "agent/render/gateways.py",
    "agent/render/authorizationpolicies.py", "agent/render/peerauthentications.py",
    "agent/inventory.py", "agent/probes.py",
    "meshfleet/__init__.py", "meshfleet/intents.py", "meshfleet/names.py", "meshfleet/jointokens.py",
]
IO_MODULES = {"grpc", "kubernetes", "socket", "sqlite3", "subprocess", "asyncio", "requests", "urllib3"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package, forbidden", [("mgmt", "agent"), ("agent", "mgmt")])
def test_hub_and_agent_never_import_each_other(package: str, forbidden: str) -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py")
                 if any(m == forbidden or m.startswith(forbidden + ".") for m in imports(p))]
    assert not offenders


@pytest.mark.parametrize("module", PURE_CORES)
def test_pure_cores_import_no_io(module: str) -> None:
    bad = {m for m in imports(ROOT / module) if m.split(".")[0] in IO_MODULES}
    assert not bad, f"{module} imports {bad}"
    local = {m for m in imports(ROOT / module) if m.split(".")[0] in ("mgmt", "agent", "meshfleet")}
    for dep in local:
        rel = dep.replace(".", "/")
        path = ROOT / f"{rel}.py" if (ROOT / f"{rel}.py").exists() else ROOT / rel / "__init__.py"
        assert str(path.relative_to(ROOT)) in PURE_CORES, f"{module} imports {dep}, which is not a pure core"
