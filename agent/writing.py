"""The directory sink: one YAML file per object under DIR/<namespace>/<kind>-<name>.yaml.

It owns exactly the files listed in DIR/.meshfleet-inventory.json: it writes
those atomically, prunes those it no longer renders (unless the caller holds
them, see agent.retention), and refuses to overwrite a file it did not write.
The inventory is widened before any write, so a crash mid-apply never leaves a
written file unowned.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from meshfleet.files import atomic_write

INVENTORY = ".meshfleet-inventory.json"


class SinkError(Exception):
    """Applying failed; the message is what the agent NACKs with."""


@dataclass(frozen=True)
class ApplyResult:
    written: int
    unchanged: int
    pruned: int
    held: tuple[str, ...] = ()
    """Keys of owned objects no longer rendered that were kept (hold said so), still in the inventory."""

    @property
    def changed(self) -> bool:
        return bool(self.written or self.pruned)


_RELATIVE = re.compile(r"^[a-z0-9][-a-z0-9]*/[a-z]+-[a-z0-9][-.a-z0-9]*\.yaml$")


class Sink(Protocol):
    """Where rendered objects go: a directory (GitOps) or a cluster's API server."""

    def key(self, obj: Mapping[str, Any]) -> str:
        """How this sink names an object (in its inventory, in ApplyResult.held and to `hold`)."""

    def apply(self, objects: Iterable[Mapping[str, Any]], hold: Callable[[str], bool] | None = None) -> ApplyResult:
        """Make the target hold exactly `objects` among what the agent owns, but keep (untouched, still owned)
        the owned objects not rendered for whose key `hold` says True; raises SinkError."""

    def holds(self, objects: Iterable[Mapping[str, Any]], extra: Iterable[str] = ()) -> bool:
        """True if the target already holds exactly these objects and owns nothing else but keys in `extra`
        (used to trust a cached intent, `extra` being the objects kept after it stopped rendering them)."""


def relative_path(obj: Mapping[str, Any]) -> str:
    """Where an object goes; refuses names that could leave the output directory."""
    meta = obj["metadata"]
    rel = f"{meta['namespace']}/{obj['kind'].lower()}-{meta['name']}.yaml"
    if not _RELATIVE.match(rel) or ".." in rel:
        raise SinkError(f"object {obj['kind']} {meta['namespace']}/{meta['name']} has a name that is not a "
                        "valid Kubernetes namespace/name")
    return rel


# libyaml's emitter is ~4x faster and, for these documents, byte-identical (tested)
_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def to_yaml(obj: Mapping[str, Any], dumper: type[yaml.SafeDumper] = _DUMPER) -> bytes:
    return yaml.dump(dict(obj), Dumper=dumper, sort_keys=False, default_flow_style=False).encode()


class DirectorySink:
    def __init__(self, root: Path) -> None:
        self.root = root
        # what the last apply rendered, so unchanged objects are not serialized again
        self._last: dict[str, tuple[Mapping[str, Any], bytes]] = {}

    def owned(self) -> set[str]:
        path = self.root / INVENTORY
        try:
            files = json.loads(path.read_text())["files"]
            if not isinstance(files, list) or not all(isinstance(f, str) and _RELATIVE.match(f) for f in files):
                raise ValueError("'files' must be a list of <namespace>/<file>.yaml paths")
            return set(files)
        except FileNotFoundError:
            return set()
        except (ValueError, KeyError, TypeError) as exc:
            raise SinkError(f"{path} is corrupt ({exc}); refusing to write or prune until it is fixed "
                            "or removed") from exc

    def _save(self, files: Iterable[str]) -> None:
        atomic_write(self.root / INVENTORY, json.dumps({"files": sorted(files)}, indent=1).encode())

    def key(self, obj: Mapping[str, Any]) -> str:
        return relative_path(obj)

    def holds(self, objects: Iterable[Mapping[str, Any]], extra: Iterable[str] = ()) -> bool:
        """True if the directory holds exactly these objects as this sink would write them, and owns them and
        nothing else but files in `extra` (whose content is not checked)."""
        wanted = {relative_path(o): to_yaml(o) for o in objects}
        owned = self.owned()
        if not set(wanted) <= owned or not owned - set(wanted) <= set(extra):
            return False
        try:
            return all((self.root / rel).read_bytes() == data for rel, data in wanted.items())
        except OSError:
            return False

    def apply(self, objects: Iterable[Mapping[str, Any]], hold: Callable[[str], bool] | None = None) -> ApplyResult:
        rendered: dict[str, bytes] = {}
        last: dict[str, tuple[Mapping[str, Any], bytes]] = {}
        for obj in objects:
            rel = relative_path(obj)
            if rel in rendered:
                raise SinkError(f"two rendered objects map to the same file {rel}")
            cached = self._last.get(rel)
            data = cached[1] if cached is not None and cached[0] == obj else to_yaml(obj)
            rendered[rel] = data
            last[rel] = (obj, data)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            owned = self.owned()
            foreign = sorted(rel for rel in rendered if rel not in owned and (self.root / rel).exists())
            if foreign:
                raise SinkError(f"refusing to overwrite {self.root / foreign[0]}: the file exists and was not "
                                f"written by meshfleet ({len(foreign)} such file(s))")
            if set(rendered) - owned:
                self._save(owned | set(rendered))
            written = unchanged = pruned = 0
            for rel, data in rendered.items():
                path = self.root / rel
                try:
                    if path.read_bytes() == data:
                        unchanged += 1
                        continue
                except FileNotFoundError:
                    pass
                atomic_write(path, data)
                written += 1
            held: list[str] = []
            for rel in sorted(owned - set(rendered)):
                # a file someone already removed is neither kept nor pruned: it just leaves the inventory
                if hold is not None and (self.root / rel).exists() and hold(rel):
                    held.append(rel)
                    continue
                try:
                    os.unlink(self.root / rel)
                    pruned += 1
                except FileNotFoundError:
                    pass
                with contextlib.suppress(OSError):  # only succeeds if the namespace folder is now empty
                    (self.root / rel).parent.rmdir()
            if owned != set(rendered) | set(held):
                self._save(set(rendered) | set(held))
            self._last = last
        except OSError as exc:
            raise SinkError(f"writing manifests under {self.root} failed: {exc}") from exc
        return ApplyResult(written, unchanged, pruned, tuple(held))
