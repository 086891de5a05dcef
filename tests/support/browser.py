"""The browser the UI tests drive with Playwright: Debian's chromium, never a downloaded one
(`make test` installs it where it is missing)."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
