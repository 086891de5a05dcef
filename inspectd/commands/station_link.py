"""Ask a running station one command over the broker of its config and, for a teach, wait for
its outcome on ``…/teach`` (``inspectd teach --config --count``)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inspectd.config import StationConfig

DONE = ("written", "failed")  # the …/teach events that end a teach


def request_station(
    config: StationConfig,
    command: str,
    args: dict[str, Any],
    timeout: float,
    *,
    wait_event: str | None = None,
) -> dict[str, Any]:
    """``{"ok", "result" | "refusal" | "error", "event"?}``: the station's answer and, with
    ``wait_event``, the last event on that topic (``written`` or ``failed``)."""
    return asyncio.run(_request(config, command, args, timeout, wait_event))


async def _request(
    config: StationConfig,
    command: str,
    args: dict[str, Any],
    timeout: float,
    wait_event: str | None,
) -> dict[str, Any]:
    from inspectd.ui.config import UiMqtt
    from inspectd.ui.link import CommandTimeout, MqttLink

    m = config.mqtt
    if not m.enabled:
        return {"ok": False, "error": "the station's MQTT is off"}
    base = config.topic_base()
    connected = asyncio.Event()
    ended: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def deliver(topic: str, payload: bytes, props: dict[str, str]) -> None:
        if wait_event is None or topic != f"{base}/{wait_event}" or ended.done():
            return
        try:
            doc = json.loads(payload)
        except ValueError:
            return
        if isinstance(doc, dict) and doc.get("state") in DONE:
            ended.set_result(doc)

    def on_connection(ok: bool, detail: str | None) -> None:
        if ok:
            connected.set()

    cfg = UiMqtt(
        host=m.host,
        port=m.port,
        protocol=m.protocol,
        username=m.username,
        password_file=m.password_file,
        tls=m.tls,
    )
    link = MqttLink(cfg, (base,), deliver, on_connection, password=m.password)
    link.start(asyncio.get_running_loop())
    try:
        try:
            await asyncio.wait_for(connected.wait(), min(timeout, 30.0))
            answer = await link.request(base, command, args, min(timeout, 30.0))
        except (TimeoutError, CommandTimeout) as exc:
            return {"ok": False, "error": f"broker {m.host}:{m.port}, {base}: {exc or 'no answer'}"}
        if not answer["ok"] or wait_event is None:
            return answer
        try:
            answer["event"] = await asyncio.wait_for(ended, timeout)
        except TimeoutError:
            answer["event"] = {"state": "failed", "error": f"no outcome within {timeout:g} s"}
        return answer
    finally:
        link.stop()


def tell_station(config: StationConfig, product: str, timeout: float) -> int:
    """Ask the station what it runs; when it is ``product``, switch it to the product again,
    which loads the active version (a station running another product is left alone). The
    exit status for rollback and teach --accept; what happened is printed."""
    if not config.mqtt.enabled:
        print("the station's MQTT is off: it takes the version at its next start or switch")
        return 0
    base = config.topic_base()
    running = request_station(config, "products", {}, timeout)
    if running["ok"] and running["result"].get("current") != product:
        print(
            f"station {base} runs {running['result'].get('current')}: it takes the "
            f"version at its next switch to {product}"
        )
        return 0
    answer = request_station(config, "product", {"product": product}, timeout)
    if "error" in answer:  # no broker, no answer
        print(f"station not told: {answer['error']}", file=sys.stderr)
        return 1
    if not answer["ok"]:
        print(f"station {base} refused: {answer['refusal'].get('detail')}", file=sys.stderr)
        return 1
    r = answer["result"]
    print(f"station {base} switched to {product} version {r.get('version')} between two parts")
    return 0
