"""deploy/install.sh and deploy/uninstall.sh, run for real into throw-away roots (--root).

With a root the scripts must not touch this machine (no useradd, sysctl or systemctl); every
test passes one. Most tests skip the venv (--no-venv) to stay fast; the slow one builds a real
venv from a wheel of this tree, without network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from inspectd.config import load_station_config

from support.paths import REPO, SHIPPED, SHIPPED_PRODUCTS

INSTALL = REPO / "deploy" / "install.sh"
UNINSTALL = REPO / "deploy" / "uninstall.sh"
UNIT_PATH = "usr/local/lib/systemd/system/inspectd@.service"
VENDOR_FILES = [
    UNIT_PATH,
    "usr/local/lib/sysctl.d/60-inspectd-gige.conf",
    "usr/local/lib/sysusers.d/inspectd.conf",
    "usr/local/lib/tmpfiles.d/inspectd-usb3vision.conf",
]
EDITED_MESSAGE = "was edited since it was installed; left as it is."


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DESTDIR", "INSPECTD_SKIP_VENV")}
    env.update(extra)
    return env


def run(script: Path, root: Path, *args: str, env=None, check=True, timeout=60):
    assert root.is_absolute() and root != Path("/"), "these tests only install into a folder"
    result = subprocess.run(
        ["bash", str(script), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or clean_env(),
    )
    if check:
        assert result.returncode == 0, f"{script.name} failed:\n{result.stdout}\n{result.stderr}"
    return result


def install(root: Path, *args: str, **kw):
    return run(INSTALL, root, "--no-venv", *args, **kw)


def tree(root: Path) -> dict[str, tuple]:
    """Every path under root: kind, mode and content hash (or link target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[rel] = ("file", stat.S_IMODE(st.st_mode), digest)
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_scripts_are_strict_bash_and_executable():
    for script in (INSTALL, UNINSTALL):
        assert os.access(script, os.X_OK), f"{script} is not executable (chmod +x)"
        lines = script.read_text().splitlines()
        assert lines[0] == "#!/usr/bin/env bash"
        assert "set -euo pipefail" in lines


def test_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result = subprocess.run(
        [shellcheck, str(INSTALL), str(UNINSTALL)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout


def test_without_a_root_it_needs_to_be_root():
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the user nobody")
    for script in (INSTALL, UNINSTALL):
        # as nobody: refused before anything is written (nobody could not write anyway)
        result = subprocess.run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
            cwd="/",
        )
        assert result.returncode != 0
        assert "run as root" in result.stderr and "--root DIR" in result.stderr, result.stderr


def test_second_install_changes_nothing(tmp_path):
    root = tmp_path / "root"
    first = install(root)
    assert "done, 0 change(s)" not in first.stdout
    before = tree(root)
    second = install(root)
    assert tree(root) == before
    assert "install.sh: done, 0 change(s)" in second.stdout, second.stdout
    for word in ("installed ", "updated ", "created ", "recorded "):
        assert word not in second.stdout, second.stdout

    # what was installed, with the modes the service relies on
    for rel in VENDOR_FILES:
        assert mode(root / rel) == 0o644, rel
    assert (root / UNIT_PATH).read_bytes() == (REPO / "systemd/inspectd@.service").read_bytes()
    assert mode(root / "etc/inspectd/station1.yaml") == 0o640  # may hold the MQTT password
    assert "button" in SHIPPED_PRODUCTS
    for product in SHIPPED_PRODUCTS:  # every bundle in products/, byte for byte
        for f in (SHIPPED / product).iterdir():
            installed = root / "etc/inspectd/products" / product / f.name
            assert installed.read_bytes() == f.read_bytes(), installed
    assert (root / "var/lib/inspectd/station1/incoming").is_dir()
    assert (root / "opt/inspectd/share/doc/service.md").is_file()


def test_with_a_root_nothing_is_done_to_this_machine(tmp_path):
    result = install(tmp_path / "root")
    skipped = result.stdout.split("skipped (installing into", 1)[1]
    for step in (
        "systemd-sysusers",
        "chgrp inspectd",
        "sysctl -q -p",
        "systemd-tmpfiles",
        "systemctl daemon-reload",
    ):
        assert step in skipped, result.stdout
    assert "running " not in result.stdout, result.stdout


def test_destdir_is_the_same_as_root(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    install(a)
    subprocess.run(
        ["bash", str(INSTALL)],
        check=True,
        capture_output=True,
        timeout=60,
        env=clean_env(DESTDIR=str(b), INSPECTD_SKIP_VENV="1"),
    )
    assert tree(a) == tree(b)
    clash = subprocess.run(
        ["bash", str(INSTALL), "--root", str(a), "--no-venv"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(DESTDIR=str(b)),
    )
    assert clash.returncode != 0 and "disagree" in clash.stderr


def test_station_config_is_the_stations_own_and_matches_the_unit(tmp_path):
    root = tmp_path / "root"
    install(root, "--station", "press-3")
    cfg = load_station_config(root / "etc/inspectd/press-3.yaml")  # valid for the daemon
    assert cfg.station.name == "press-3"
    # the one folder the service may write: /var/lib/ + StateDirectory=, %i = the instance
    unit = (root / UNIT_PATH).read_text()
    state_directory = next(
        line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("StateDirectory=")
    )
    assert cfg.state_dir == Path("/var/lib") / state_directory.replace("%i", "press-3")
    assert cfg.camera.path == cfg.state_dir / "incoming"
    assert (root / "var/lib/inspectd/press-3/incoming").is_dir()
    assert not (root / "etc/inspectd/station1.yaml").exists()


def test_edited_config_survives_a_reinstall_untouched(tmp_path):
    root = tmp_path / "root"
    install(root)
    config = root / "etc/inspectd/station1.yaml"
    edited = config.read_text().replace("host: localhost", "host: broker.plant.local")
    assert edited != config.read_text()
    config.write_text(edited)
    config.chmod(0o600)

    result = install(root)
    assert config.read_text() == edited
    assert mode(config) == 0o600
    assert f"/etc/inspectd/station1.yaml {EDITED_MESSAGE}" in result.stderr, result.stderr
    assert "diff -u /etc/inspectd/station1.yaml /etc/inspectd/station1.yaml.new" in result.stderr
    # the current example beside it: what a fresh install writes
    fresh = tmp_path / "fresh"
    install(fresh)
    new = root / "etc/inspectd/station1.yaml.new"
    assert new.read_bytes() == (fresh / "etc/inspectd/station1.yaml").read_bytes()

    before = tree(root)  # and that state is stable too
    again = install(root)
    assert tree(root) == before
    assert "done, 0 change(s)" in again.stdout and EDITED_MESSAGE in again.stderr


def test_config_not_edited_since_install_is_updated_to_the_new_example(tmp_path):
    root = tmp_path / "root"
    install(root)
    config = root / "etc/inspectd/station1.yaml"
    current = config.read_bytes()
    # as an older install.sh would have left it: an older example, and its checksum recorded
    older = current.replace(b"keepalive_s: 30", b"keepalive_s: 45")
    config.write_bytes(older)
    record = root / "etc/inspectd/.installed/station1.yaml.sha256"
    record.write_text(f"{hashlib.sha256(older).hexdigest()}  station1.yaml\n")

    result = install(root)
    assert config.read_bytes() == current
    assert "updated    /etc/inspectd/station1.yaml" in result.stdout
    assert EDITED_MESSAGE not in result.stderr
    assert record.read_text().split()[0] == hashlib.sha256(current).hexdigest()
    assert not (root / "etc/inspectd/station1.yaml.new").exists()


def test_upgrade_without_station_keeps_to_the_installed_stations(tmp_path):
    root = tmp_path / "root"
    install(root, "--station", "press-3")
    result = install(root)
    assert "unchanged  /etc/inspectd/press-3.yaml" in result.stdout
    assert not (root / "etc/inspectd/station1.yaml").exists()


def test_products_on_the_target_are_never_replaced(tmp_path):
    root = tmp_path / "root"
    install(root)
    thresholds = root / "etc/inspectd/products/button/thresholds.yaml"
    thresholds.write_text(thresholds.read_text() + "# calibrated on the line\n")
    result = install(root)
    assert thresholds.read_text().endswith("# calibrated on the line\n")
    assert "kept       /etc/inspectd/products/button" in result.stdout


def test_bad_station_name_is_refused(tmp_path):
    result = install(tmp_path / "root", "--station", "line 2/cam", check=False)
    assert result.returncode != 0
    assert "station name 'line 2/cam': letters, digits, _ and - only" in result.stderr
    assert not (tmp_path / "root/etc/inspectd").exists()


def test_uninstall_keeps_config_and_state_unless_purge(tmp_path):
    root = tmp_path / "root"
    install(root)
    config = root / "etc/inspectd/station1.yaml"
    config_bytes = config.read_bytes()
    # what the running service would have made meanwhile
    outbox = root / "var/lib/inspectd/station1/outbox.db"
    outbox.write_bytes(b"SQLite format 3\0")
    (root / "var/log/inspectd/station1").mkdir(parents=True)
    (root / "var/cache/inspectd/station1/cuda").mkdir(parents=True)
    wants = root / "etc/systemd/system/multi-user.target.wants/inspectd@station1.service"
    wants.parent.mkdir(parents=True)
    wants.symlink_to("/usr/local/lib/systemd/system/inspectd@.service")
    dropin = root / "etc/systemd/system/inspectd@station1.service.d/priority.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Service]\nNice=-5\n")

    result = run(UNINSTALL, root)
    for rel in VENDOR_FILES:
        assert not (root / rel).exists(), rel
    assert not (root / "opt/inspectd").exists()
    assert not (root / "var/cache/inspectd").exists()
    assert not wants.is_symlink()
    assert config.read_bytes() == config_bytes
    assert (root / "etc/inspectd/products/button/model.onnx").is_file()
    assert outbox.read_bytes() == b"SQLite format 3\0"
    assert (root / "var/log/inspectd/station1").is_dir()
    assert dropin.is_file()
    assert "kept       /var/lib/inspectd" in result.stdout
    assert "systemctl disable/daemon-reload" in result.stdout  # skipped: a root, not this machine

    again = run(UNINSTALL, root)  # nothing left to remove is fine
    assert f"absent     /{UNIT_PATH}" in again.stdout

    # a re-install recognises the kept config as its own (not edited)
    reinstall = install(root)
    assert "unchanged  /etc/inspectd/station1.yaml" in reinstall.stdout
    assert EDITED_MESSAGE not in reinstall.stderr

    purge = run(UNINSTALL, root, "--purge")
    for rel in ("etc/inspectd", "var/lib/inspectd", "var/log/inspectd", "opt/inspectd"):
        assert not (root / rel).exists(), rel
    assert not dropin.parent.exists()
    assert "deleting /var/lib/inspectd/station1/outbox.db" in purge.stderr


@pytest.mark.slow
def test_real_venv_from_a_wheel_of_this_tree(tmp_path):
    """The venv step for real: python -m venv, pip installing a wheel built from this tree (no
    network: --no-deps --no-index), the venv symlink switch; then the unit's ExecStart runs."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("inspectd", "calibrate", "train", "deploy"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(wheels),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = wheels.glob("inspectd-*.whl")

    root = tmp_path / "root"
    args = ("--no-products", "--package", str(wheel), "--pip-args", "--no-deps --no-index")
    first = run(INSTALL, root, *args, timeout=180)
    assert "installed  /opt/inspectd/venv -> venvs/" in first.stdout, first.stdout
    link = root / "opt/inspectd/venv"
    assert link.is_symlink() and (link / "pyvenv.cfg").is_file()

    before = tree(root)
    second = run(INSTALL, root, *args, timeout=180)
    assert tree(root) == before
    assert "done, 0 change(s)" in second.stdout, second.stdout

    # the program the unit starts (ExecStart=/opt/inspectd/venv/bin/inspectd run ...)
    help_ = subprocess.run(
        [str(link / "bin/inspectd"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_.returncode == 0, help_.stderr
    assert "run" in help_.stdout and "check-config" in help_.stdout

    # An upgrade (here: other pip arguments) builds a new venv and switches to it; the one
    # before stays for stations still running on it, anything older goes.
    first_venv = os.readlink(link)
    ancient = root / "opt/inspectd/venvs/0.0.1-000000000000"
    ancient.mkdir()
    (ancient / ".complete").touch()
    os.utime(ancient / ".complete", (1, 1))
    upgrade_args = (*args[:-1], "--no-deps --no-index --no-compile")
    upgrade = run(INSTALL, root, *upgrade_args, timeout=180)
    assert os.readlink(link) != first_venv
    assert (root / "opt/inspectd" / first_venv / "bin/inspectd").is_file()
    assert not ancient.exists()
    assert "removed    /opt/inspectd/venvs/0.0.1-000000000000" in upgrade.stdout
    before = tree(root)
    again = run(INSTALL, root, *upgrade_args, timeout=180)
    assert tree(root) == before
    assert "done, 0 change(s)" in again.stdout, again.stdout

    assert run(UNINSTALL, root).returncode == 0
    assert not (root / "opt/inspectd").exists()
