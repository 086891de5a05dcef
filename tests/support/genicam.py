"""The GenTL simulator (TLSimu.cti, shipped by genicam==1.5.0) and a station config for it.

Importing this module skips the importing test module where genicam or harvesters is not
installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from support.station import station_dict

genicam = pytest.importorskip(
    "genicam", reason="genicam (GenTL simulator TLSimu.cti) is not installed"
)
pytest.importorskip("harvesters", reason="harvesters is not installed")

CTI = Path(genicam.__file__).parent / "TLSimu.cti"
MONO, COLOR = "SN_InterfaceA_0", "SN_InterfaceA_1"  # what TLSimu reports


def genicam_station(tmp: Path, camera: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """The test station on a simulated camera (``camera`` on top of source and cti), without
    mqtt and output sections; ``sections`` are added whole (replacing any there)."""
    config = station_dict(tmp, mqtt=None, output=None)
    config["camera"] = {"source": "genicam", "cti": str(CTI), **camera}
    config.update(sections)
    return config
