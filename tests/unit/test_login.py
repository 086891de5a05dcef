"""Logging in to the broker (inspectd.mqtt.login), the one loader of the daemon and the page:
the password file's rule and TLS files that cannot be loaded, each named in the error."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from inspectd.config.loader import ConfigError
from inspectd.config.mqtt import MqttTls
from inspectd.mqtt import login
from inspectd.ui.config import load_ui_config


def test_the_password_is_the_first_line_and_an_empty_file_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "pw"
    good.write_text("s3cret\nthe rest is ignored\n")
    c = login.credentials("station", password_file=good)
    assert (c.username, c.password, c.ca_file) == ("station", "s3cret", None)
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(login.LoginError, match=f"mqtt.password_file {empty}: .*empty file"):
        login.credentials("station", password_file=empty)
    with pytest.raises(login.LoginError, match=f"mqtt.password_file {tmp_path / 'none'}"):
        login.credentials("station", password_file=tmp_path / "none")


def test_the_page_refuses_an_empty_password_file_as_the_daemon_does(tmp_path: Path) -> None:
    """Before the shared loader the page logged in with an empty password instead."""
    (tmp_path / "pw").write_text("")
    path = tmp_path / "ui.yaml"
    path.write_text(f"mqtt:\n  username: ui\n  password_file: {tmp_path / 'pw'}\n")
    with pytest.raises(ConfigError, match="cannot read a password from it .empty file."):
        load_ui_config(path)


def test_tls_files_that_cannot_be_loaded_are_named(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    c = login.credentials(None, tls=MqttTls(ca_file=not_pem))
    assert c.ca_file == str(not_pem) and c.cert_file is None
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    with pytest.raises(login.LoginError, match=f"mqtt.tls.ca_file {not_pem}: "):
        login.apply(client, c)
