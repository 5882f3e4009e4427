"""`meshfleet status`: clusters with connection, heartbeat, versions and the last NACK.

`-o json` also gives each cluster's labels and origin (`cli`: added by `meshfleet cluster add`;
`meshcluster`: managed from a MeshCluster resource).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from mgmt.registry import Registry


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _ago(ts: float | None, now: float) -> str:
    return "never" if ts is None else f"{max(0.0, now - ts):.0f}s ago"


def collect(registry: Registry) -> dict[str, Any]:
    """Status as a JSON-able document (the source of both output formats)."""
    statuses = registry.statuses()
    clusters = []
    for name, c in registry.clusters().items():
        st = statuses.get(name)
        clusters.append({
            "name": name, "region": c.region, "zone": c.zone, "network": c.network,
            "labels": dict(sorted(c.labels.items())), "origin": c.origin,
            "registered": c.registered_at is not None,
            "connection": st.connection if st else "Pending",
            "agentVersion": st.agent_version if st else "",
            "lastHeartbeat": st.last_heartbeat if st else None,
            "desiredVersion": st.desired_version if st else "",
            "ackedVersion": st.acked_version if st else "",
            "inSync": bool(st and st.desired_version and st.desired_version == st.acked_version),
            "lastNack": ({"version": st.nack_version, "error": st.nack_error, "at": st.nack_at}
                         if st and st.nack_error else None),
        })
    problems = registry.get_meta("policy_problems") or {"source_errors": [], "problems": []}
    return {"clusters": clusters, "policySourceErrors": problems["source_errors"],
            "policyProblems": problems["problems"]}


def render_text(doc: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = [[c["name"], c["region"], c["zone"], c["connection"], _ago(c["lastHeartbeat"], now),
             c["ackedVersion"][:12] or "-", "yes" if c["inSync"] else "no",
             (f"{c['lastNack']['version'][:12]}: {c['lastNack']['error']}" if c["lastNack"] else "-")]
            for c in doc["clusters"]]
    out = [table(["CLUSTER", "REGION", "ZONE", "CONNECTION", "LAST HEARTBEAT", "ACKED", "IN SYNC", "LAST NACK"],
                 rows)]
    if doc["policySourceErrors"]:
        out.append("\npolicy files rejected (last good content kept):")
        out += [f"  {e}" for e in doc["policySourceErrors"]]
    if doc["policyProblems"]:
        out.append("\npolicy problems:")
        out += [f"  {p['policy']}: {p['message']}" for p in doc["policyProblems"]]
    return "\n".join(out)
