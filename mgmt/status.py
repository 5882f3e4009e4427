"""`meshfleet status`: clusters with connection, heartbeat, versions and the last NACK.

`-o json` also gives each cluster's labels and origin (`cli`: added by `meshfleet cluster add`;
`meshcluster`: managed from a MeshCluster resource).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from mgmt.evicting import EVENTS_KEY, STATE_KEY
from mgmt.registry import Registry


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _ago(ts: float | None, now: float) -> str:
    return "never" if ts is None else f"{max(0.0, now - ts):.0f}s ago"


def _date(ts: float | None) -> str:
    return "-" if not ts else time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(ts))


def collect(registry: Registry) -> dict[str, Any]:
    """Status as a JSON-able document (the source of both output formats)."""
    statuses = registry.statuses()
    cas = registry.ca_reports()
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
            "intermediateExpiry": (cas[name]["not_after"] or None) if cas.get(name, {}).get("intermediate") else None,
            "caError": cas.get(name, {}).get("error", ""),
        })
    problems = registry.get_meta("policy_problems") or {"source_errors": [], "problems": []}
    state = registry.get_meta(STATE_KEY) or {}
    evictions = [{"policy": policy, "cluster": cluster, "since": e["since"], "reason": e["reason"]}
                 for policy, found in sorted((state.get("evictions") or {}).items())
                 for cluster, e in sorted(found.items())]
    return {"clusters": clusters, "policySourceErrors": problems["source_errors"],
            "policyProblems": problems["problems"], "evictions": evictions,
            "failoverEvents": registry.get_meta(EVENTS_KEY) or []}


def render_text(doc: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = [[c["name"], c["region"], c["zone"], c["connection"], _ago(c["lastHeartbeat"], now),
             c["ackedVersion"][:12] or "-", "yes" if c["inSync"] else "no", _date(c["intermediateExpiry"]),
             (f"{c['lastNack']['version'][:12]}: {c['lastNack']['error']}" if c["lastNack"] else "-")]
            for c in doc["clusters"]]
    out = [table(["CLUSTER", "REGION", "ZONE", "CONNECTION", "LAST HEARTBEAT", "ACKED", "IN SYNC", "CA EXPIRES",
                  "LAST NACK"],
                 rows)]
    if doc["policySourceErrors"]:
        out.append("\npolicy files rejected (last good content kept):")
        out += [f"  {e}" for e in doc["policySourceErrors"]]
    if doc["policyProblems"]:
        out.append("\npolicy problems:")
        out += [f"  {p['policy']}: {p['message']}" for p in doc["policyProblems"]]
    if doc.get("evictions"):
        out.append("\nevicted by failover (endpoints out of other clusters' intents):")
        out += [f"  {e['cluster']} from {e['policy']} (since {_ago(e['since'], now)}): {e['reason']}"
                for e in doc["evictions"]]
    if doc.get("failoverEvents"):
        out.append("\nrecent failover events:")
        out += [f"  {_ago(e['at'], now)}: {e['policy']}: {e['kind']}{' ' + e['cluster'] if e['cluster'] else ''}: "
                f"{e['message']}" for e in doc["failoverEvents"][-10:]]
    return "\n".join(out)


def render_trust(doc: dict[str, Any] | None, now: float | None = None) -> str:
    """`meshfleet certs status` as text, from the document the hub keeps in hub.db (mgmt.trust.TrustManager.status)."""
    now = time.time() if now is None else now
    if not doc or not doc.get("policy"):
        problems = (doc or {}).get("problems") or []
        return "no TrustPolicy is in effect: the hub runs no mesh CA" + "".join(f"\n  {p}" for p in problems)
    out = [f"trust policy: {doc['policy']}  trust domain: {doc['trustDomain']}  phase: {doc['phase']} "
           f"(since {_ago(doc['since'], now)})  intermediates signed since hub start: {doc['signed']}"]
    out.append("\n" + table(["ROOT", "STATE", "NOT AFTER", "IN BUNDLE"],
                            [[r["fingerprint"][:16], r["state"], r["notAfter"],
                              "yes" if r["fingerprint"] in doc["bundle"] else "no (being removed)"]
                             for r in doc["roots"]]))
    rows = [[name, ", ".join(f[:8] for f in c["bundle"]) or "-", (c["issuer"] or "-")[:8],
             _date(c["not_after"] if c["intermediate"] else None), "yes" if c["confirms"] else "no",
             c["error"] or doc["waiting"].get(name, "")]
            for name, c in doc["clusters"].items()]
    out.append("\n" + table(["CLUSTER", "TRUSTS", "ISSUER", "CA EXPIRES", "AT TARGET", "ERROR / WAITING FOR"], rows))
    if doc["waiting"]:
        out.append("\nthe rotation waits for: " + ", ".join(sorted(doc["waiting"])))
    elif doc.get("nextStepAt"):
        out.append(f"\nevery cluster is at the target; the grace period ends in "
                   f"{max(0.0, doc['nextStepAt'] - now):.0f}s")
    warnings = sorted({(n, w) for n, c in doc["clusters"].items() for w in c["warnings"]})
    if warnings:
        out.append("\nIstio settings to check:")
        out += [f"  {n}: {w}" for n, w in warnings]
    if doc["problems"]:
        out.append("\nproblems:")
        out += [f"  {p}" for p in doc["problems"]]
    if doc["events"]:
        out.append("\nrecent events:")
        out += [f"  {_ago(e['at'], now)}: {e['message']}" for e in doc["events"][-8:]]
    return "\n".join(out)
