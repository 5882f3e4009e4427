"""The committed protocol code is exactly what protos/ generates."""

from __future__ import annotations

from pathlib import Path

from meshfleet import protogen
from meshfleet.v1 import hub_pb2


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    protogen.generate(tmp_path)
    for rel in protogen.GENERATED:
        committed = protogen.REPO_ROOT / rel
        fresh = tmp_path / rel
        assert fresh.exists(), f"protoc did not produce {rel}"
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{rel} differs from what protos/ generates: run `python -m meshfleet.protogen` and commit")


def test_generation_covers_every_proto_file() -> None:
    protos = sorted(str(p.relative_to(protogen.PROTO_ROOT)) for p in protogen.PROTO_ROOT.rglob("*.proto"))
    assert protos == sorted(protogen.PROTO_FILES)


def test_messages_carry_no_private_key_fields() -> None:
    """What an agent sends: a CSR and public data only (keys are made where they are used)."""
    names = {f.name for m in hub_pb2.DESCRIPTOR.message_types_by_name.values() for f in m.fields}
    assert not {n for n in names if "key" in n and n not in ("labels",)}, names
