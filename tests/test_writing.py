"""agent.writing.DirectorySink: one YAML file per object, owned through an inventory file."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.writing import INVENTORY, DirectorySink, SinkError, relative_path, to_yaml


def obj(kind: str, name: str, namespace: str = "bookinfo", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "meshfleet"}},
        "spec": spec or {"hosts": [f"{name}.{namespace}.global"]},
    }


SE = obj("ServiceEntry", "reviews")
DR = obj("DestinationRule", "reviews")
VS = obj("VirtualService", "reviews", http=[{"route": [{"destination": {"host": "reviews"}, "weight": 100}]}])
OTHER_NS = obj("ServiceEntry", "db", namespace="data")


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below root (hidden ones too) with its bytes and mtime_ns."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def owned_files(root: Path) -> list[str]:
    files: list[str] = json.loads((root / INVENTORY).read_text())["files"]
    return files


def no_temporaries(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("o", "path"),
    [
        pytest.param(SE, "bookinfo/serviceentry-reviews.yaml", id="service-entry"),
        pytest.param(DR, "bookinfo/destinationrule-reviews.yaml", id="destination-rule"),
        pytest.param(OTHER_NS, "data/serviceentry-db.yaml", id="other-namespace"),
    ],
)
def test_writes_namespace_kind_name_file_with_the_yaml_of_the_object(tmp_path: Path, o: dict[str, Any],
                                                                   path: str) -> None:
    result = DirectorySink(tmp_path).apply([o])

    assert relative_path(o) == path
    assert (result.written, result.unchanged, result.pruned) == (1, 0, 0)
    assert result.changed
    data = (tmp_path / path).read_bytes()
    assert data == to_yaml(o)
    assert yaml.safe_load(data) == o
    assert owned_files(tmp_path) == [path]


def test_first_apply_writes_every_object_and_owns_them(tmp_path: Path) -> None:
    result = DirectorySink(tmp_path).apply([SE, DR, VS, OTHER_NS])

    assert (result.written, result.unchanged, result.pruned) == (4, 0, 0)
    expected = sorted(relative_path(o) for o in (SE, DR, VS, OTHER_NS))
    assert owned_files(tmp_path) == expected
    assert sorted(p for p in snapshot(tmp_path) if p != INVENTORY) == expected
    assert no_temporaries(tmp_path)


def test_reapplying_the_same_objects_writes_nothing(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    sink.apply([SE, DR, VS])
    before = snapshot(tmp_path)

    result = sink.apply([SE, DR, VS])

    assert (result.written, result.unchanged, result.pruned) == (0, 3, 0)
    assert not result.changed
    assert snapshot(tmp_path) == before  # same bytes and same mtime_ns, inventory included


def test_changed_object_is_rewritten_others_untouched(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    sink.apply([SE, DR])
    before = snapshot(tmp_path)
    dr2 = obj("DestinationRule", "reviews", trafficPolicy={"tls": {"mode": "ISTIO_MUTUAL"}})

    result = sink.apply([SE, dr2])

    assert (result.written, result.unchanged, result.pruned) == (1, 1, 0)
    after = snapshot(tmp_path)
    assert after["bookinfo/serviceentry-reviews.yaml"] == before["bookinfo/serviceentry-reviews.yaml"]
    assert yaml.safe_load(after["bookinfo/destinationrule-reviews.yaml"][0]) == dr2


def test_a_new_sink_on_the_same_directory_knows_what_it_owns(tmp_path: Path) -> None:
    DirectorySink(tmp_path).apply([SE, DR])
    result = DirectorySink(tmp_path).apply([SE])
    assert (result.written, result.unchanged, result.pruned) == (0, 1, 1)


def test_prunes_only_its_own_files_and_never_a_user_file(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    sink.apply([SE, DR, VS, OTHER_NS])
    user = tmp_path / "bookinfo" / "gateway-mine.yaml"
    user.write_text("kind: Gateway  # written by a person\n")
    user_outside = tmp_path / "README.md"
    user_outside.write_text("hands off\n")

    result = sink.apply([SE])

    assert (result.written, result.unchanged, result.pruned) == (0, 1, 3)
    assert (tmp_path / "bookinfo" / "serviceentry-reviews.yaml").exists()
    for gone in (DR, VS, OTHER_NS):
        assert not (tmp_path / relative_path(gone)).exists()
    assert user.read_text() == "kind: Gateway  # written by a person\n"
    assert user_outside.read_text() == "hands off\n"
    assert owned_files(tmp_path) == ["bookinfo/serviceentry-reviews.yaml"]


def test_applying_nothing_prunes_everything_it_owns_and_nothing_else(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    sink.apply([SE, DR])
    user = tmp_path / "bookinfo" / "mine.yaml"
    user.write_text("mine\n")

    result = sink.apply([])

    assert result.pruned == 2
    assert owned_files(tmp_path) == []
    assert sorted(snapshot(tmp_path)) == [INVENTORY, "bookinfo/mine.yaml"]


def test_owned_file_already_deleted_by_someone_is_not_counted_as_pruned(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    sink.apply([SE, DR])
    (tmp_path / relative_path(DR)).unlink()

    result = sink.apply([SE])
    assert result.pruned == 0
    assert owned_files(tmp_path) == [relative_path(SE)]


def test_refuses_to_overwrite_a_file_it_did_not_write_and_changes_nothing(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    sink.apply([SE, DR])
    foreign = tmp_path / relative_path(VS)
    foreign.write_text("apiVersion: v1\nkind: VirtualService  # hand-made\n")
    before = snapshot(tmp_path)

    # VS would overwrite the foreign file; DR would be pruned; OTHER_NS would be new
    with pytest.raises(SinkError) as info:
        sink.apply([SE, VS, OTHER_NS])

    assert str(foreign) in str(info.value)
    assert "not written by meshfleet" in str(info.value)
    assert snapshot(tmp_path) == before
    assert no_temporaries(tmp_path)


def test_refuses_foreign_file_on_first_apply(tmp_path: Path) -> None:
    foreign = tmp_path / relative_path(SE)
    foreign.parent.mkdir(parents=True)
    foreign.write_text("mine\n")

    with pytest.raises(SinkError) as info:
        DirectorySink(tmp_path).apply([SE, DR])

    assert str(info.value).startswith(f"refusing to overwrite {foreign}: ")
    assert snapshot(tmp_path) == {relative_path(SE): (b"mine\n", foreign.stat().st_mtime_ns)}


def test_two_objects_for_the_same_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match=r"same file bookinfo/serviceentry-reviews\.yaml"):
        DirectorySink(tmp_path).apply([SE, obj("ServiceEntry", "reviews", hosts=["other"])])
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize(
    "content",
    [
        pytest.param('{"files": ["bookinfo/serviceentry-reviews.yaml"', id="truncated-json"),
        pytest.param("", id="empty"),
        pytest.param("[]", id="not-an-object"),
        pytest.param('{"owned": []}', id="missing-files-key"),
        pytest.param('{"files": 42}', id="files-not-a-list"),
        pytest.param('{"files": "bookinfo/destinationrule-reviews.yaml"}',
                     id="files-a-string"),
        pytest.param('{"files": [1]}',
                     id="files-not-strings"),
    ],
)
def test_corrupt_inventory_refuses_to_write_or_prune(tmp_path: Path, content: str) -> None:
    sink = DirectorySink(tmp_path)
    sink.apply([SE, DR])
    (tmp_path / INVENTORY).write_text(content)
    before = snapshot(tmp_path)

    # tmp_path's name contains "corrupt" too, so match the message's own words
    with pytest.raises(SinkError, match=r"\.meshfleet-inventory\.json is corrupt .*refusing to write or prune"):
        sink.apply([VS])  # would write VS and prune SE and DR

    assert snapshot(tmp_path) == before


def test_written_files_are_complete_and_no_temporaries_are_left(tmp_path: Path) -> None:
    big = obj("ServiceEntry", "big", endpoints=[{"address": f"10.0.{i // 256}.{i % 256}"} for i in range(5000)])
    sink = DirectorySink(tmp_path)
    sink.apply([big, SE])
    sink.apply([obj("ServiceEntry", "big", endpoints=[{"address": "10.1.0.1"}]), SE])

    assert no_temporaries(tmp_path)
    written = yaml.safe_load((tmp_path / relative_path(big)).read_text())
    assert written["spec"] == {"endpoints": [{"address": "10.1.0.1"}]}
    assert json.loads((tmp_path / INVENTORY).read_text()) == {"files": sorted([relative_path(big), relative_path(SE)])}


def test_written_files_are_world_readable_manifests(tmp_path: Path) -> None:
    DirectorySink(tmp_path).apply([SE])
    assert (tmp_path / relative_path(SE)).stat().st_mode & 0o777 == 0o644


def test_creates_the_root_directory(tmp_path: Path) -> None:
    root = tmp_path / "out" / "cluster-a"
    DirectorySink(root).apply([SE])
    assert (root / relative_path(SE)).is_file()


def test_fast_yaml_emitter_writes_the_same_bytes_as_the_pure_python_one(tmp_path: Path) -> None:
    for obj in (SE, DR):
        assert to_yaml(obj) == to_yaml(obj, yaml.SafeDumper)


def test_an_object_changed_since_the_last_apply_is_rewritten(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    sink.apply([SE, DR])
    changed = copy.deepcopy(DR)
    changed["spec"]["host"] = "other.bookinfo.global"
    result = sink.apply([SE, changed])
    assert (result.written, result.unchanged) == (1, 1)
    assert "other.bookinfo.global" in next(tmp_path.rglob("destinationrule-*.yaml")).read_text()


# holding what is no longer rendered (agent.retention decides, the sink obeys) -------------------------------
def test_held_files_stay_on_disk_and_in_the_inventory_until_hold_lets_go(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    sink.apply([SE, DR, VS])
    before = snapshot(tmp_path)
    asked: list[str] = []

    def hold(key: str) -> bool:
        asked.append(key)
        return key == relative_path(VS)

    result = sink.apply([SE], hold=hold)

    assert sorted(asked) == sorted([relative_path(DR), relative_path(VS)])  # rendered files are never asked about
    assert (result.written, result.unchanged, result.pruned, result.held) == (0, 1, 1, (relative_path(VS),))
    assert snapshot(tmp_path)[relative_path(VS)] == before[relative_path(VS)]  # untouched: same bytes and mtime
    assert not (tmp_path / relative_path(DR)).exists()
    assert owned_files(tmp_path) == sorted([relative_path(SE), relative_path(VS)])

    # once hold lets go, the next apply prunes it, and the inventory narrows
    result = sink.apply([SE], hold=lambda key: False)
    assert (result.pruned, result.held) == (1, ())
    assert not (tmp_path / relative_path(VS)).exists()
    assert owned_files(tmp_path) == [relative_path(SE)]


def test_holding_never_concerns_foreign_files_and_a_vanished_file_is_not_held(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    sink.apply([SE, DR, VS])
    user = tmp_path / "bookinfo" / "gateway-mine.yaml"
    user.write_text("mine\n")
    (tmp_path / relative_path(DR)).unlink()  # someone removed an owned file
    asked: list[str] = []

    def keep_all(key: str) -> bool:
        asked.append(key)
        return True

    result = sink.apply([SE], hold=keep_all)

    assert asked == [relative_path(VS)]
    assert result.held == (relative_path(VS),)
    assert owned_files(tmp_path) == sorted([relative_path(SE), relative_path(VS)])
    assert user.read_text() == "mine\n"


def test_holds_accepts_owned_held_files_besides_the_rendered_ones(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    sink.apply([SE, DR])
    sink.apply([SE], hold=lambda key: True)
    assert not sink.holds([SE])  # it owns DR too
    assert sink.holds([SE], extra=[relative_path(DR)])
    assert sink.holds([SE], extra=[relative_path(DR), relative_path(VS)])  # extra need not all be owned
    assert not sink.holds([SE, VS], extra=[relative_path(DR)])  # VS is rendered but not there
    (tmp_path / relative_path(SE)).write_text("edited\n")
    assert not sink.holds([SE], extra=[relative_path(DR)])


def test_the_key_of_an_object_is_its_relative_path(tmp_path: Path) -> None:
    assert DirectorySink(tmp_path).key(OTHER_NS) == "data/serviceentry-db.yaml"
