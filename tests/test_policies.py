"""mgmt.policies.parse_file: YAML policy documents in, policies or file:line errors out."""

from __future__ import annotations

from pathlib import Path

import pytest

from mgmt.model import RouteTarget, TrafficPolicy
from mgmt.policies import PolicyError, parse_file

FILE = "team-a/policies.yaml"
MARK = "# <-"  # marks the line(s) an error must point at

FIRST = """\
# a valid policy first, so the lines of the document under test do not start at 1
apiVersion: meshfleet.io/v1alpha1
kind: TrafficPolicy
metadata:
  name: details-split
  namespace: bookinfo
spec:
  destination:
    service: details
  route:
    - {cluster: eu-west-1, weight: 50}
    - {cluster: ap-south-1, weight: 50}
---
"""

GOOD = """\
apiVersion: meshfleet.io/v1alpha1
kind: TrafficPolicy
metadata:
  name: reviews-split
  namespace: bookinfo
spec:
  destination:
    service: reviews
  route:
    - cluster: us-east-1
      weight: 80
    - cluster: eu-west-1
      weight: 20
"""


def marked_lines(text: str) -> set[int]:
    return {i for i, line in enumerate(text.splitlines(), start=1) if MARK in line}


def variant(old: str, new: str) -> str:
    """GOOD with one line replaced (and marked)."""
    assert old in GOOD
    return GOOD.replace(old, new)


def test_valid_multi_document_file() -> None:
    text = FIRST + GOOD + """\
---
apiVersion: meshfleet.io/v1alpha1
kind: TrafficPolicy
metadata:
  name: ratings-for-eu
  namespace: bookinfo
  labels: {team: a}
spec:
  destination: {service: ratings}
  clients:
    clusters: [us-east-1, eu-west-1, us-east-1]
  route:
    - {cluster: us-east-1, weight: 100}
    - {cluster: ap-south-1, weight: 0}
---
"""
    policies, errors = parse_file(text, FILE)

    assert errors == []
    assert policies == [
        TrafficPolicy("bookinfo", "details-split", "details",
                      (RouteTarget("eu-west-1", 50), RouteTarget("ap-south-1", 50)), None, f"{FILE}:2"),
        TrafficPolicy("bookinfo", "reviews-split", "reviews",
                      (RouteTarget("us-east-1", 80), RouteTarget("eu-west-1", 20)), None, f"{FILE}:14"),
        TrafficPolicy("bookinfo", "ratings-for-eu", "ratings",
                      (RouteTarget("us-east-1", 100), RouteTarget("ap-south-1", 0)),
                      ("eu-west-1", "us-east-1"), f"{FILE}:28"),
    ]


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.joinpath("examples", "policies").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_policy_files_parse(path: Path) -> None:
    policies, errors = parse_file(path.read_text(), path.name)
    assert errors == []
    assert policies


def test_empty_file_has_no_policies_and_no_errors() -> None:
    assert parse_file("# nothing here yet\n", FILE) == ([], [])


