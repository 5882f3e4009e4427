"""Which regions are near which: the failover order of the topology mode (pure).

Regions are the nodes of an undirected networkx graph; the hub's operator may declare the cost
(latency in ms, or any cost) of the links between them in a YAML file (`meshfleet hub
--region-costs FILE`):

    costs:
      us-east-1:
        eu-west-1: 75
        us-west-2: 62
      eu-west-1:
        ap-south-1: 120

A link is declared once, in either direction. The distance between two regions is the cheapest
path over declared links (Dijkstra), so undeclared pairs still get the distance through others.
Without a file every region is equally near every other. From one region, the others are ordered
in tiers of equal distance, nearest first; regions it cannot reach through declared links come
last, in one tier of their own (which the agent leaves out: see meshfleet.intents.failover_rank).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import networkx as nx

from meshfleet.names import dns1123_label_error

RegionCosts = tuple[tuple[str, str, float], ...]  # (region, region, cost), each pair once, sorted


class RegionCostsError(ValueError):
    """A region-costs document the hub cannot use; the message names the place."""


def parse_costs(doc: Any, where: str = "region costs") -> RegionCosts:
    """Validate a parsed YAML document into sorted, de-duplicated links."""
    if doc is None:
        return ()
    if not isinstance(doc, dict) or set(doc) - {"costs"}:
        raise RegionCostsError(f"{where}: expected a mapping with the single key 'costs'")
    costs = doc.get("costs") or {}
    if not isinstance(costs, dict):
        raise RegionCostsError(f"{where}: costs: expected a mapping of region to {{region: cost}}")
    links: dict[tuple[str, str], float] = {}
    for a, row in costs.items():
        _check_region(a, f"{where}: costs")
        if not isinstance(row, dict):
            raise RegionCostsError(f"{where}: costs.{a}: expected a mapping of region to cost")
        for b, cost in row.items():
            _check_region(b, f"{where}: costs.{a}")
            if a == b:
                raise RegionCostsError(f"{where}: costs.{a}.{b}: a region's cost to itself is always 0")
            if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost < 0:
                raise RegionCostsError(f"{where}: costs.{a}.{b}: expected a finite number >= 0, got {cost!r}")
            pair = (a, b) if a < b else (b, a)
            if pair in links and links[pair] != cost:
                raise RegionCostsError(f"{where}: costs.{a}.{b}: the link {pair[0]}-{pair[1]} is declared twice "
                                       f"with different costs ({links[pair]:g} and {cost:g})")
            links[pair] = float(cost)
    return tuple(sorted((a, b, c) for (a, b), c in links.items()))


def _check_region(name: Any, where: str) -> None:
    if not isinstance(name, str) or (err := dns1123_label_error(name)):
        raise RegionCostsError(f"{where}: region {name!r}: {err if isinstance(name, str) else 'must be a string'}")


@dataclass(frozen=True)
class RegionGraph:
    graph: nx.Graph
    weighted: bool

    def tiers(self, origin: str, regions: Iterable[str]) -> tuple[tuple[str, ...], ...]:
        """The regions other than `origin`, nearest first, grouped in tiers of equal distance.

        Without declared costs every region is equally near (one tier). Regions no declared link
        connects to `origin` form a last tier.
        """
        others = sorted(set(regions) - {origin})
        if not others:
            return ()
        if not self.weighted:
            return (tuple(others),)
        distance: Mapping[str, float] = (nx.single_source_dijkstra_path_length(self.graph, origin, weight="cost")
                                         if origin in self.graph else {})
        by_distance: dict[float, list[str]] = {}
        unreachable: list[str] = []
        for region in others:
            if region in distance:
                by_distance.setdefault(distance[region], []).append(region)
            else:
                unreachable.append(region)
        out = [tuple(by_distance[d]) for d in sorted(by_distance)]
        if unreachable:
            out.append(tuple(unreachable))
        return tuple(out)


def region_graph(regions: Iterable[str], costs: RegionCosts) -> RegionGraph:
    """The regions (of the clusters and of the declared links) as a graph with `cost` on its edges."""
    g = nx.Graph()
    g.add_nodes_from(regions)
    for a, b, cost in costs:
        g.add_edge(a, b, cost=cost)
    return RegionGraph(g, bool(costs))
