"""Where things are in the repository, and the bundle most tests inspect with."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCTS = REPO / "products"  # the products shipped with the repository
BUNDLE = PRODUCTS / "button"  # the shipped button bundle (make demo-bundle rebuilds it)
# The product bundles in products/: what the demo runs on and what install.sh copies.
SHIPPED_PRODUCTS = tuple(
    sorted(p.name for p in PRODUCTS.glob("*") if (p / "manifest.yaml").is_file())
)

# Runs the CLI and fails with 99 if torch was imported: the daemon (and the demo, which runs the
# daemon's own path) must stay lean.
LEAN_RUN = (
    "import sys; from inspectd.cli import main; rc = main(sys.argv[1:]); "
    "sys.exit(99 if 'torch' in sys.modules else rc)"
)

needs_bundle = pytest.mark.skipif(
    not (BUNDLE / "manifest.yaml").is_file(),
    reason="products/button is missing (make demo-bundle builds it)",
)
