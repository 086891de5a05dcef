"""The lean runtime (design.md, principle 5): a station without PLC servers needs neither asyncua
nor pymodbus, and loads neither (asked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys


def test_the_daemon_imports_neither_plc_library_unless_a_server_is_on() -> None:
    """The lean runtime: the station, the handshake and the MQTT desk load without them."""
    code = (
        "import sys; import inspectd.service.station, inspectd.plc.handshake, "
        "inspectd.plc.link, inspectd.plc.bits, inspectd.plc.servers, inspectd.commands.run; "
        "print(sorted(m for m in ('asyncua', 'pymodbus', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out
