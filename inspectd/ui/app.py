"""The web app: the page, its JSON and JPEG endpoints, live updates as server-sent events, and
the operator's actions. Starlette handles HTTP; this module only says what each route does.

Live updates: a station's tile goes out at most every ``FLUSH_S`` however fast its parts come
(a line at 30 parts/s would otherwise send 30 events a second to every tablet).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.authentication import AuthenticationError
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from inspectd.ui.auth import TOKEN_COOKIE, Credentials, UiAuthBackend
from inspectd.ui.config import UiConfig
from inspectd.ui.link import CommandTimeout, MqttLink
from inspectd.ui.state import Line

log = structlog.get_logger(__name__)

STATIC = Path(__file__).parent / "static"
FLUSH_S = 0.25
KEEPALIVE_S = 15.0
# the operator's actions; review has its own route
COMMANDS = ("reload_thresholds", "product", "teach", "refit", "accept", "discard", "rollback")
SIGNED = ("teach", "refit", "accept", "rollback")  # the versions' record says who: the login
LABELS = ("false_reject", "true_defect", "missed_defect")


class Hub:
    """The open event streams, and which stations changed since the last flush."""

    def __init__(self, line: Line) -> None:
        self.line = line
        self.clients: set[asyncio.Queue[str | None]] = set()
        self.dirty: set[str] = set()
        self.broker_changed = False

    def changed(self, base: str | None) -> None:
        if base is not None:
            self.dirty.add(base)

    def send(self, event: str, data: Any) -> None:
        text = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        for q in list(self.clients):
            if q.qsize() > 200:  # a client that stopped reading: drop it, its page reconnects
                self.clients.discard(q)
                q.put_nowait(None)
            else:
                q.put_nowait(text)

    def flush(self) -> None:
        if self.broker_changed:
            self.broker_changed = False
            self.send("broker", self.line.broker)
        for base in sorted(self.dirty):
            self.send("station", self.line.stations[base].summary())
        self.dirty.clear()

    def close(self) -> None:
        for q in self.clients:
            q.put_nowait(None)
        self.clients.clear()


def _unauthorized(conn: HTTPConnection, exc: Exception | None = None) -> Response:
    return PlainTextResponse(
        f"credentials needed{f': {exc}' if exc else ''}",
        status_code=401,
        headers={"WWW-Authenticate": 'Basic realm="inspectd", charset="UTF-8"'},
    )


def _need(request: Request, scope: str) -> Response | None:
    """None when the request may go on; else the refusal (401 without credentials, 403 with
    too few)."""
    if "viewer" not in request.auth.scopes:
        return _unauthorized(request)
    if scope not in request.auth.scopes:
        return JSONResponse(
            {
                "ok": False,
                "error": f"{request.user.display_name} is a viewer: "
                "operators review parts and send commands",
            },
            status_code=403,
        )
    return None


def _same_origin(request: Request) -> Response | None:
    """Actions only as JSON from our own page: a browser sends Basic credentials with any
    cross-site form post, but neither JSON without a preflight nor a foreign Origin."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return JSONResponse({"ok": False, "error": "send JSON"}, status_code=415)
    origin = request.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
        return JSONResponse(
            {"ok": False, "error": f"cross-origin request from {origin}"}, status_code=403
        )
    return None


