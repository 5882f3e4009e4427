"""mgmt.watching.DirectoryPolicySource: a directory of policy YAML (every resource kind), re-read when it changes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mgmt.model import Resources, RouteTarget
from mgmt.policies import PolicyError
from mgmt.watching import DirectoryPolicySource

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def policy_yaml(name: str, service: str = "reviews", us: int = 80, eu: int = 20) -> str:
    return f"""\
apiVersion: meshfleet.io/v1alpha1
kind: TrafficPolicy
metadata:
  name: {name}
  namespace: bookinfo
spec:
  destination:
    service: {service}
  route:
    - cluster: us-east-1
      weight: {us}
    - cluster: eu-west-1
      weight: {eu}
"""


WEIGHT_LINE = 11  # line of the first `weight:` in policy_yaml


def write(path: Path, text: str) -> None:
    """Write `path` so that its (mtime, size) stamp surely changes, whatever the clock granularity."""
    old = path.stat().st_mtime_ns if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if old is not None:
        ns = max(path.stat().st_mtime_ns, old + 1_000_000_000)
        os.utime(path, ns=(ns, ns))


def access_yaml(name: str, service: str = "reviews", action: str = "ALLOW") -> str:
    return f"""\
apiVersion: meshfleet.io/v1alpha1
kind: AccessPolicy
metadata:
  name: {name}
  namespace: bookinfo
spec:
  destination:
    service: {service}
  action: {action}
