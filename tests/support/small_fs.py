"""A real, small file system for disk-full tests: a tmpfs of a few MiB mounted on a fresh folder
(root only; the tests that need one skip with the reason where mounting is not allowed)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_fs(folder: Path, size: str = "2m") -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """A file that takes all the free space of ``folder``'s file system but ``leave`` bytes."""
    filler = folder / "filler"
    st = os.statvfs(folder)
    size = max(0, st.f_bavail * st.f_frsize - leave)
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * (1 << 16)
        while size > 0:
            try:
                size -= f.write(chunk[: min(size, len(chunk))])
            except OSError:  # ENOSPC: as full as it gets
                break
    return filler
