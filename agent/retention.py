"""Fail-static removal: what the agent stops rendering is kept for a grace period, unless deliberately deleted.

When an intent no longer yields an object the agent owns, the object is removed at once only if the
resource it came from (its origin, annotation `meshfleet.io/origin`) is among the intent's `deleted`:
the user deleted it on the hub. Otherwise it is kept until `grace` seconds after it was first missed, so
a gap in the hub's view (a discovery report that briefly lacks a Service, a cluster gone quiet) does not
tear down what a cluster serves. An object rendered again simply leaves the retained set.

The decisions are pure (the time is an argument); RetentionFile keeps the retained set across restarts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.render.context import ORIGIN_ANNOTATION
from meshfleet.files import atomic_write

log = logging.getLogger(__name__)

STATE_FILE = "retained-objects.json"


@dataclass(frozen=True)
class Missed:
    """An object the agent owns and no longer renders, but keeps for now."""

    since: float
    """Unix time at which an apply first found it missing from the intent."""
    origin: str = ""
    """Key (`Kind/namespace/name`) of the hub resource it came from; "" if unknown (kept for the whole grace)."""


Retained = Mapping[str, Missed]
"""Sink key (DirectorySink: relative path, KubernetesSink: `Kind namespace/name`) -> when and whence it went."""


def origin_of(obj: Mapping[str, Any]) -> str:
    """The origin annotation of a rendered object ("" when it has none, e.g. the east-west Gateway)."""
    annotations = obj.get("metadata", {}).get("annotations") or {}
    origin = annotations.get(ORIGIN_ANNOTATION, "")
    return origin if isinstance(origin, str) else ""


def decide(key: str, retained: Retained, origins: Mapping[str, str], deleted: frozenset[str], now: float,
           grace: float) -> Missed | None:
    """Keep an owned object the intent no longer renders (its new entry) or prune it now (None).

    Its origin is the one the previous render gave it (`origins`), else the one recorded when it was first
    missed. Pruned at once if that origin was deleted on the hub, else once `grace` seconds have passed
    since it was first missed.
    """
    before = retained.get(key)
    origin = origins.get(key) or (before.origin if before is not None else "")
    if origin and origin in deleted:
        return None
    since = before.since if before is not None else now
    return Missed(since, origin) if now < since + grace else None


def next_due(retained: Retained, grace: float) -> float | None:
    """Unix time at which the first retained object's grace runs out; None when nothing is retained."""
    return min((m.since + grace for m in retained.values()), default=None)


@dataclass
class Plan:
    """The hold decisions of one apply: the sink asks `hold(key)` for each owned object not rendered any more."""

    retained: Retained
    origins: Mapping[str, str]
    deleted: frozenset[str]
    now: float
    grace: float
    kept: dict[str, Missed] = field(default_factory=dict)
    pruned: dict[str, str] = field(default_factory=dict)
    """Key -> why it is removed (for the log)."""

    def hold(self, key: str) -> bool:
        """True: keep this object for now; False: the sink prunes it."""
        entry = decide(key, self.retained, self.origins, self.deleted, self.now, self.grace)
        if entry is None:
            before = self.retained.get(key)
            origin = self.origins.get(key) or (before.origin if before is not None else "")
            self.pruned[key] = (f"{origin} was deleted on the hub" if origin and origin in self.deleted else
                                f"not in the hub's intent for {self.grace:g} s")
            return False
        self.kept[key] = entry
        return True

    def after(self, held: Iterable[str]) -> dict[str, Missed]:
        """The retained set once the sink has kept `held`: objects rendered again or pruned leave it."""
        return {k: self.kept[k] for k in held if k in self.kept}

    def newly_kept(self) -> list[str]:
        """Keys kept by this apply that were not retained before it (each is logged once)."""
        return sorted(k for k in self.kept if k not in self.retained)


def dumps(retained: Retained) -> bytes:
    return json.dumps({"objects": {k: {"since": m.since, "origin": m.origin} for k, m in sorted(retained.items())}},
                      indent=1).encode()


def loads(data: bytes) -> dict[str, Missed]:
    """Parse a retained set; raises ValueError naming what is wrong."""
    try:
        objects = json.loads(data)["objects"]
        if not isinstance(objects, dict):
            raise ValueError("'objects' must be a mapping")
        out = {}
        for key, entry in objects.items():
            since, origin = entry["since"], entry.get("origin", "")
            if not isinstance(since, (int, float)) or isinstance(since, bool) or not isinstance(origin, str):
                raise ValueError(f"entry {key!r} needs a number 'since' and a string 'origin'")
            out[key] = Missed(float(since), origin)
        return out
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed ({exc!r})") from exc


class RetentionFile:
    """The retained set in the agent's state directory, so a restart goes on counting from the first miss."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def load(self) -> dict[str, Missed]:
        try:
            return loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # starting empty only lengthens retention: every kept object starts its grace again
            log.warning("ignoring unreadable %s (%s); objects no longer in the intent are kept for the whole "
                        "grace period again", self.path, exc)
            return {}

    def save(self, retained: Retained) -> None:
        atomic_write(self.path, dumps(retained))