"""


def keys(source: DirectoryPolicySource) -> list[str]:
    return [r.meta.key for r in source.resources.all()]


def routes(source: DirectoryPolicySource) -> dict[str, tuple[RouteTarget, ...]]:
    return {p.meta.name: p.http[0].route for p in source.resources.traffic}


@pytest.fixture
def source(tmp_path: Path) -> DirectoryPolicySource:
    return DirectoryPolicySource(tmp_path)


def test_initial_scan_loads_every_yaml_file_below_the_directory(tmp_path: Path, source: DirectoryPolicySource) -> None:
    write(tmp_path / "reviews.yaml", policy_yaml("reviews-split"))
    write(tmp_path / "team-b" / "details.yml", policy_yaml("details-split", "details", 50, 50))

    assert source.scan() is True
    assert keys(source) == ["TrafficPolicy/bookinfo/details-split", "TrafficPolicy/bookinfo/reviews-split"]
    assert source.errors == ()
    details = source.resources.traffic[0]
    assert details.meta.source == "team-b/details.yml:1"
    assert details.http[0].route == (RouteTarget("us-east-1", 50), RouteTarget("eu-west-1", 50))


def test_scan_returns_false_when_nothing_changed(tmp_path: Path, source: DirectoryPolicySource) -> None:
    write(tmp_path / "reviews.yaml", policy_yaml("reviews-split"))
    assert source.scan() is True
    before = source.resources

    assert source.scan() is False
    assert source.resources is before


def test_touching_a_file_without_changing_it_is_not_a_change(tmp_path: Path, source: DirectoryPolicySource) -> None:
    path = tmp_path / "reviews.yaml"
    write(path, policy_yaml("reviews-split"))
    source.scan()

    write(path, policy_yaml("reviews-split"))  # same bytes, newer mtime
    assert source.scan() is False


def test_empty_directory_has_nothing(source: DirectoryPolicySource) -> None:
    assert source.scan() is False
    assert (source.resources, source.errors) == (Resources(), ())


def test_broken_edit_keeps_last_good_resources_and_reports_file_and_line(
        tmp_path: Path, source: DirectoryPolicySource) -> None:
    path = tmp_path / "reviews.yaml"
    write(path, policy_yaml("reviews-split"))
    source.scan()
    good = source.resources

    write(path, policy_yaml("reviews-split", us=101, eu=20))
    assert source.scan() is True
    assert source.resources == good
    assert source.errors == (
        PolicyError("reviews.yaml", WEIGHT_LINE, "spec.route[0].weight: must be an integer 0-100, got 101"),)
    assert str(source.errors[0]).startswith(f"reviews.yaml:{WEIGHT_LINE}: ")


def test_file_with_one_bad_document_is_broken_as_a_whole(tmp_path: Path, source: DirectoryPolicySource) -> None:
    path = tmp_path / "reviews.yaml"
    write(path, policy_yaml("reviews-split"))
    source.scan()

    # the good document changed too, but the file is broken: its last good content stays in force
    write(path, policy_yaml("reviews-split", us=60, eu=40) + "---\n" + policy_yaml("other", us=101, eu=1))
    assert source.scan() is True
    assert routes(source) == {"reviews-split": (RouteTarget("us-east-1", 80), RouteTarget("eu-west-1", 20))}
    assert [(e.file, e.line) for e in source.errors] == [("reviews.yaml", 14 + WEIGHT_LINE)]


def test_new_broken_file_contributes_only_its_error(tmp_path: Path, source: DirectoryPolicySource) -> None:
    write(tmp_path / "a.yaml", policy_yaml("a"))
    write(tmp_path / "b.yaml", "spec: [unclosed\n")

    assert source.scan() is True
    assert keys(source) == ["TrafficPolicy/bookinfo/a"]
    assert [(e.file, e.line) for e in source.errors] == [("b.yaml", 2)]


def test_fixing_a_broken_file_picks_up_the_new_content(tmp_path: Path, source: DirectoryPolicySource) -> None:
    path = tmp_path / "reviews.yaml"
    write(path, policy_yaml("reviews-split"))
    source.scan()
    write(path, policy_yaml("reviews-split", us=101))
    source.scan()

    write(path, policy_yaml("reviews-split", us=30, eu=70))
    assert source.scan() is True
    assert source.errors == ()
    assert routes(source) == {"reviews-split": (RouteTarget("us-east-1", 30), RouteTarget("eu-west-1", 70))}


def test_second_broken_edit_still_keeps_the_last_good_content(tmp_path: Path, source: DirectoryPolicySource) -> None:
    path = tmp_path / "reviews.yaml"
    write(path, policy_yaml("reviews-split"))
    source.scan()
    good = source.resources
    write(path, policy_yaml("reviews-split", us=101))
    source.scan()

    write(path, "not: [yaml\n")
    assert source.scan() is True
    assert source.resources == good
    assert [e.file for e in source.errors] == ["reviews.yaml"]
    assert source.errors[0].message.startswith("YAML syntax error")


def test_deleting_a_file_removes_its_resources(tmp_path: Path, source: DirectoryPolicySource) -> None:
    write(tmp_path / "a.yaml", policy_yaml("a"))
    write(tmp_path / "b.yaml", policy_yaml("b", "details"))
    source.scan()

    (tmp_path / "b.yaml").unlink()
    assert source.scan() is True
    assert keys(source) == ["TrafficPolicy/bookinfo/a"]


def test_deleting_a_broken_file_removes_its_last_good_resources_and_error(
        tmp_path: Path, source: DirectoryPolicySource) -> None:
    path = tmp_path / "a.yaml"
    write(path, policy_yaml("a"))
    source.scan()
    write(path, policy_yaml("a", us=101))
    source.scan()

    path.unlink()
    assert source.scan() is True
    assert (source.resources, source.errors) == (Resources(), ())


def test_same_policy_in_two_files_later_copy_ignored(tmp_path: Path, source: DirectoryPolicySource) -> None:
    write(tmp_path / "a.yaml", policy_yaml("reviews-split", us=80, eu=20))
    write(tmp_path / "b.yaml", "# a copy\n" + policy_yaml("reviews-split", us=10, eu=90))

    assert source.scan() is True
    assert routes(source) == {"reviews-split": (RouteTarget("us-east-1", 80), RouteTarget("eu-west-1", 20))}
    [error] = source.errors
    assert (error.file, error.line) == ("b.yaml", 2)
    assert error.message == ("TrafficPolicy bookinfo/reviews-split is already defined at a.yaml:1;"
                             " this copy is ignored")


def test_removing_the_first_copy_promotes_the_other(tmp_path: Path, source: DirectoryPolicySource) -> None:
    write(tmp_path / "a.yaml", policy_yaml("reviews-split", us=80, eu=20))
    write(tmp_path / "b.yaml", policy_yaml("reviews-split", us=10, eu=90))
    source.scan()

    (tmp_path / "a.yaml").unlink()
    assert source.scan() is True
    assert source.errors == ()
    assert routes(source) == {"reviews-split": (RouteTarget("us-east-1", 10), RouteTarget("eu-west-1", 90))}


def test_hidden_files_and_directories_and_other_suffixes_are_ignored(
        tmp_path: Path, source: DirectoryPolicySource) -> None:
    write(tmp_path / "visible.yaml", policy_yaml("visible"))
    write(tmp_path / ".swap.yaml", policy_yaml("hidden-file"))
    write(tmp_path / ".git" / "policy.yaml", policy_yaml("hidden-dir"))
    write(tmp_path / "..2024_01_01" / "cm.yaml", policy_yaml("configmap-data"))
    write(tmp_path / "sub" / ".broken.yml", "not: [yaml\n")
    write(tmp_path / "notes.txt", policy_yaml("text-file"))
    write(tmp_path / "policy.yaml.bak", policy_yaml("backup"))

    assert source.scan() is True
    assert keys(source) == ["TrafficPolicy/bookinfo/visible"]
    assert source.errors == ()


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    source = DirectoryPolicySource(tmp_path / "nope")
    assert source.scan() is True
    assert source.resources == Resources()
    assert [(e.file, e.message) for e in source.errors] == [(str(tmp_path / "nope"), "policy directory does not exist")]
    assert source.scan() is False


def test_vanished_directory_keeps_last_good_resources(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    write(directory / "a.yaml", policy_yaml("a"))
    source = DirectoryPolicySource(directory)
    source.scan()
    good = source.resources

    directory.rename(tmp_path / "elsewhere")
    assert source.scan() is True
    assert source.resources == good
    assert [e.message for e in source.errors] == ["policy directory does not exist"]
    assert source.scan() is False


def test_directory_coming_back_clears_the_error(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    write(directory / "a.yaml", policy_yaml("a"))
    source = DirectoryPolicySource(directory)
    source.scan()
    directory.rename(tmp_path / "elsewhere")
    source.scan()

    (tmp_path / "elsewhere").rename(directory)
    assert source.scan() is True
    assert source.errors == ()
    assert keys(source) == ["TrafficPolicy/bookinfo/a"]


def test_same_size_edit_within_one_timestamp_tick_is_seen(tmp_path: Path, source: DirectoryPolicySource) -> None:
    path = tmp_path / "reviews.yaml"
    path.write_text(policy_yaml("reviews-split", us=80, eu=20))
    source.scan()
    st = path.stat()

    path.write_text(policy_yaml("reviews-split", us=70, eu=30))  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # what a coarse clock gives a write in the same tick
    assert path.stat().st_size == st.st_size

    source.scan()
    assert routes(source) == {"reviews-split": (RouteTarget("us-east-1", 70), RouteTarget("eu-west-1", 30))}


def test_every_kind_is_read_and_grouped(tmp_path: Path, source: DirectoryPolicySource) -> None:
    for name in ("multiclusterservices.yaml", "trafficpolicies.yaml", "failoverpolicies.yaml", "accesspolicies.yaml"):
        shutil.copy(EXAMPLES / "crs" / name, tmp_path / name)
    shutil.copytree(EXAMPLES / "policies", tmp_path / "simple")

    assert source.scan() is True
    assert source.errors == ()
    got = source.resources
    assert [len(got.services), len(got.traffic), len(got.failover), len(got.access)] == [4, 5, 3, 5]
    assert [r.meta.name for r in got.services] == ["details", "productpage", "ratings", "reviews"]  # sorted by key
    assert got.failover[0].meta.source == "failoverpolicies.yaml:25"  # ratings-explicit, the second document
    assert got.all() == (*got.services, *got.traffic, *got.failover, *got.access)


def test_same_name_in_different_kinds_is_no_conflict(tmp_path: Path, source: DirectoryPolicySource) -> None:
    write(tmp_path / "a.yaml", policy_yaml("reviews"))
    write(tmp_path / "b.yaml", access_yaml("reviews"))

    assert source.scan() is True
    assert source.errors == ()
    assert keys(source) == ["TrafficPolicy/bookinfo/reviews", "AccessPolicy/bookinfo/reviews"]


def test_same_resource_twice_keeps_the_first_file_of_any_kind(tmp_path: Path, source: DirectoryPolicySource) -> None:
    write(tmp_path / "b.yaml", access_yaml("reviews-readers", action="DENY"))
    write(tmp_path / "a.yaml", policy_yaml("x") + "---\n" + access_yaml("reviews-readers", action="ALLOW"))

    assert source.scan() is True
    assert [(p.meta.name, p.action) for p in source.resources.access] == [("reviews-readers", "ALLOW")]
    assert [str(e) for e in source.errors] == [
        "b.yaml:1: AccessPolicy bookinfo/reviews-readers is already defined at a.yaml:15; this copy is ignored"]


def test_same_resource_twice_in_one_file_keeps_the_first(tmp_path: Path, source: DirectoryPolicySource) -> None:
    write(tmp_path / "a.yaml", access_yaml("r", action="DENY") + "---\n" + access_yaml("r", action="ALLOW"))

    assert source.scan() is True
    assert [p.action for p in source.resources.access] == ["DENY"]
    assert [(e.file, e.line) for e in source.errors] == [("a.yaml", 11)]  # the second document, after 9 lines and `---`


def test_a_mesh_cluster_in_a_policy_file_breaks_the_file(tmp_path: Path, source: DirectoryPolicySource) -> None:
    path = tmp_path / "policies.yaml"
    write(path, access_yaml("a"))
    source.scan()
    good = source.resources

    write(path, access_yaml("a") + "---\n" + (EXAMPLES / "crs" / "meshclusters.yaml").read_text())
    assert source.scan() is True
    assert source.resources == good
    assert source.errors and all("MeshCluster is not a policy" in e.message for e in source.errors)


def test_a_restarted_source_seeded_with_last_good_keeps_a_file_broken_meanwhile(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "crs" / "failoverpolicies.yaml", tmp_path / "failover.yaml")
    write(tmp_path / "access.yaml", access_yaml("a"))
    first = DirectoryPolicySource(tmp_path)
    first.scan()
    seed = first.last_good()
    assert set(seed) == {"failover.yaml", "access.yaml"}

    write(tmp_path / "failover.yaml", "spec: [broken\n")  # while the hub was down
    restarted = DirectoryPolicySource(tmp_path, seed)
    assert restarted.resources == first.resources  # before any scan: what the seed says
    assert restarted.scan() is True
    assert restarted.resources == first.resources
    assert [e.file for e in restarted.errors] == ["failover.yaml"]
    assert restarted.last_good() == seed
