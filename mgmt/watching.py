"""The directory policy source: every *.yaml / *.yml below a directory, re-read when it changes.

Files hold the same documents as the custom resources (MulticlusterService,
TrafficPolicy, FailoverPolicy, AccessPolicy, TrustPolicy), any number per file.
A file that fails to parse keeps contributing its last good resources, and its
error (file:line) is reported until it is fixed; a deleted file's resources go.
The last good text of every file is exposed (`last_good`) so the hub can persist
it and seed a restarted source: a file broken while the hub was down still
contributes what it last said, instead of vanishing from every cluster.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mgmt.model import AnyResource, Resources
from mgmt.policies import PolicyError, parse_file

log = logging.getLogger(__name__)


@dataclass
class _FileState:
    digest: str
    good: list[AnyResource] = field(default_factory=list)
    errors: list[PolicyError] = field(default_factory=list)
    good_text: str | None = None


class PolicySource(Protocol):
    """Where the hub's policies come from: a directory (embedded, GitOps) or the hub cluster's CRs."""

    resources: Resources
    errors: tuple[PolicyError, ...]

    def scan(self) -> bool:
        """Take in changes; True if `resources` or `errors` changed."""

    def last_good(self) -> dict[str, str]:
        """Text to persist so a restarted hub can keep policies whose source is broken ({} if not needed)."""


class DirectoryPolicySource:
    def __init__(self, directory: Path, seed: Mapping[str, str] | None = None) -> None:
        """`seed`: the last good text of each file (relative name), as `last_good()` returned it."""
        self.directory = directory
        self._files: dict[Path, _FileState] = {}
        self.resources = Resources()
        self.errors: tuple[PolicyError, ...] = ()
        self._missing = False
        for name, text in sorted((seed or {}).items()):
            resources, errors = parse_file(text, name)
            if not errors:
                self._files[directory / name] = _FileState("seed", resources, [], text)
        self._merge()

    def last_good(self) -> dict[str, str]:
        """Relative file name -> the text its current resources come from."""
        return {str(p.relative_to(self.directory)): st.good_text
                for p, st in sorted(self._files.items()) if st.good_text is not None}

    def scan(self) -> bool:
        """Re-read the directory; True if the resources or errors changed.

        Every file is hashed on every scan: policy directories are small, and
        mtime/size alone miss a same-size edit within one timestamp tick.
        """
        if not self.directory.is_dir():
            missing = (PolicyError(str(self.directory), 0, "policy directory does not exist"),)
            changed = missing != self.errors
            self.errors = missing  # keep the last good resources: a vanished mount is not a deletion
            self._missing = True
            return changed
        seen: set[Path] = set()
        dirty, self._missing = self._missing, False
        for path in sorted(p for p in self.directory.rglob("*") if p.suffix in (".yaml", ".yml")):
            if any(part.startswith(".") for part in path.relative_to(self.directory).parts):
                continue  # editor swap files, ..data symlink farms of ConfigMap mounts
            seen.add(path)
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.warning("cannot read policy file %s: %s", path, exc)
                continue
            digest = hashlib.sha256(data).hexdigest()
            old = self._files.get(path)
            if old is not None and old.digest == digest:
                continue
            name = str(path.relative_to(self.directory))
            try:
                text = data.decode()
                resources, errors = parse_file(text, name)
            except UnicodeDecodeError as exc:
                text, resources, errors = "", [], [PolicyError(name, 1, f"not UTF-8 text: {exc}")]
            state = _FileState(digest, good_text=text)
            if errors:
                state.good = old.good if old else []
                state.good_text = old.good_text if old else None
                state.errors = errors
                for e in errors:
                    log.error("policy file rejected, keeping its last good content: %s", e)
            else:
                state.good = resources
            self._files[path] = state
            dirty = True
        for gone in set(self._files) - seen:
            del self._files[gone]
            dirty = True
        if not dirty:
            return False
        return self._merge()

    def _merge(self) -> bool:
        """Combine the files' resources; a kind/namespace/name given twice keeps the copy of the first file."""
        by_key: dict[str, AnyResource] = {}
        errors: list[PolicyError] = []
        for path in sorted(self._files):
            state = self._files[path]
            errors.extend(state.errors)
            for r in state.good:
                if (first := by_key.get(r.meta.key)) is not None:
                    file, _, line = r.meta.source.rpartition(":")
                    errors.append(PolicyError(file, int(line or 0), f"{r.meta.ref} is already defined at "
                                              f"{first.meta.source}; this copy is ignored"))
                else:
                    by_key[r.meta.key] = r
        resources = Resources.of(by_key.values())
        changed = resources != self.resources or tuple(errors) != self.errors
        self.resources, self.errors = resources, tuple(errors)
        return changed
