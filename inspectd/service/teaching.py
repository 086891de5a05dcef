"""A station's teach, refit and version commands (docs/mqtt.md#teaching, docs/teach.md).

``teach`` takes the station's next N parts for a product: each is recorded as verdict **NG** with
``error: "teach"`` (so a PLC holds it, as it does every NG: a part nobody has judged is never
OK) and its frame is kept in ``state_dir/teach/<product>/<UTC time>/``. Then ``inspectd teach``
runs in a child process on that folder (the daemon never imports torch, and a fit that dies
takes nothing of the station with it): it fits, calibrates and writes a version that is not
active. ``refit`` runs ``inspectd teach --from-reviews`` on the station's archive. Each step is
an event on ``…/teach``; the operator then sends ``accept`` (active, and the station switches
to it between two parts when it runs the product) or ``discard``. ``versions`` lists a
product's versions, ``rollback`` goes back to the parent (or ``to``) the same way as accept.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import structlog

from inspectd.config.base import NAME_PATTERN
from inspectd.contract.messages import teach_message
from inspectd.contract.vocabulary import Command
from inspectd.mqtt.commands import CommandError
from inspectd.versions import layout, listing, store

if TYPE_CHECKING:
    from inspectd.config import StationConfig
    from inspectd.contract.topics import Topics
    from inspectd.frame import Frame
    from inspectd.mqtt.publisher import MqttPublisher
    from inspectd.service.control import ProductControl

log = structlog.get_logger(__name__)

MAX_COUNT = 10_000
_BY = re.compile(r"^[\w .@-]{1,64}$")


class Tap:
    """The pipeline's hook while a teach takes parts: ``__call__(frame)`` on the inference
    thread keeps the frame and says the part is taken (True), until ``count`` are."""

    def __init__(self, folder: Path, count: int, on_taken: Callable[[int, bool], None]) -> None:
        self.folder, self.count, self.on_taken = folder, count, on_taken
        self.taken = 0
        self._lock = threading.Lock()

    def __call__(self, frame: Frame) -> bool:
        with self._lock:
            if self.taken >= self.count or frame.image is None:
                return False
            self.taken += 1
            n = self.taken
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", frame.part_id)[:64]
        # lossless: these frames become the memory and the calibration set
        if not cv2.imwrite(str(self.folder / f"{n:05d}-{safe}.png"), frame.image):
            log.error("teach.frame_not_written", part_id=frame.part_id)
        self.on_taken(n, n == self.count)
        return True


class TeachDesk:
    def __init__(
        self,
        control: ProductControl,
        config: StationConfig,
        publisher: MqttPublisher,
        topics: Topics,
    ) -> None:
        self.control, self.config = control, config
        self.publisher, self.topics = publisher, topics
        self._lock = threading.Lock()
        self._busy: dict[str, Any] | None = None  # the teach or refit under way

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            Command.TEACH: self.teach,
            Command.REFIT: self.refit,
            Command.ACCEPT: self.accept,
            Command.DISCARD: self.discard,
            Command.VERSIONS: self.versions,
            Command.ROLLBACK: self.rollback,
        }

    # -- events --------------------------------------------------------------------------------

    def _event(self, state: str, **fields: Any) -> None:
        job = self._busy or {}
        product, kind = job.get("product"), job.get("kind")
        log.info("teach.event", state=state, product=product, kind=kind, **fields)
        self.publisher.enqueue(teach_message(self.topics, state, product, kind, **fields))

    # -- teach and refit -------------------------------------------------------------------------

    def teach(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"product", "count", "by"?, "target_frr"?, "fit_share"?}``: take the next parts."""
        _only(args, {"product", "count", "by", "target_frr", "fit_share"}, "teach")
        product = _product(args.get("product"))
        count = args.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or not 4 <= count <= MAX_COUNT:
            raise CommandError(f"count: {count!r}; expected a whole number from 4 to {MAX_COUNT}")
        extra = _options(args)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        folder = self.config.state_dir / "teach" / product / stamp
        pipeline = self.control.pipeline  # refused while the station starts
        self._start(product, "teach", extra)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._busy = None
            raise CommandError(f"cannot keep the teach's frames in {folder}: {exc}") from exc

        def taken(n: int, full: bool) -> None:
            self._event("collecting", taken=n, count=count)
            if full:
                pipeline.tap = None
                extra["images"] = folder
                self._spawn(product, extra)

        pipeline.tap = Tap(folder, count, taken)
        self._event("collecting", taken=0, count=count, folder=str(folder))
        return {"product": product, "count": count, "folder": str(folder), "state": "collecting"}

    def refit(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"product"?, "by"?, "target_frr"?, "fit_share"?}``: refit from the reviews."""
        _only(args, {"product", "by", "target_frr", "fit_share"}, "refit")
        product = _product(args.get("product", self.control.pipeline.next_bundle().name))
        if not self.config.archive.enabled or self.config.archive.dir is None:
            raise CommandError("this station keeps no archive: no reviews to refit from")
        extra = _options(args)
        extra["reviews"] = self.config.archive.dir
        self._start(product, "refit", extra)
        self._spawn(product, extra)
        return {"product": product, "state": "fitting"}

    def _start(self, product: str, kind: str, extra: dict[str, Any]) -> None:
        with self._lock:
            if self._busy is not None:
                raise CommandError(
                    f"a {self._busy['kind']} of {self._busy['product']} is under way; wait for "
                    "its written or failed event on …/teach"
                )
            self._busy = {"product": product, "kind": kind}

    def _spawn(self, product: str, extra: dict[str, Any]) -> None:
        argv = [sys.executable, "-m", "inspectd", "teach", "--product", product]
        argv += ["--products", str(self.config.products_dir), "--json"]
        argv += ["--keep", str(max(2, self.config.versions.keep))]
        if "images" in extra:
            argv += ["--images", str(extra["images"])]
        else:
            argv += ["--from-reviews", "--reviews", str(extra["reviews"])]
        for key in ("by", "target_frr", "fit_share"):
            if key in extra:
                argv += [f"--{key.replace('_', '-')}", str(extra[key])]
        threading.Thread(target=self._fit, args=(argv,), name="teach", daemon=True).start()

    def _fit(self, argv: list[str]) -> None:
        self._event("fitting")
        t0 = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
            lines = proc.stdout.strip().splitlines()
            if proc.returncode == 0 and lines:
                out = json.loads(lines[-1])
                self._finish("written", **{k: out[k] for k in _WRITTEN if k in out})
            else:
                why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                self._finish("failed", error=why[:500], exit=proc.returncode)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            self._finish("failed", error=f"{type(exc).__name__}: {exc}"[:500])
        log.info("teach.fit_ended", seconds=round(time.monotonic() - t0, 1))

    def _finish(self, state: str, **fields: Any) -> None:
        self._event(state, **fields)
        with self._lock:
            self._busy = None

    # -- versions --------------------------------------------------------------------------------

    def accept(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"product", "version", "by"?}``: make a taught version active."""
        _only(args, {"product", "version", "by"}, "accept")
        return self._activate(args, _version(args.get("version")), "teach")

    def discard(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"product", "version"}``: delete a version that is not active."""
        _only(args, {"product", "version"}, "discard")
        product = _product(args.get("product"))
        version = _version(args.get("version"))
        try:
            store.discard(self.config.products_dir / product, version)
        except store.VersionStoreError as exc:
            raise CommandError(str(exc)) from exc
        return {"product": product, "version": version, "discarded": True}

    def versions(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"product"?}``: every version of the product (default: the running one)."""
        _only(args, {"product"}, "versions")
        product = _product(args.get("product", self.control.pipeline.next_bundle().name))
        try:
            rows = listing.history(self.config.products_dir / product)
        except layout.VersionError as exc:
            raise CommandError(str(exc)) from exc
        return {"product": product, "versions": [r.to_json() for r in rows]}

    def rollback(self, args: dict[str, Any]) -> dict[str, Any]:
        """``{"product"?, "to"?, "by"?}``: the version the active one was made from, or ``to``."""
        _only(args, {"product", "to", "by"}, "rollback")
        args = {"product": self.control.pipeline.next_bundle().name, **args}
        folder = self.config.products_dir / _product(args["product"])
        try:
            target = _version(args["to"]) if "to" in args else listing.rollback_target(folder)
        except layout.VersionError as exc:
            raise CommandError(str(exc)) from exc
        return self._activate(args, target, "rollback")

    def _activate(self, args: dict[str, Any], version: int, why: layout.Why) -> dict[str, Any]:
        product = _product(args.get("product"))
        by = _by(args.get("by", "station"))
        folder = self.config.products_dir / product
        try:
            previous = layout.active_version(folder)
            store.activate(folder, version, by, why)
        except (layout.VersionError, store.VersionStoreError) as exc:
            raise CommandError(str(exc)) from exc
        out: dict[str, Any] = {"product": product, "version": version, "previous": previous}
        # the running product: switch between two parts (model and thresholds together)
        out["switched"] = self.control.pipeline.next_bundle().name == product
        if out["switched"]:
            self.control.switch(product)
        return out


_WRITTEN = ("version", "model_sha256", "image_threshold", "figures", "report", "seconds")


def _only(args: dict[str, Any], allowed: set[str], command: str) -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise CommandError(f"{command}: unknown fields {unknown}; allowed: {sorted(allowed)}")


def _product(name: Any) -> str:
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name) or len(name) > 64:
        raise CommandError(
            f"product: {name!r}; expected a product name (letters, digits, _ and -, at most 64)"
        )
    return name


def _version(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < layout.BASE:
        raise CommandError(f"version: {value!r}; expected a version number (an integer >= 1)")
    return value


def _by(value: Any) -> str:
    if not isinstance(value, str) or not _BY.match(value):
        raise CommandError("by: letters, digits, spaces, '.', '@', '_' and '-' (at most 64)")
    return value


def _options(args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"by": _by(args.get("by", "station"))}
    for key, low, high in (("target_frr", 0.0, 1.0), ("fit_share", 0.0, 1.0)):
        if key in args:
            value = args[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise CommandError(f"{key}: {value!r}; expected a number between {low} and {high}")
            if not low < value < high:
                raise CommandError(f"{key}: {value!r}; expected a number between {low} and {high}")
            out[key] = float(value)
    return out
