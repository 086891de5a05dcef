"""`inspectd ui` end to end: a real mosquitto, a real station (`inspectd run`, watched folder,
archive on) inspecting rendered buttons, the real UI server as its own process, and the page in
Debian's chromium driven by Playwright (never a downloaded browser).

The module shares one broker, station, UI and browser (starting them costs most of the time);
the tests run in file order and the last one kills the station.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inspectd.mqtt.broker import LocalBroker, free_port
from inspectd.synthetic import render_part
from inspectd.train.datasets.mvtec import image_files
from inspectd.ui.auth import hash_password

from support.daemon_process import Daemon
from support.mqtt_client import Subscriber
from support.paths import PRODUCTS, REPO
from support.secure_broker import find_openssl, make_pki
from support.station import BASE, station_config
from support.ui import (
    OPERATOR,
    PAGE_TEST_MARKS,
    drop_part,
    ui_process,
    wait_until,
)

VIEWER_TOKEN = "wall-display-token-0123456789"

pytestmark = PAGE_TEST_MARKS


class Line:
    """The running parts and how to feed the station."""

    def __init__(
        self,
        tmp: Path,
        broker: LocalBroker,
        station: Daemon,
        ui: subprocess.Popen[bytes],
        url: str,
        verdicts: Subscriber,
    ) -> None:
        self.tmp, self.broker, self.station, self.ui, self.url = tmp, broker, station, ui, url
        self.verdicts = verdicts
        self.frames = tmp / "frames"
        self.archive = tmp / "archive"
        self.n = 0

    def drop(self, kind: str) -> dict[str, Any]:
        """One rendered part into the watched folder; its verdict, once the station sent it."""
        defect = None if kind == "good" else kind
        image = render_part(11, 2 + self.n if defect is None else 107, defect)[0]
        self.n += 1
        return drop_part(self.frames, self.verdicts, f"p{self.n:03d}_{kind}", image)


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    tmp = tmp_path_factory.mktemp("ui")
    (tmp / "frames").mkdir()
    (tmp / "viewer.token").write_text(VIEWER_TOKEN + "\n")
    with LocalBroker.start_mosquitto() as broker:
        station_config(
            tmp,
            port=broker.port,
            camera={"watch": {"enabled": True, "settle_s": 0, "poll_s": 0.05}},
            mqtt={"overlays": "all", "health_interval_s": 1, "stats_interval_s": 1},
            archive={"enabled": True, "dir": str(tmp / "archive"), "ok_every": 1},
            output={"dir": None},
        )
        port = free_port()
        ui_cfg = {
            "listen": {"host": "127.0.0.1", "port": port},
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "stations": ["inspectd/v1/plant/l1/+"],
            "access": {
                "users": [
                    {
                        "name": OPERATOR[0],
                        "role": "operator",
                        "password_hash": hash_password(OPERATOR[1]),
                    }
                ],
                "tokens": [
                    {"name": "wall", "role": "viewer", "token_file": str(tmp / "viewer.token")}
                ],
            },
        }
        (tmp / "ui.yaml").write_text(json.dumps(ui_cfg))
        with (
            Subscriber(broker.host, broker.port, f"{BASE}/verdict") as verdicts,
            Daemon(tmp / "station.yaml", "station") as station,
            ui_process(tmp / "ui.yaml") as (ui, url),
        ):
            station.wait_event("station.ready", timeout=30)
            yield Line(tmp, broker, station, ui, url, verdicts)


@pytest.fixture(scope="module")
def operator(browser: Any, line: Line) -> Iterator[Any]:
    """A tablet-sized page logged in as the operator (HTTP Basic)."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": OPERATOR[0], "password": OPERATOR[1]},
    )
    page = context.new_page()
    page.goto(line.url + "/")
    yield page
    context.close()


def tile(page: Any) -> Any:
    return page.locator(f'[data-testid=tile][data-base="{BASE}"]')


