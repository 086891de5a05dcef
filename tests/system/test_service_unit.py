"""The systemd unit and its snippets, checked by systemd's own tools where they can run here.

`systemd-analyze verify` loads the unit the way the service manager does. In a container without
a booted systemd it would complain about things that are not the unit's fault (the venv that is
not installed here), so it runs against a throw-away root (`--root=`) holding systemd's own units,
the unit under test and stand-ins for the two programs it runs. Nothing here touches this
machine's systemd, users or sysctl.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from inspectd.config.mqtt import MqttConfig

from support.paths import REPO

SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "inspectd@.service"
INSTANCE = "inspectd@station1.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None,
    reason="systemd-analyze not found; Debian's systemd package provides it (apt-get install "
    "systemd)",
)


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) pairs in order; keys may repeat (Environment=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"setting outside a section: {raw!r}"
        assert not line.endswith("\\"), "continuation lines are not expected in this unit"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


UNIT_SECTIONS = parse_unit(UNIT.read_text())


def values(section: str, key: str) -> list[str]:
    return [v for k, v in UNIT_SECTIONS.get(section, []) if k == key]


def one(section: str, key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"[{section}] {key}= appears {len(found)} times: {found}"
    return found[0]


def seconds(value: str) -> float:
    """A systemd time span such as 30s, 2min, 1min 30s, or 90 (seconds)."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def make_root(tmp_path: Path, unit_text: str | None = None) -> Path:
    """A root with systemd's units, the unit under test and executables at its Exec paths."""
    root = tmp_path / "root"
    system_units = next(
        p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()
    )
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    unit_dir = root / "usr/local/lib/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / UNIT.name).write_text(UNIT.read_text() if unit_text is None else unit_text)
    for program in ("opt/inspectd/venv/bin/inspectd", "bin/kill"):
        path = root / program
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    return root


def verify(root: Path, unit: str = INSTANCE) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, "verify", "--man=no", f"--root={root}", unit],
        capture_output=True,
        text=True,
        timeout=30,
    )


@needs_analyze
def test_unit_verifies_without_a_single_message(tmp_path):
    result = verify(make_root(tmp_path))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and output == "", f"systemd-analyze verify:\n{output}"


@needs_analyze
def test_verify_here_does_report_mistakes_in_the_unit(tmp_path):
    """The control for the test above: in this environment verify does see a misspelled key,
    a bad value and a missing program, so its silence means the unit is clean."""
    broken = (
        UNIT.read_text()
        .replace("ProtectSystem=strict", "ProtectSytem=strict")
        .replace("Restart=on-failure", "Restart=sometimes")
        .replace("/opt/inspectd/venv/bin/inspectd", "/opt/inspectd/venv/bin/inspectdd")
    )
    result = verify(make_root(tmp_path, broken))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Unknown key 'ProtectSytem'" in output, output
    assert "sometimes" in output, output
    assert "inspectdd is not executable" in output, output


@needs_analyze
@pytest.mark.parametrize("dropin", sorted(p.name for p in (SYSTEMD / "dropins").glob("*.conf")))
def test_example_drop_ins_verify(tmp_path, dropin):
    root = make_root(tmp_path)
    target = root / "etc/systemd/system" / f"{INSTANCE}.d"
    target.mkdir(parents=True)
    shutil.copy(SYSTEMD / "dropins" / dropin, target / dropin)
    result = verify(root)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and output == "", f"{dropin}:\n{output}"


@needs_analyze
def test_security_exposure_stays_low(tmp_path):
    """systemd's own rating of the sandbox (0 = locked down, 10 = none). The settings left out
    on purpose (PrivateDevices, MemoryDenyWriteExecute, DeviceAllow, ...) cost a little; a lost
    hardening line would push the score past 3."""
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", f"--root={make_root(tmp_path)}", INSTANCE],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, output
    assert float(match.group(1)) <= 3.0, output


def test_service_is_notify_with_watchdog_and_runs_the_instance_config():
    assert one("Service", "Type") == "notify"
    assert one("Service", "NotifyAccess") == "main"
    assert 10 <= seconds(one("Service", "WatchdogSec")) <= 120
    assert one("Service", "ExecStart") == (
        "/opt/inspectd/venv/bin/inspectd run --config /etc/inspectd/%i.yaml"
    )
    assert one("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Install", "WantedBy") == "multi-user.target"


def test_restart_policy_spares_config_errors():
    assert one("Service", "Restart") == "on-failure"
    # exit 2 is the daemon's config/bundle error (inspectd.cli.EXIT_CONFIG)
    from inspectd.cli import EXIT_CONFIG

    assert str(EXIT_CONFIG) in one("Service", "RestartPreventExitStatus").split()
    assert seconds(one("Service", "RestartSec")) > 0


