"""bench/soak.py, the long-run script, in a run short enough for the suite: it runs the daemon
through a broker outage and finds every verdict received (a soak that cannot run finds nothing
when someone needs it)."""

from __future__ import annotations

import re
import subprocess
import sys

from support.paths import REPO


def test_the_soak_script_runs_the_daemon_through_an_outage_and_loses_nothing(tmp_path) -> None:
    flags = "--minutes 0.25 --rate 20 --products tests/products --outage-every 5 --outage-s 1.5"
    flags += f" --sample-every 2 --dir {tmp_path}"
    proc = subprocess.run(
        [sys.executable, "bench/soak.py", *flags.split()],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    out = proc.stdout
    outages = int(re.search(r"(\d+) broker outages", out).group(1))
    recorded, received = map(int, re.search(r"(\d+) recorded, (\d+) received", out).groups())
    assert outages >= 1 and recorded >= 100, out
    assert received == recorded and "0 missing" in out and "after the stop 0" in out, out