def test_line_view_shows_the_station_online_and_a_new_ng_part_within_a_second(
    line: Line, operator: Any
) -> None:
    page = operator
    line.drop("good")
    t = tile(page)
    t.wait_for(timeout=10_000)
    wait_until(lambda: t.get_attribute("data-state") == "online", 10, "the tile online")
    assert "button" in t.inner_text()
    wait_until(lambda: t.locator("[data-testid=count-OK]").inner_text() == "1", 5, "OK count 1")
    ng_before = int(t.locator("[data-testid=count-NG]").inner_text())

    v = line.drop("crack")
    seen = time.monotonic()  # the verdict is out of the broker: the page has a second
    assert v["verdict"] == "NG", v
    wait_until(
        lambda: t.locator("[data-testid=count-NG]").inner_text() == str(ng_before + 1),
        1.0,
        "the NG count on the tile within 1 s of the verdict",
    )
    wait_until(
        lambda: t.locator("[data-testid=last-verdict]").inner_text() == "NG", 1.0, "NG shown"
    )
    assert time.monotonic() - seen < 1.0
    assert v["part_id"] in t.inner_text()
    page.screenshot(path=str(line.tmp / "line.png"))


def test_station_view_shows_the_overlay_the_reject_strip_histogram_and_calibration(
    line: Line, operator: Any
) -> None:
    page = operator
    tile(page).click()
    page.locator("[data-testid=station-view]").wait_for()
    overlay = page.locator("[data-testid=live-overlay]")
    overlay.wait_for(timeout=5000)
    # the JPEG the station sent on …/overlay, decoded by the browser
    wait_until(
        lambda: page.evaluate(
            "(img) => img.complete && img.naturalWidth > 0", overlay.element_handle()
        ),
        5,
        "the overlay image loaded",
    )
    assert page.locator("[data-testid=reject]").count() >= 1
    assert "crack" in page.locator("[data-testid=rejects]").inner_text()
    calibration = page.locator("[data-testid=calibration]").inner_text()
    assert "max_of_good" in calibration and "50" in calibration  # the bundle's method and n_good
    drawn = page.evaluate("""() => { const c = document.querySelector('[data-testid=histogram]');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }""")
    assert drawn > 500, "the histogram canvas is empty"
    page.screenshot(path=str(line.tmp / "station.png"), full_page=True)


def test_a_false_reject_review_is_stored_by_the_station_where_calibrate_and_replay_read_it(
    line: Line, operator: Any
) -> None:
    page = operator
    strip = page.locator("[data-testid=reject]").first
    seq = int(strip.get_attribute("data-seq"))
    strip.locator("[data-testid=review-false_reject]").click()
    strip.locator("[data-testid=confirm-yes]").click()  # asked first (test_ui_operator.py)
    page.locator("[data-testid=reviewed]").first.wait_for(timeout=5000)
    wait_until(
        lambda: (
            page.locator("[data-testid=reviews-today]").inner_text().startswith("1 false reject")
        ),
        5,
        "today's review count on the page",
    )

    stored = list((line.archive / "reviews" / "false_reject").glob(f"*/{seq:010d}-*.json"))
    assert len(stored) == 1, stored
    doc = json.loads(stored[0].read_text())
    assert doc["review"]["label"] == "false_reject" and doc["review"]["by"] == OPERATOR[0]
    assert doc["verdict"]["seq"] == seq and doc["verdict"]["verdict"] == "NG"
    # calibrate --images takes the folder: the frame is there, exactly the archived one
    frames = image_files(line.archive / "reviews" / "false_reject")
    assert [f.name for f in frames] == [doc["frame"]]
    original = next(line.archive.glob(f"20*/{doc['frame']}"))
    assert frames[0].read_bytes() == original.read_bytes()
    # replay --archive takes it as an archive
    from inspectd.replay import replay

    report = replay(line.archive / "reviews" / "false_reject", PRODUCTS)
    assert [p.seq for p in report.parts] == [seq]


def test_reload_thresholds_from_the_page_shows_the_station_answer(
    line: Line, operator: Any
) -> None:
    page = operator
    page.locator("[data-testid=reload]").click()
    answers = page.locator("[data-testid=answers]")
    wait_until(
        lambda: "reload_thresholds: done" in answers.inner_text(), 5, "the answer on the page"
    )
    assert "image 0.152345" in answers.inner_text()
    line.station.wait_event("thresholds.reloaded")