def test_automatic_restarts_never_exhaust_the_start_limit():
    """Starts at least RestartSec apart: at most floor(interval / RestartSec) + 1 of them fall in
    one StartLimitIntervalSec, which must not exceed the burst, so an unplugged camera is
    retried until it is back (docs/service.md, "Restart pace")."""
    interval = seconds(one("Unit", "StartLimitIntervalSec"))
    burst = int(one("Unit", "StartLimitBurst"))
    pace = seconds(one("Service", "RestartSec"))
    assert interval > 0, "StartLimitIntervalSec=0 would disable the start limit"
    assert math.floor(interval / pace) + 1 <= burst


def test_stop_timeout_covers_the_outbox_drain():
    """TimeoutStopSec must outlast the daemon's own stop: the outbox drain (the default
    mqtt.drain_timeout_s) and the broker disconnect (up to 5 s), with room to spare."""
    drain = MqttConfig.model_fields["drain_timeout_s"].default
    assert seconds(one("Service", "TimeoutStopSec")) >= drain + 5 + 10
    assert one("Service", "KillSignal") == "SIGTERM"
    # SIGTERM to the main process only, so helper processes outlive the drain
    assert one("Service", "KillMode") == "mixed"


def test_runs_as_its_own_user_with_device_groups_and_own_directories():
    assert one("Service", "User") == "inspectd"
    assert {"video", "plugdev"} <= set(one("Service", "SupplementaryGroups").split())
    assert one("Service", "StateDirectory") == "inspectd/%i"
    assert one("Service", "LogsDirectory") == "inspectd/%i"
    assert one("Service", "ConfigurationDirectory") == "inspectd"


def test_hardening_is_on_and_leaves_devices_and_jit_alone():
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
    }
    for key, value in expected.items():
        assert one("Service", key) == value, key
    assert set(one("Service", "RestrictAddressFamilies").split()) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }
    # These would break cameras, GPUs or JIT compilers (reasons in the unit's comments).
    service = dict(UNIT_SECTIONS["Service"])
    assert service.get("MemoryDenyWriteExecute", "no") == "no"
    assert service.get("PrivateDevices", "no") == "no"
    assert service.get("ProtectClock", "no") == "no"  # implies DeviceAllow=char-rtc r
    assert "DeviceAllow" not in service and "DevicePolicy" not in service
    assert service.get("ProcSubset", "all") == "all"
    assert service.get("PrivateUsers", "no") == "no"


def test_every_group_of_the_unit_is_made_by_the_sysusers_file(tmp_path):
    """SupplementaryGroups= fails the start when a group is missing; systemd-sysusers (run on a
    throw-away root) creates the user and puts it in each of them."""
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers not found; Debian's systemd package provides it")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    conf = root / "usr/lib/sysusers.d/inspectd.conf"
    conf.parent.mkdir(parents=True)
    shutil.copy(SYSTEMD / "sysusers.d/inspectd.conf", conf)
    result = subprocess.run(
        [sysusers, f"--root={root}"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    assert passwd["inspectd"][5] == "/var/lib/inspectd"
    assert passwd["inspectd"][6] == "/usr/sbin/nologin"
    groups = {
        line.split(":")[0]: line.split(":")[3].split(",")
        for line in (root / "etc/group").read_text().splitlines()
    }
    for group in one("Service", "SupplementaryGroups").split() + [one("Service", "Group")]:
        assert group in groups, f"group {group} is not created"
        if group != "inspectd":
            assert "inspectd" in groups[group], f"inspectd is not a member of {group}"


def test_tmpfiles_snippet_raises_the_usb_buffer_memory(tmp_path):
    tmpfiles = shutil.which("systemd-tmpfiles")
    if tmpfiles is None:
        pytest.skip("systemd-tmpfiles not found; Debian's systemd package provides it")
    root = tmp_path / "root"
    conf = root / "usr/lib/tmpfiles.d/inspectd-usb3vision.conf"
    conf.parent.mkdir(parents=True)
    shutil.copy(SYSTEMD / "tmpfiles.d/inspectd-usb3vision.conf", conf)
    # a stand-in for the kernel parameter, inside the throw-away root
    param = root / "sys/module/usbcore/parameters/usbfs_memory_mb"
    param.parent.mkdir(parents=True)
    param.write_text("16\n")
    result = subprocess.run(
        [tmpfiles, f"--root={root}", "--create"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert param.read_text().strip() == "1000"


def test_gige_sysctl_names_real_keys_with_large_buffers():
    settings = {}
    for line in (SYSTEMD / "sysctl.d/60-inspectd-gige.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings[key.strip()] = int(value.strip())
    assert set(settings) == {"net.core.rmem_max", "net.core.rmem_default"}
    for key in settings:  # a misspelled key would be skipped at boot with only a log line
        assert Path("/proc/sys", *key.split(".")).exists(), key
    assert settings["net.core.rmem_max"] >= 32 * 1024 * 1024
    assert settings["net.core.rmem_default"] <= settings["net.core.rmem_max"]