def build_app(
    cfg: UiConfig, credentials: Credentials, line: Line | None = None, link: MqttLink | None = None
) -> Starlette:
    line = line or Line(cfg.stations, cfg.recent_rejects, cfg.score_window, cfg.counting())
    hub = Hub(line)

    asking: set[tuple[str, str]] = set()
    mqtt_link: MqttLink  # used by the closures below; set after delivered and connection

    def delivered(topic: str, payload: bytes, props: dict[str, str]) -> None:
        base = line.on_message(topic, payload, props)
        hub.changed(base)
        st = line.stations.get(base) if base else None
        if base is None or st is None or st.state != "online":
            return
        # once a station is there to answer: today's review counts, and the products it has
        # installed (the page offers those for a switch, not a free-text name)
        for command, unknown in (
            ("reviews", st.reviews_today is None),
            ("products", st.products is None),
        ):
            if unknown and (base, command) not in asking:
                asking.add((base, command))
                asyncio.get_running_loop().create_task(ask_once(base, command))

    async def ask_once(base: str, command: str) -> None:
        try:
            answer = await mqtt_link.request(base, command, {}, cfg.review_timeout_s)
        except CommandTimeout:
            answer = None
        if answer is not None and answer["ok"]:
            line.stations[base].on_answer({**answer, "by": "inspectd ui"})
            hub.changed(base)
        elif answer is not None and command == "products":
            line.stations[base].products = []  # refused (an older station): no asking again
            hub.changed(base)
        # no answer in time (not subscribed yet, or busy): the station's next message asks again
        asking.discard((base, command))

    def connection(up: bool, error: str | None) -> None:
        line.broker = {"connected": up, "error": error}
        hub.broker_changed = True

    mqtt_link = link or MqttLink(cfg.mqtt, cfg.stations, delivered, connection)

    async def flusher() -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            for base in line.check_silence():
                hub.changed(base)
            hub.flush()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        mqtt_link.start(asyncio.get_running_loop())
        task = asyncio.create_task(flusher())
        try:
            yield
        finally:
            task.cancel()
            hub.close()
            mqtt_link.stop()

    async def index(request: Request) -> Response:
        token = request.query_params.get("token")
        if token and "viewer" in request.auth.scopes:  # a wall display's link: keep it as a cookie
            response: Response = RedirectResponse("/", status_code=303)
            response.set_cookie(
                TOKEN_COOKIE,
                token,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                max_age=400 * 86400,
            )
            return response
        return _need(request, "viewer") or FileResponse(
            STATIC / "index.html", headers={"Cache-Control": "no-cache"}
        )

    async def me(request: Request) -> Response:
        return _need(request, "viewer") or JSONResponse(
            {"name": request.user.display_name, "operator": "operator" in request.auth.scopes}
        )

    async def snapshot(request: Request) -> Response:
        return _need(request, "viewer") or JSONResponse(line.snapshot())

    def _station(request: Request) -> Any:
        base = request.query_params.get("base", "")
        return line.stations.get(base)

    async def station(request: Request) -> Response:
        if (refused := _need(request, "viewer")) is not None:
            return refused
        st = _station(request)
        if st is None:
            return JSONResponse({"error": "no such station"}, status_code=404)
        return JSONResponse(st.detail())

    async def overlay(request: Request) -> Response:
        if (refused := _need(request, "viewer")) is not None:
            return refused
        st = _station(request)
        try:
            seq = int(request.query_params.get("seq", ""))
        except ValueError:
            seq = -1
        jpeg = st.overlays.get(seq) if st is not None else None
        if jpeg is None:
            return PlainTextResponse(
                "no such overlay (kept for the recent parts only)", status_code=404
            )
        # one seq's overlay never changes: the browser may keep it
        return Response(
            jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
        )

    async def part(request: Request) -> Response:
        """One archived part from its station (frame, map, verdict, review), found by seq or
        part id: the part view. Asked each time, kept nowhere here (frames are large)."""
        if (refused := _need(request, "viewer")) is not None:
            return refused
        st = _station(request)
        if st is None:
            return JSONResponse({"ok": False, "error": "unknown station"}, status_code=404)
        args: dict[str, Any] = {}
        seq, part_id = request.query_params.get("seq", ""), request.query_params.get("part_id")
        if seq:
            if not seq.isdigit():
                return JSONResponse({"ok": False, "error": "seq: a number"}, status_code=400)
            args["seq"] = int(seq)
        if part_id:
            args["part_id"] = part_id
        try:
            answer = await mqtt_link.request(st.base, "part", args, cfg.review_timeout_s)
        except CommandTimeout as exc:
            answer = {"command": "part", "ok": False, "refusal": {"detail": str(exc)}}
        return JSONResponse(answer, status_code=200 if answer["ok"] else 502)

    async def events(request: Request) -> Response:
        if (refused := _need(request, "viewer")) is not None:
            return refused
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        hub.clients.add(queue)

        async def stream() -> AsyncIterator[str]:
            try:
                yield f"event: line\ndata: {json.dumps(line.snapshot())}\n\n"
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keep-alive\n\n"  # proxies close idle streams
                        continue
                    if item is None:
                        return
                    yield item
            finally:
                hub.clients.discard(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _body(request: Request) -> dict[str, Any] | Response:
        if (refused := _need(request, "operator") or _same_origin(request)) is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"ok": False, "error": "not JSON"}, status_code=400)
        if not isinstance(body, dict) or body.get("base") not in line.stations:
            return JSONResponse({"ok": False, "error": "unknown station"}, status_code=404)
        return body

    async def _ask(request: Request, base: str, command: str, args: dict[str, Any]) -> Response:
        who = request.user.display_name
        log.info("ui.command", command=command, station=base, by=who, args=args)
        try:
            answer = await mqtt_link.request(base, command, args, cfg.review_timeout_s)
        except CommandTimeout as exc:
            answer = {
                "command": command,
                "base": base,
                "ok": False,
                "refusal": {"detail": str(exc)},
            }
        answer = {**answer, "by": who, "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        line.stations[base].on_answer(answer)
        hub.changed(base)
        return JSONResponse(answer, status_code=200 if answer["ok"] else 502)

    async def review(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        seq, part_id, label = body.get("seq"), body.get("part_id"), body.get("label")
        if not isinstance(seq, int) or not isinstance(part_id, str) or label not in (*LABELS, None):
            return JSONResponse(
                {
                    "ok": False,
                    "error": f"expected seq, part_id and label ({', '.join(LABELS)}; "
                    "null undoes the part's review)",
                },
                status_code=400,
            )
        args = {"seq": seq, "part_id": part_id, "by": request.user.display_name}
        if label is None:
            return await _ask(request, body["base"], "unreview", args)
        return await _ask(request, body["base"], "review", {**args, "label": label})

    async def command(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        name, args = body.get("command"), body.get("args") or {}
        if name not in COMMANDS or not isinstance(args, dict):
            return JSONResponse(
                {"ok": False, "error": f"command: one of {', '.join(COMMANDS)}"}, status_code=400
            )
        if name in SIGNED:
            args = {**args, "by": request.user.display_name}
        return await _ask(request, body["base"], name, args)

    async def favicon(request: Request) -> Response:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "broker": line.broker, "stations": len(line.stations)})

    def on_auth_error(conn: HTTPConnection, exc: AuthenticationError) -> Response:
        return _unauthorized(conn, exc)

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/favicon.ico", favicon),  # browsers ask for it whatever the page links
        Route("/api/me", me),
        Route("/api/line", snapshot),
        Route("/api/station", station),
        Route("/api/overlay", overlay),
        Route("/api/part", part),
        Route("/api/events", events),
        Route("/api/review", review, methods=["POST"]),
        Route("/api/command", command, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),  # no data in it: open
    ]
    middleware = [
        # first: a request for another host name (DNS rebinding) reaches nothing, not even login
        Middleware(TrustedHostMiddleware, allowed_hosts=cfg.listen.allowed_hosts()),
        Middleware(
            AuthenticationMiddleware, backend=UiAuthBackend(credentials), on_error=on_auth_error
        ),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.line, app.state.hub, app.state.link = line, hub, mqtt_link
    return app
