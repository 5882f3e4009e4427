"""meshfleet's own CRDs accept every example and refuse obvious mistakes, as an API server would."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfleet.crdschemas import CRDSchemas
from meshfleet.demo import EXAMPLES

CRDS = Path(__file__).resolve().parents[1] / "crds"


@cache
def schemas() -> CRDSchemas:
    return CRDSchemas.from_documents(d for p in sorted(CRDS.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()))


def examples() -> list[Any]:
    return [pytest.param(doc, id=f"{p.name}:{doc['metadata']['name']}")
            for p in sorted((EXAMPLES / "policies").glob("*.yaml")) for doc in yaml.safe_load_all(p.read_text())]


def test_no_rule_is_skipped() -> None:
    assert not schemas().skipped_rules


@pytest.mark.parametrize("doc", examples())
def test_every_example_policy_is_accepted(doc: dict[str, Any]) -> None:
    assert schemas().validate(doc) == []


REVIEWS: dict[str, Any] = yaml.safe_load((EXAMPLES / "policies" / "reviews-split.yaml").read_text())


def mutated(change: Any) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(REVIEWS)
    change(doc)
    return doc


@pytest.mark.parametrize("doc, message", [
    pytest.param(mutated(lambda d: d["spec"]["route"][1].__setitem__("weigth", 20)), "weigth", id="typo-field"),
    pytest.param(mutated(lambda d: d["spec"]["route"][1].__setitem__("weight", 10)),
                 "route weights must add up to 100", id="weights-sum-90"),
    pytest.param(mutated(lambda d: d["spec"]["route"][0].__setitem__("weight", 101)), "100", id="weight-over-100"),
    pytest.param(mutated(lambda d: d["spec"]["route"][0].__setitem__("weight", "80")), "integer", id="weight-string"),
    pytest.param(mutated(lambda d: d["spec"]["route"][1].__setitem__("cluster", "us-east-1")), "Duplicate value",
                 id="cluster-twice"),
    pytest.param(mutated(lambda d: d["spec"].pop("destination")), "Required value", id="no-destination"),
    pytest.param(mutated(lambda d: d["spec"]["destination"].__setitem__("service", "Reviews")), "spec.destination",
                 id="bad-service-name"),
])
def test_obvious_mistakes_are_refused(doc: dict[str, Any], message: str) -> None:
    errors = [str(e) for e in schemas().validate(doc)]
    assert any(message in e for e in errors), errors