BAD_DOCUMENTS = [
    pytest.param(variant("      weight: 20", f"      weigth: 20  {MARK}"),
                 "unknown field 'spec.route[1].weigth'", id="unknown-field-typo"),
    pytest.param(variant("metadata:", f"status: {{}}  {MARK}\nmetadata:"),
                 "unknown field 'status'", id="unknown-top-level-field"),
    pytest.param(variant("      weight: 20", f"      weight: 101  {MARK}"),
                 "spec.route[1].weight: must be an integer 0-100, got 101", id="weight-101"),
    pytest.param(variant("      weight: 20", f"      weight: -1  {MARK}"),
                 "spec.route[1].weight: must be an integer 0-100, got -1", id="weight-negative"),
    pytest.param(variant("      weight: 20", f'      weight: "20"  {MARK}'),
                 "spec.route[1].weight: must be an integer 0-100, got '20'", id="weight-string"),
    pytest.param(variant("      weight: 20", f"      weight: true  {MARK}"),
                 "spec.route[1].weight: must be an integer 0-100, got True", id="weight-bool"),
    pytest.param(variant("      weight: 20", f"      weight: 20.0  {MARK}"),
                 "spec.route[1].weight: must be an integer 0-100, got 20.0", id="weight-float"),
    # the error may point at `route:` or at the start of its list: both are the offending field
    pytest.param(variant("  route:\n    - cluster: us-east-1", f"  route:  {MARK}\n    - cluster: us-east-1  {MARK}")
                 .replace("weight: 20", "weight: 10"),
                 "spec.route weights add up to 90, not 100", id="weights-sum-to-90"),
    pytest.param(variant("    - cluster: eu-west-1", f"    - cluster: us-east-1  {MARK}"),
                 "spec.route[1].cluster: cluster 'us-east-1' listed twice", id="duplicate-route-cluster"),
    pytest.param(variant("    - cluster: eu-west-1", f"    - cluster: EU_West  {MARK}"),
                 "spec.route[1].cluster: 'EU_West' is not a DNS-1123 label", id="bad-route-cluster-name"),
    pytest.param(variant("  route:\n", f"  route: []  {MARK}\n").split("    - cluster")[0],
                 "spec.route must be a non-empty list", id="empty-route"),
    pytest.param(variant("  name: reviews-split", f"  name: Reviews_Split  {MARK}"),
                 "metadata.name: 'Reviews_Split' is not a DNS-1123 subdomain", id="bad-metadata-name"),
    pytest.param(variant("  namespace: bookinfo", f"  namespace: book.info  {MARK}"),
                 "metadata.namespace: 'book.info' is not a DNS-1123 label", id="bad-metadata-namespace"),
    pytest.param(variant("    service: reviews", f"    service: 42  {MARK}"),
                 "spec.destination.service: must be a string, got int", id="service-not-a-string"),
    pytest.param(variant("spec:\n", f"spec:\n  clients: {{clusters: []}}  {MARK}\n"),
                 "spec.clients.clusters must be a non-empty list", id="empty-clients"),
    pytest.param(variant("apiVersion: meshfleet.io/v1alpha1", f"apiVersion: meshfleet.io/v1  {MARK}"),
                 "apiVersion must be meshfleet.io/v1alpha1, got 'meshfleet.io/v1'", id="wrong-api-version"),
    pytest.param(variant("apiVersion: meshfleet.io/v1alpha1\nkind: TrafficPolicy", f"kind: TrafficPolicy  {MARK}"),
                 "apiVersion must be meshfleet.io/v1alpha1, got None", id="missing-api-version"),
    pytest.param(variant("kind: TrafficPolicy", f"kind: FailoverPolicy  {MARK}"),
                 "unsupported kind 'FailoverPolicy' (supported: TrafficPolicy)", id="unsupported-kind"),
    pytest.param(f"- not a mapping  {MARK}\n", "document must be a mapping, got list", id="document-not-a-mapping"),
    pytest.param(variant("  destination:\n    service: reviews\n", "").replace("spec:", f"spec:  {MARK}"),
                 "spec.destination: required field missing",
                 id="missing-spec-destination"),
]


@pytest.mark.parametrize(("document", "message"), BAD_DOCUMENTS)
def test_error_names_file_and_line_of_offending_field(document: str, message: str) -> None:
    text = FIRST + document
    policies, errors = parse_file(text, FILE)

    assert len(errors) == 1, errors
    [error] = errors
    assert error.file == FILE
    assert message in error.message
    assert error.line in marked_lines(text), (error.line, text.splitlines()[error.line - 1])
    assert str(error) == f"{FILE}:{error.line}: {error.message}"
    assert [p.name for p in policies] == ["details-split"]  # the other document was fine


def test_missing_destination_is_named_in_the_message() -> None:
    text = GOOD.replace("  destination:\n    service: reviews\n", "")
    _, errors = parse_file(text, FILE)
    assert [(e.file, e.message) for e in errors] == [(FILE, "spec.destination: required field missing")]
    assert 6 <= errors[0].line <= 7  # somewhere around `spec:`, at least inside the document


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param(FIRST + GOOD.replace("  namespace: bookinfo", "    namespace: bookinfo"), 18,
                     id="bad-indentation-in-second-document"),
        pytest.param(FIRST + GOOD.replace("    service: reviews", "    service: [reviews"), 22,
                     id="unclosed-flow-sequence"),
        pytest.param("apiVersion: meshfleet.io/v1alpha1\nkind: 'TrafficPolicy\n", 3, id="unterminated-quote"),
    ],
)
def test_yaml_syntax_error_gives_line_and_no_policies(text: str, line: int) -> None:
    policies, errors = parse_file(text, FILE)
    assert policies == []
    assert len(errors) == 1
    assert (errors[0].file, errors[0].line) == (FILE, line)
    assert errors[0].message.startswith("YAML syntax error: ")


def test_one_good_and_one_bad_document_returns_the_error() -> None:
    bad = GOOD.replace("      weight: 20", "      weight: 101")
    _, errors = parse_file(FIRST + bad, FILE)
    assert errors == [PolicyError(FILE, 26, "spec.route[1].weight: must be an integer 0-100, got 101")]


def test_every_bad_document_is_reported() -> None:
    bad_kind = GOOD.replace("kind: TrafficPolicy", "kind: Nope")
    bad_name = GOOD.replace("  name: reviews-split", "  name: UPPER")
    policies, errors = parse_file(bad_kind + "---\n" + bad_name, FILE)
    assert policies == []
    assert [e.line for e in errors] == [2, 18]


def test_duplicate_keys_are_an_error_at_the_second_key() -> None:
    text = ("apiVersion: meshfleet.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: a, namespace: bookinfo}\n"
            "spec:\n  destination: {service: reviews}\n  route:\n    - cluster: us-east-1\n      weight: 100\n"
            "      weight: 0\n")
    policies, errors = parse_file(text, "dup.yaml")
    assert not policies
    assert [str(e) for e in errors] == ["dup.yaml:9: key 'weight' given twice in one mapping"]