def test_viewers_see_but_cannot_act_and_no_credentials_get_nothing(
    line: Line, browser: Any
) -> None:
    context = browser.new_context(viewport={"width": 1024, "height": 768})
    page = context.new_page()
    page.goto(f"{line.url}/?token={VIEWER_TOKEN}")  # a wall display's link: then a cookie
    tile(page).wait_for(timeout=5000)
    tile(page).click()
    page.locator("[data-testid=reject]").first.wait_for(timeout=5000)
    assert page.locator("[data-testid^=review-]").count() == 0
    assert page.locator("[data-testid=reload]").count() == 0
    status = page.evaluate(
        """(base) => fetch('/api/command', {method: 'POST',
        headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({base, command: 'reload_thresholds'})}).then(r => r.status)""",
        BASE,
    )
    assert status == 403
    context.close()

    body = json.dumps({"base": BASE, "command": "reload_thresholds"}).encode()
    for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()}):
        req = urllib.request.Request(
            f"{line.url}/api/command", body, {"Content-Type": "application/json", **headers}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{line.url}/api/line", timeout=5)
    assert refused.value.code == 401
    # a cross-site form post carries the browser's Basic credentials: refused
    auth = "Basic " + base64.b64encode(":".join(OPERATOR).encode()).decode()
    req = urllib.request.Request(
        f"{line.url}/api/command",
        body,
        {
            "Content-Type": "application/json",
            "Authorization": auth,
            "Origin": "https://evil.example",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=5)
    assert refused.value.code == 403


def test_a_request_for_another_host_name_is_refused_dns_rebinding(line: Line) -> None:
    """A site whose name resolves to 127.0.0.1 (DNS rebinding) sends its own name as Host and
    Origin: same-origin by the Origin check alone, so the command used to reach the station.
    Only the loopback names, the listen address and listen.hosts are answered."""
    port = int(line.url.rsplit(":", 1)[1])
    auth = "Basic " + base64.b64encode(":".join(OPERATOR).encode()).decode()
    body = json.dumps({"base": BASE, "command": "reload_thresholds"})

    def post(host: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "POST",
            "/api/command",
            body,
            {
                "Host": host,
                "Origin": f"http://{host}",
                "Content-Type": "application/json",
                "Authorization": auth,
            },
        )
        r = conn.getresponse()
        return r.status, r.read().decode()

    status, text = post(f"rebind.example:{port}")
    assert status == 400 and "Invalid host header" in text
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/line", headers={"Host": "rebind.example", "Authorization": auth})
    assert conn.getresponse().status == 400  # reading is refused too
    assert post(f"localhost:{port}")[0] == 200  # the page's own names still work
    line.station.wait_event("thresholds.reloaded")


def test_listen_hosts_takes_plain_names_and_keeps_the_loopback_ones() -> None:
    from pydantic import ValidationError

    from inspectd.ui.config import ListenConfig

    proxied = ListenConfig(hosts=("line1.plant.example",))
    assert proxied.allowed_hosts() == ["127.0.0.1", "::1", "line1.plant.example", "localhost"]
    assert "0.0.0.0" not in ListenConfig(host="0.0.0.0").allowed_hosts()  # a bind, not a name
    for bad in ("line1.plant.example:443", "*.plant.example"):
        with pytest.raises(ValidationError, match="without port or wildcard"):
            ListenConfig(hosts=(bad,))


@pytest.mark.parametrize("content", ["", "  \n\n"])
def test_an_empty_token_file_is_a_start_up_error(tmp_path: Path, content: str) -> None:
    """An empty (or blank) token file used to register the sha256 of "": an empty bearer was
    an operator. Like the station's empty password file, it stops the start (exit 2)."""
    (tmp_path / "op.token").write_text(content)
    config = tmp_path / "ui.yaml"
    tokens = [{"name": "script", "role": "operator", "token_file": str(tmp_path / "op.token")}]
    config.write_text(json.dumps({"listen": {"port": free_port()}, "access": {"tokens": tokens}}))
    run = subprocess.run(
        [sys.executable, "-m", "inspectd", "ui", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert run.returncode == 2, run.stderr
    assert "access.tokens script: the token is empty" in run.stderr


def test_a_page_started_mid_shift_counts_the_parts_from_before_it_started(
    line: Line, browser: Any
) -> None:
    # Verdicts are not retained: a page that starts late takes the station's own count of
    # its last hour (…/stats last_hour, every 1 s here) and adds the verdicts after it.
    line.drop("good")
    line.drop("crack")
    sent = Counter(m.json()["verdict"] for m in line.verdicts.messages())
    assert sent["OK"] and sent["NG"]
    late_cfg = json.loads((line.tmp / "ui.yaml").read_text())
    late_cfg["listen"]["port"] = free_port()
    (line.tmp / "ui-late.yaml").write_text(json.dumps(late_cfg))
    with ui_process(line.tmp / "ui-late.yaml") as (_, url):
        context = browser.new_context(
            http_credentials={"username": OPERATOR[0], "password": OPERATOR[1]}
        )
        page = context.new_page()
        page.goto(url + "/")
        t = tile(page)

        def counts() -> dict[str, int]:
            return {k: int(t.locator(f"[data-testid=count-{k}]").inner_text()) for k in sent}

        wait_until(lambda: counts() == dict(sent), 5, f"the late page's counts at {dict(sent)}")
        line.drop("good")  # and a part after it started is added once
        sent["OK"] += 1
        wait_until(lambda: counts() == dict(sent), 5, f"the late page's counts at {dict(sent)}")
        context.close()


def test_the_ui_serves_https_itself_with_the_configured_certificate(
    line: Line, tmp_path: Path
) -> None:
    if find_openssl() is None:
        pytest.skip("openssl is not installed")
    pki = make_pki(tmp_path)
    cfg = json.loads((line.tmp / "ui.yaml").read_text())
    port = free_port()
    cfg["listen"] = {
        "host": "127.0.0.1",
        "port": port,
        "tls_cert_file": str(pki.server_cert),
        "tls_key_file": str(pki.server_key),
    }
    (tmp_path / "ui-tls.yaml").write_text(json.dumps(cfg))
    trust = ssl.create_default_context(cafile=str(pki.ca_cert))
    with ui_process(tmp_path / "ui-tls.yaml", trust) as (_, url):
        assert url.startswith("https://")
        login = base64.b64encode(":".join(OPERATOR).encode()).decode()
        request = urllib.request.Request(
            f"{url}/api/line", headers={"Authorization": f"Basic {login}"}
        )
        with urllib.request.urlopen(request, timeout=5, context=trust) as r:
            assert BASE in [s["base"] for s in json.load(r)["stations"]]
        # a client that does not trust the certificate's CA refuses the server
        distrust = ssl.create_default_context(cafile=str(pki.other_ca_cert))
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"{url}/healthz", timeout=5, context=distrust)
        # and plain HTTP on that port gets no page
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@contextlib.contextmanager
def nginx_proxy(tmp: Path, upstream: str, cert: Path, key: Path) -> Iterator[str]:
    """docs/ui.md's nginx example, as written there but for its port, certificate and
    upstream address, run by Debian's nginx in the foreground; its HTTPS URL."""
    example = (REPO / "docs" / "ui.md").read_text().split("```nginx\n", 1)[1].split("```")[0]
    port = free_port()
    server = example
    for old, new in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("/etc/ssl/line1.pem", str(cert)),
        ("/etc/ssl/line1.key", str(key)),
        ("http://127.0.0.1:8480", upstream),
    ):
        assert old in server, f"docs/ui.md's nginx example no longer has {old!r}"
        server = server.replace(old, new)
    temp = " ".join(
        f"{kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        ("user root;\n" if os.getuid() == 0 else "")  # workers must reach tmp's files
        + f"pid {tmp / 'nginx.pid'};\nevents {{}}\n"
        + f"http {{\naccess_log off;\n{temp}\nuwsgi_temp_path {tmp / 'uwsgi'};\n"
        + f"scgi_temp_path {tmp / 'scgi'};\n{server}}}\n"
    )
    with open(tmp / "nginx.log", "wb") as log:
        proc = subprocess.Popen(
            [NGINX, "-e", "stderr", "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def listening() -> bool:
                assert proc.poll() is None, (tmp / "nginx.log").read_text()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return True
                except OSError:
                    return False

            wait_until(listening, 10, "nginx listening")
            yield f"https://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.mark.skipif(
    not os.access(NGINX, os.X_OK), reason="nginx is not installed (make test installs it)"
)
def test_behind_the_documented_nginx_proxy_the_page_updates_live_and_actions_work(
    line: Line, browser: Any, tmp_path: Path
) -> None:
    # What the proxy must get right: the event stream unbuffered (a new part on the page
    # within seconds), and the Host it passes matching the page's Origin (actions not 403).
    if find_openssl() is None:
        pytest.skip("openssl is not installed")
    pki = make_pki(tmp_path)
    with nginx_proxy(tmp_path, line.url, pki.server_cert, pki.server_key) as url:
        context = browser.new_context(
            # the proxy's certificate is from a throwaway CA the browser does not know; the
            # trust check itself is in test_the_ui_serves_https_itself_with_...
            ignore_https_errors=True,
            http_credentials={"username": OPERATOR[0], "password": OPERATOR[1]},
        )
        page = context.new_page()
        page.goto(url + "/#/")
        t = tile(page)
        t.wait_for(timeout=5000)
        ng = t.locator("[data-testid=count-NG]")
        before = int(ng.inner_text())
        line.drop("crack")
        wait_until(lambda: int(ng.inner_text()) == before + 1, 5, "the new NG through nginx")
        page.goto(f"{url}/#/station/{urllib.parse.quote(BASE, safe='')}")
        page.locator("[data-testid=reload]").click()
        answers = page.locator("[data-testid=answers]")
        wait_until(
            lambda: "reload_thresholds: done" in answers.inner_text(),
            5,
            "the reload's answer through nginx",
        )
        context.close()


def test_a_station_gone_quiet_is_flagged_before_its_last_will_and_clears_when_back(
    line: Line, operator: Any
) -> None:
    # SIGSTOP: the station sends nothing, but its connection stays open until the broker's
    # keep-alive (30 s, the Last Will after 45 s). Its health (every 1 s here) is what stops.
    page = operator
    page.goto(line.url + "/#/")
    t = tile(page)
    t.wait_for()
    problems = t.locator("[data-testid=problems]")
    line.station.signal(signal.SIGSTOP)
    # Read the whole tile, which always exists: the problems list comes and goes between
    # a count() and an inner_text(), and inner_text() on a gone element waits 30 s.
    try:
        wait_until(
            lambda: "no health for" in t.inner_text(),
            10,
            "the quiet station's problem on its tile",
        )
        assert "(sent every 1.0 s): the station may be hung" in problems.inner_text()
        assert "degraded" in (t.get_attribute("class") or "").split()
        assert t.get_attribute("data-state") == "online"  # no Last Will yet
    finally:
        line.station.signal(signal.SIGCONT)
    wait_until(
        lambda: "no health for" not in t.inner_text(),
        10,
        "the problem gone once its health comes again",
    )


def test_a_killed_station_turns_its_tile_offline(line: Line, operator: Any) -> None:
    page = operator
    page.goto(line.url + "/#/")
    t = tile(page)
    t.wait_for()
    assert t.get_attribute("data-state") == "online"
    line.station.signal(signal.SIGKILL)
    line.station.wait(10)
    wait_until(
        lambda: t.get_attribute("data-state") == "offline", 5, "the tile offline (Last Will)"
    )
    assert t.locator("[data-testid=state]").inner_text() == "OFFLINE"
    assert t.locator("[data-testid=banner]").inner_text().startswith("OFFLINE — noticed")
    color = page.evaluate("(el) => getComputedStyle(el).backgroundColor", t.element_handle())
    assert color == "rgb(253, 232, 232)", color  # the red of an offline tile
    page.screenshot(path=str(line.tmp / "offline.png"))


def test_ui_refuses_to_start_on_a_public_address_without_credentials(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "inspectd", "ui", "--listen", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert run.returncode == 2, run.stderr
    assert "0.0.0.0 is not a loopback address" in run.stderr and "access.users" in run.stderr
    config = tmp_path / "ui.yaml"
    config.write_text(
        "listen:\n  host: 192.0.2.10\naccess:\n  users:\n    - name: bob\n      role: admin\n"
        "      password_hash: x\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "inspectd", "ui", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert run.returncode == 2
    assert (
        f"{config}:6:13 access.users[0].role: 'admin' is not one of viewer, operator" in run.stderr
    )


def test_the_unit_runs_the_ui_config_and_the_example_config_loads() -> None:
    unit = (REPO / "systemd" / "inspectd-ui.service").read_text()
    assert "ExecStart=/opt/inspectd/venv/bin/inspectd ui --config /etc/inspectd/ui.yaml" in unit
    assert "RestartPreventExitStatus=2" in unit  # a config error must not restart-loop
    from inspectd.ui.config import load_ui_config

    cfg = load_ui_config(REPO / "systemd" / "ui.example.yaml")
    assert cfg.listen.host == "127.0.0.1" and cfg.access.empty
