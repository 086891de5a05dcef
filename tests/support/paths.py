"""Where things are in the repository, and the bundle most tests inspect with."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The tests' products: the small `ae` button bundle (4 MB model, a few ms a part on a CPU), so
# the suite's hundreds of inspections stay fast (make test-bundle rebuilds it).
PRODUCTS = REPO / "tests" / "products"
BUNDLE = PRODUCTS / "button"
# The product bundles in products/: what the demo runs on and what install.sh copies (the hybrid
# button, make demo-bundle).
SHIPPED = REPO / "products"
SHIPPED_PRODUCTS = tuple(
    sorted(p.name for p in SHIPPED.glob("*") if (p / "manifest.yaml").is_file())
)

# Runs the CLI and fails with 99 if torch was imported: the daemon (and the demo, which runs the
# daemon's own path) must stay lean.
LEAN_RUN = (
    "import sys; from inspectd.cli import main; rc = main(sys.argv[1:]); "
    "sys.exit(99 if 'torch' in sys.modules else rc)"
)

needs_bundle = pytest.mark.skipif(
    not (BUNDLE / "manifest.yaml").is_file(),
    reason="tests/products/button is missing (make test-bundle builds it)",
)
