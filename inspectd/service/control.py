"""What changes the running model or its thresholds: the threshold reload (SIGHUP, the
``reload_thresholds`` command) and the product switch (the ``product`` command, a PLC's
SelectProduct). One lock for both, and both go through the pipeline's swap: the reload takes the
bundle the next part is judged with (a waiting switch's) and replaces its thresholds under the
switch's lock, so model and thresholds change together between two parts (issue 31: a reload
racing a switch judged the new model with the old product's thresholds).

Both load a product's active version (inspectd.versions): a switch to the running product
takes a version with another model (``inspectd rollback`` sends one), a reload one with new
thresholds for the running model (what ``inspectd calibrate`` writes)."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from inspectd.bundle import Bundle, BundleError, load_bundle
from inspectd.config.base import NAME_PATTERN
from inspectd.contract.vocabulary import Command
from inspectd.engine.base import Engine, EngineError
from inspectd.mqtt.commands import CommandError
from inspectd.mqtt.inbound import MAX_ID_CHARS
from inspectd.versions.layout import product_names

if TYPE_CHECKING:
    from inspectd.drift import DriftMonitor
    from inspectd.mqtt.publisher import MqttPublisher
    from inspectd.pipeline import Pipeline
    from inspectd.plc.handshake import Handshake

log = structlog.get_logger(__name__)


class ProductControl:
    def __init__(self, products_dir: Path, load_engine: Callable[[Bundle], Engine]) -> None:
        self.products_dir, self.load_engine = products_dir, load_engine
        self._lock = threading.Lock()
        self._pipeline: Pipeline | None = None
        self._handshake: Handshake | None = None
        self._drift: DriftMonitor | None = None
        self._publisher: MqttPublisher | None = None

    def attach(
        self,
        pipeline: Pipeline,
        *,
        handshake: Handshake | None,
        drift: DriftMonitor | None,
        publisher: MqttPublisher | None,
    ) -> None:
        """What it controls, once the station has started it."""
        self._pipeline, self._handshake = pipeline, handshake
        self._drift, self._publisher = drift, publisher

    def commands(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        """Its MQTT commands (docs/mqtt.md)."""
        return {
            Command.RELOAD_THRESHOLDS: self._cmd_reload,
            Command.PRODUCT: self._cmd_product,
            Command.PRODUCTS: self._cmd_products,
        }

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            raise CommandError("the station is still starting")
        return self._pipeline

    def reload_thresholds(self) -> dict[str, Any]:
        """Read the bundle's thresholds again; the model must be the one running."""
        pipeline = self.pipeline
        with self._lock:  # no product switch meanwhile
            # the product a switch just asked for, if it is still waiting for the next part
            current = pipeline.next_bundle()
            try:
                fresh = load_bundle(self.products_dir / current.name)
            except BundleError as exc:
                raise CommandError(f"thresholds not reloaded: {exc}") from exc
            short = fresh.thresholds.short_of_target()
            if short is not None:  # a --force calibration from a handful of parts
                raise CommandError(f"thresholds not reloaded: {short}")
            if fresh.model_sha256 != current.model_sha256:
                raise CommandError(
                    f"thresholds not reloaded: the model of {current.name} changed on disk "
                    f"(version {fresh.version}: {fresh.model_sha256[:12]}…, running version "
                    f"{current.version}: {current.model_sha256[:12]}…); switch to the product "
                    "(the product command) or restart to load it"
                )
            old = current.thresholds
            pipeline.replace_thresholds(fresh)
            if self._drift is not None:
                self._drift.reset(fresh.thresholds.quantiles)
        result = {
            "product": current.name,
            "version": fresh.version,
            "image": fresh.thresholds.image,
            "previous_image": old.image,
            "pixel": fresh.thresholds.pixel,
        }
        log.info("thresholds.reloaded", **result)
        return result

    def switch(self, name: Any) -> dict[str, Any]:
        """Load bundle ``name`` and its engine, then swap them in between two parts; the old
        product keeps running when either cannot be loaded."""
        if (
            not isinstance(name, str)
            or not re.match(NAME_PATTERN, name)
            or len(name) > MAX_ID_CHARS  # checked before it is a path: ENAMETOOLONG crashed it
        ):
            raise CommandError(
                'expected {"product": "<bundle name>"} (letters, digits, _ and -, at most '
                f"{MAX_ID_CHARS})"
            )
        pipeline = self.pipeline
        handshake = self._handshake
        changeover = handshake.changeover(name) if handshake else contextlib.nullcontext()
        with self._lock, changeover:  # triggers meanwhile are answered not_ready
            try:
                bundle = load_bundle(self.products_dir / name)
            except BundleError as exc:
                raise CommandError(f"product not switched: {exc}") from exc
            try:
                engine = self.load_engine(bundle)
            except EngineError as exc:  # e.g. a bundle without model.pt on the torch backend
                raise CommandError(f"product not switched: {exc}") from exc
            previous = pipeline.bundle
            pipeline.swap_product(bundle, engine)
            if self._drift is not None:
                self._drift.reset(bundle.thresholds.quantiles)
        if self._publisher is not None:
            self._publisher.set_status_fields(product=bundle.name, model_sha256=bundle.model_sha256)
        return {
            "product": bundle.name,
            "version": bundle.version,
            "model_sha256": bundle.model_sha256,
            "previous": previous.name,
            "previous_version": previous.version,
        }

    def products(self) -> dict[str, Any]:
        """The bundles a switch can go to (the page offers them, not free text)."""
        return {
            "products": product_names(self.products_dir),
            "current": self.pipeline.next_bundle().name,
        }

    def _cmd_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        if args:
            raise CommandError(f"reload_thresholds takes no arguments, got {sorted(args)}")
        return self.reload_thresholds()

    def _cmd_product(self, args: dict[str, Any]) -> dict[str, Any]:
        # anything but {"product": <name>} gets the refusal of a bad name
        return self.switch(args["product"] if set(args) == {"product"} else None)

    def _cmd_products(self, args: dict[str, Any]) -> dict[str, Any]:
        if args:
            raise CommandError(f"products takes no arguments, got {sorted(args)}")
        return self.products()
