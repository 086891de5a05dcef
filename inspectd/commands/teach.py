"""`inspectd teach`: teach a product from good parts, refit it from the parts operators reviewed,
and accept or discard what was taught (docs/teach.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inspectd.commands import EXIT_CONFIG, Subparsers, add_version_args, load_config
from inspectd.commands.versions import add_products_args

if TYPE_CHECKING:
    from inspectd.config import StationConfig


def add_parser(sub: Subparsers) -> None:
    t = sub.add_parser(
        "teach",
        help="teach a product from good parts (or refit it from reviews); accept or discard",
        description="Fit the feature memory (patchcore) on part of the good parts, calibrate on "
        "the rest with a stated false-reject bound, and write the result as a new version of "
        "the product, NOT active: --accept makes it active (and, with --config, switches the "
        "station to it between two parts), --discard deletes it. --from-reviews refits: the "
        "parts the active version was taught with, plus the station's reviewed false rejects "
        "(into the memory and the calibration set); its reviewed true and missed defects are "
        "the report's defect set. --count N with --config: the station takes its next N parts "
        "(recorded NG, reason teach) and teaches from them.",
    )
    add_products_args(t)
    what = t.add_mutually_exclusive_group()
    what.add_argument(
        "--images", type=Path, action="append", help="folder of good part images (again: more)"
    )
    t.add_argument(
        "--from-reviews",
        action="store_true",
        help="refit from reviewed parts (with --images: those as the good parts)",
    )
    what.add_argument("--count", type=int, help="with --config: the station's next N parts")
    what.add_argument("--accept", type=int, metavar="VERSION", help="make a taught version active")
    what.add_argument("--discard", type=int, metavar="VERSION", help="delete a taught version")
    t.add_argument(
        "--reviews",
        type=Path,
        default=None,
        help="with --from-reviews: the station's archive folder (default: its config's)",
    )
    t.add_argument("--defects", type=Path, default=None, help="defect images: <dir>/<type>/*")
    t.add_argument("--target-frr", type=float, default=0.01, help="false-reject rate aimed at")
    t.add_argument("--confidence", type=float, default=0.95, help="confidence of the bound")
    t.add_argument(
        "--fit-share", type=float, default=0.5, help="share of the parts the memory is fitted on"
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--note", default="", help="a note for the version's record")
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for a station")
    add_version_args(t)
    t.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"inspectd teach: {message}", file=sys.stderr)
    return EXIT_CONFIG


def run(args: argparse.Namespace) -> int:
    from inspectd.logs import configure_logging

    configure_logging("warning", "console")
    config = load_config(args.config) if args.config is not None else None
    if args.config is not None and config is None:
        return EXIT_CONFIG
    products = args.products or (config.products_dir if config else None) or Path("products")
    product = products / args.product
    if args.from_reviews and (args.count, args.accept, args.discard) != (None, None, None):
        return _fail("--from-reviews goes with --images or alone, not --count, --accept, --discard")
    if args.accept is not None or args.discard is not None:
        return _accept_or_discard(args, product, config)
    if args.count is not None:
        if config is None:
            return _fail("--count takes the parts from a station's camera: give --config")
        from inspectd.commands.station_link import request_station

        answer = request_station(
            config, "teach", _station_args(args), args.timeout, wait_event="teach"
        )
        return _print_station(answer, args.json)
    if not args.images and not args.from_reviews:
        return _fail("give --images DIR, --from-reviews, --count N, --accept ID or --discard ID")
    return _teach_files(args, product, config)


def _print_station(answer: dict[str, Any], as_json: bool) -> int:
    """The station's teach: its answer, then the outcome event (version written, or why not)."""
    if not answer["ok"]:
        why = answer.get("error") or answer.get("refusal", {}).get("detail")
        print(f"inspectd teach: the station did not teach: {why}", file=sys.stderr)
        return 1
    event = answer.get("event", {})
    if as_json:
        print(json.dumps(event))
    elif event.get("state") == "written":
        print(
            f"{event['product']}: version {event['version']} written from the station's parts "
            f"(not active), image threshold {event['image_threshold']:.6g}; report "
            f"{event['report']}; accept: inspectd teach --product {event['product']} --accept "
            f"{event['version']} --config ..."
        )
    else:
        print(f"inspectd teach: the station's teach failed: {event.get('error')}", file=sys.stderr)
    return 0 if event.get("state") == "written" else 1


