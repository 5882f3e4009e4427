"""`meshfleet render`: offline rendering for review in CI pipelines."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from meshfleet.cli import main
from meshfleet.demo import EXAMPLES
from tests.istio_support import CRD_FILE, istio_schemas

BASE = ["render", "--policies", str(EXAMPLES / "policies"), "--inventories", str(EXAMPLES / "inventories"),
        "--clusters", str(EXAMPLES / "clusters.yaml")]


def test_renders_what_the_cluster_would_receive(capsys: pytest.CaptureFixture[str]) -> None:
    istio_schemas()  # skips when the Istio CRDs are absent
    assert main([*BASE, "--cluster", "eu-west-1", "--validate", str(CRD_FILE)]) == 0
    out, err = capsys.readouterr()
    objects = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(out)}
    vs = objects[("VirtualService", "reviews-global")]
    assert [(r["destination"]["subset"], r["weight"]) for r in vs["spec"]["http"][0]["route"]] == [
        ("us-east-1", 80), ("eu-west-1", 20)]
    assert ("VirtualService", "ratings-global") in objects  # eu-west-1 is the only client of ratings-for-eu
    assert err == ""


def test_unknown_cluster_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--cluster", "mars-1"]) == 1
    assert "unknown cluster 'mars-1'" in capsys.readouterr().err


def test_broken_policy_file_fails_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(EXAMPLES / "policies", policies)
    path = policies / "reviews-split.yaml"
    path.write_text(path.read_text().replace("weight: 20", "weight: 200"))
    args = ["render", "--policies", str(policies), "--inventories", str(EXAMPLES / "inventories"),
            "--clusters", str(EXAMPLES / "clusters.yaml"), "--cluster", "us-east-1"]
    assert main(args) == 1
    assert "reviews-split.yaml:14: spec.route[1].weight: must be an integer 0-100, got 200" in capsys.readouterr().err


def test_missing_topology_says_how_to_provide_it(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["render", "--policies", str(EXAMPLES / "policies"), "--inventories", str(EXAMPLES / "inventories"),
            "--cluster", "us-east-1"]
    assert main(args) == 1
    assert "pass --clusters FILE" in capsys.readouterr().err


def test_policy_problems_are_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clusters = tmp_path / "clusters.yaml"
    clusters.write_text(yaml.safe_dump(yaml.safe_load((EXAMPLES / "clusters.yaml").read_text())[:2]))
    assert main(["render", "--policies", str(EXAMPLES / "policies"), "--inventories", str(EXAMPLES / "inventories"),
                 "--clusters", str(clusters), "--cluster", "us-east-1"]) == 0
    err = capsys.readouterr().err
    assert "warning: TrafficPolicy bookinfo/details-split: spec.route names unknown cluster 'ap-south-1'" in err
