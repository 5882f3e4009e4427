"""Where the shared Istio CRDs live, and one validator for them shared by every test.

The Istio 1.30 CRDs and their CRD-validation fixtures sit next to the repository in
../shared/istio (see VERSION.txt there).  CI always has them; a checkout without them
skips the tests that need them instead of failing.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from meshfleet.crdschemas import CRDSchemas

ISTIO_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "istio"
CRD_FILE = ISTIO_DIR / "crd-all.gen.yaml"
TESTDATA_DIR = ISTIO_DIR / "testdata"
MISSING_REASON = f"Istio CRDs not found at {CRD_FILE} (expected ../shared/istio next to the repository)"


def istio_available() -> bool:
    return CRD_FILE.is_file()


@cache
def _load() -> CRDSchemas:
    return CRDSchemas.from_file(CRD_FILE)


def istio_schemas() -> CRDSchemas:
    """The validator for Istio's CRDs, loaded once per test session; skips the test if they are absent."""
    if not istio_available():
        pytest.skip(MISSING_REASON)
    return _load()