def _station_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"product": args.product, "count": args.count, "by": args.by}
    out.update(target_frr=args.target_frr, fit_share=args.fit_share)
    return out


def _teach_files(args: argparse.Namespace, product: Path, config: StationConfig | None) -> int:
    from inspectd.calibrate.calibration import CalibrationError, defect_samples, good_images
    from inspectd.reviews import reviewed_frames
    from inspectd.train.teach import TeachError, TeachRequest, taught_parts, teach

    keep = args.keep or (config.versions.keep if config else None)
    try:
        good = good_images(args.images) if args.images else []
        defects = defect_samples(args.defects) if args.defects else []
        reviewed: list[Path] = []
        origin = "teach"
        if args.from_reviews:
            origin = "refit"
            archive = args.reviews or (config.archive.dir if config else None)
            if archive is None:
                return _fail("--from-reviews: give --reviews ARCHIVE or the station's --config")
            good = good or taught_parts(product)
            reviewed = reviewed_frames(archive, "false_reject", args.product)
            if not reviewed:
                return _fail(f"{archive}: no false rejects of {args.product} reviewed")
            if not defects:
                defects = _reviewed_defects(archive, args.product)
        req = TeachRequest(
            product,
            good,
            reviewed=reviewed,
            defects=defects,
            origin=origin,  # type: ignore[arg-type]
            fit_share=args.fit_share,
            target_frr=args.target_frr,
            confidence=args.confidence,
            seed=args.seed,
            by=args.by,
            note=args.note,
            progress=not args.json and sys.stderr.isatty(),
            **({"keep": keep} if keep else {}),
        )
        taught = teach(req)
    except (TeachError, CalibrationError) as exc:
        return _fail(str(exc))
    v = taught.version
    out = {
        "product": v.name,
        "version": v.version,
        "origin": origin,
        "active": False,
        "model_sha256": v.model_sha256,
        "image_threshold": v.thresholds.image,
        "figures": taught.figures,
        "seconds": taught.seconds,
        "report": str(v.path / "calibration.md"),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    from inspectd.calibrate.calibration import Request
    from inspectd.calibrate.summary import summary

    print(summary(taught.calibration, Request(product, target_frr=args.target_frr)))
    f = taught.figures
    if "defects_caught" in f:
        print(f"known defects caught by the new version: {f['defects_caught']} of {f['n_defects']}")
    print(
        f"{v.name}: version {v.version} written ({origin}, {f['n_fit']} parts in the memory fit, "
        f"{f['n_good']} calibrated, {taught.seconds:.0f} s), not active; report {out['report']}\n"
        f"accept: inspectd teach --product {v.name} --accept {v.version}; "
        f"discard: inspectd teach --product {v.name} --discard {v.version}"
    )
    return 0


def _reviewed_defects(archive: Path, product: str) -> list[Any]:
    from inspectd.reviews import reviewed_frames
    from inspectd.train.datasets.mvtec import Sample

    return [
        Sample(p, label)
        for label in ("true_defect", "missed_defect")
        for p in reviewed_frames(archive, label, product)
    ]


def _accept_or_discard(
    args: argparse.Namespace, product: Path, config: StationConfig | None
) -> int:
    from inspectd.versions.store import VersionStoreError, activate, discard

    try:
        if args.discard is not None:
            discard(product, args.discard)
            print(f"{product.name}: version {args.discard} discarded")
            return 0
        activate(product, args.accept, args.by, "teach")
    except VersionStoreError as exc:
        return _fail(str(exc))
    print(f"{product.name}: version {args.accept} is active")
    if config is None:
        return 0
    from inspectd.commands.station_link import tell_station

    return tell_station(config, product.name, min(args.timeout, 60.0))
