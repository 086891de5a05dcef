"""The words of the wire contract (docs/mqtt.md) that a reader matches on, each set in one
place: a station's status, its health state, the command names, and the codes of a refused
request on ``…/error``. ``StrEnum``: a member is its string, so payloads and comparisons with
plain strings stay as they were (tests/unit/test_vocabulary.py holds them to the document).
A verdict's OK / NG / ERROR is ``inspectd.contract.verdict.Verdict``."""

from __future__ import annotations

from enum import StrEnum


class StationState(StrEnum):
    """``…/status``'s ``state``."""

    ONLINE = "online"
    STOPPED = "stopped"  # a clean stop
    OFFLINE = "offline"  # the broker's Last Will: the connection died


class HealthState(StrEnum):
    """``…/health``'s ``state``: degraded while anything is in its ``problems``."""

    OK = "ok"
    DEGRADED = "degraded"


class Command(StrEnum):
    """``…/cmd/<name>/set``'s names."""

    RELOAD_THRESHOLDS = "reload_thresholds"
    PRODUCT = "product"
    PRODUCTS = "products"
    REVIEW = "review"
    UNREVIEW = "unreview"
    REVIEWS = "reviews"
    TEACH = "teach"  # take the next N parts, fit, calibrate: a version not active
    REFIT = "refit"  # the same from the parts reviewed false rejects
    ACCEPT = "accept"  # make a taught version active
    DISCARD = "discard"  # delete a taught version
    VERSIONS = "versions"
    ROLLBACK = "rollback"


TEACH = "teach"
"""A verdict's ``error`` for a part a station took to teach a product: verdict NG (held, as
every NG is), never OK, since no model judged it (docs/teach.md)."""


class ErrorCode(StrEnum):
    """``…/error``'s ``error``: why a trigger or command was refused or got no answer."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    MALFORMED_JSON = "malformed_json"
    INVALID_REQUEST = "invalid_request"
    RETAINED = "retained"
    UNKNOWN_COMMAND = "unknown_command"
    COMMAND_FAILED = "command_failed"
    NOT_TRIGGERED = "not_triggered"
    NOT_READY = "not_ready"
    OVERLOADED = "overloaded"
    NOT_INSPECTED = "not_inspected"
    INTERNAL_ERROR = "internal_error"
