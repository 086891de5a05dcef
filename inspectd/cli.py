"""The `inspectd` command. Heavy imports happen inside each command, so `inspectd run` never
imports torch and `inspectd check-config` starts in a blink."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inspectd.config import StationConfig

EXIT_CONFIG = 2  # config and bundle errors: systemd must not restart-loop on them


def _load_config(path: Path) -> StationConfig | None:
    """The station config, or None after printing every error to stderr."""
    from inspectd.config import ConfigError, load_station_config

    try:
        return load_station_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    from inspectd.bundle import BundleError
    from inspectd.capture.base import CaptureError
    from inspectd.engine import EngineError
    from inspectd.logs import configure_logging
    from inspectd.mqtt.commands import CommandError
    from inspectd.notify import Notifier
    from inspectd.station import StartupError, Station

    config = _load_config(args.config)
    if config is None:
        return EXIT_CONFIG
    # Under systemd only StateDirectory= is writable: a state_dir elsewhere would leave the
    # outbox in memory, not durable, for as long as the station runs. Refuse it instead.
    service_state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if service_state and not config.state_dir.resolve().is_relative_to(Path(service_state).resolve()):
        print(f"{args.config}: state_dir: {config.state_dir} is not inside this service's state "
              f"directory {service_state} (StateDirectory=); set state_dir: {service_state}",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    configure_logging(config.logging.level, config.logging.format)
    notifier = Notifier.from_env()  # systemd's $NOTIFY_SOCKET; silent without it
    stop = threading.Event()

    def on_stop(*_: object) -> None:
        stop.set()
        notifier.stopping("stopping: finishing the parts in the pipeline")  # before the drain

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_stop)
    station = Station(config, notifier=notifier)

    def reload(*_: object) -> None:
        if station.watch is None:  # READY=1 not sent yet: a reload must not announce it
            print("inspectd: SIGHUP before the station was ready: ignored", file=sys.stderr)
            return
        notifier.reloading("reloading thresholds")
        status = "thresholds not reloaded"
        try:
            result = station.reload_thresholds()
            status = f"thresholds reloaded: image {result['image']}"
        except CommandError as exc:
            print(f"inspectd: {exc}", file=sys.stderr)
            status = str(exc)
        finally:
            notifier.ready(status)  # ends the reload either way (Type=notify-reload waits for it)

    # SIGHUP: thresholds again from the bundle, off the signal handler (it reads and hashes files)
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload, daemon=True).start())
    try:
        station.start()
    except (BundleError, CaptureError, EngineError, StartupError) as exc:
        print(f"inspectd: {exc}", file=sys.stderr)
        station.stop()
        # A bad bundle or setting needs a person; a camera that is not there yet may come
        # back, so that one is an ordinary failure that systemd retries.
        return 1 if isinstance(exc, CaptureError) else EXIT_CONFIG
    try:
        stats = station.run(stop=stop)
    finally:
        station.stop()
    # A camera that broke is a failure: systemd restarts the service (Restart=on-failure).
    return 1 if stats.capture_failure else 0


def _check_config(args: argparse.Namespace) -> int:
    from inspectd.config import format_resolved

    config = _load_config(args.file)
    if config is None:
        return EXIT_CONFIG
    print(format_resolved(config), end="")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from inspectd.demo import REPO_PRODUCTS, run_demo
    from inspectd.logs import configure_logging

    configure_logging("error", "console")  # the part lines already show every ERROR's reason
    return run_demo(args.out, args.limit, args.mqtt_host, args.mqtt_port, args.products or REPO_PRODUCTS)


def _train(args: argparse.Namespace) -> int:
    import yaml

    from inspectd.logs import configure_logging
    from inspectd.train.build import BuildRequest, build_product, training_settings
    from inspectd.train.models import family
    from inspectd.train.models.vgg import WeightsError

    configure_logging("info", "console")
    roi = tuple(int(v) for v in args.roi.split(",")) if args.roi else None
    if roi is not None and len(roi) != 4:
        print("inspectd train: --roi takes x,y,width,height", file=sys.stderr)
        return EXIT_CONFIG
    params: dict = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"inspectd train: --param takes KEY=VALUE, got {item!r}", file=sys.stderr)
            return EXIT_CONFIG
        params[key] = yaml.safe_load(value)  # numbers, booleans and [lists] as in YAML
    if args.input_size is not None:
        params["input_size"] = args.input_size
    if args.finetune_vgg:
        params["finetune_vgg"] = True
    fam = family(args.model)
    try:
        settings = training_settings(
            fam, args.product, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            patience=args.patience, early_stop_start=args.early_stop_start,
            noise_sigma=args.noise_sigma, seed=args.seed, device=args.device,
        )  # fmt: skip
        build_product(
            BuildRequest(
                product=args.product, data=args.data, out=args.products / args.product,
                model=args.model, params=params, roi=roi,  # type: ignore[arg-type]
                settings=settings, vgg_weights=args.vgg_weights, resume=args.resume,
            )
        )  # fmt: skip
    except (FileNotFoundError, ValueError, WeightsError) as exc:
        print(f"inspectd train: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _export(args: argparse.Namespace) -> int:
    from inspectd.bundle import BundleError
    from inspectd.deploy.export import ExportError, reexport
    from inspectd.logs import configure_logging

    configure_logging("info", "console")
    try:
        print(reexport(args.products / args.product, fp16_weights=args.fp16_weights, images=args.images))
    except (BundleError, ExportError) as exc:
        print(f"inspectd export: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Score a data set's test split with a bundle through ONNX Runtime (no torch) and report."""
    import json

    from inspectd.bundle import BundleError, load_bundle
    from inspectd.engine import EngineError, load_engine
    from inspectd.logs import configure_logging
    from inspectd.preprocess import PreprocessError
    from inspectd.train.datasets.mvtec import MVTecSet
    from inspectd.train.evaluate import evaluate, to_markdown

    configure_logging("warning", "console")
    try:
        bundle = load_bundle(args.products / args.product)
        dataset = MVTecSet(args.data)
        if not dataset.test():
            raise ValueError(f"{args.data}: no test images (test/good/*, test/<defect>/*)")
        engine = load_engine(bundle.model_path)
        result = evaluate(engine, dataset, bundle.manifest.preprocess, bundle.thresholds.image,
                          batch=args.batch_size, progress=True)  # fmt: skip
    except (BundleError, EngineError, FileNotFoundError, PreprocessError, ValueError) as exc:
        print(f"inspectd eval: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    table = to_markdown(result, title=f"{bundle.name} ({bundle.manifest.model.family}) on {args.data}")
    print(table, end="")
    if args.json is not None:
        report = {"product": bundle.name, "model_sha256": bundle.model_sha256,
                  "data": str(args.data), **result}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.md is not None:
        args.md.write_text(table)
    return 0


def _add_bundle_args(parser: argparse.ArgumentParser) -> None:
    """--product and --products, for the commands that work on one bundle."""
    parser.add_argument("--product", required=True)
    parser.add_argument("--products", type=Path, default=Path("products"), help="folder holding the bundles")


def _add_eval_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="measure a bundle on an MVTec-layout test set (AUROC, AUPRO, F1-max)",
        description="Score <data>/test with the bundle's ONNX graph and print image AUROC, pixel "
        "AUROC, AUPRO (to 30% FPR, normalised), image F1-max and the threshold's recall and "
        "false rejects, per defect type (each against all good test images) and overall. "
        "Exit status 2 when the bundle or the data set cannot be used.",
    )
    _add_bundle_args(ev)
    ev.add_argument("--data", type=Path, required=True, help="MVTec-layout data set (its test/ split)")
    ev.add_argument("--json", type=Path, default=None, help="write the metrics as JSON here")
    ev.add_argument("--md", type=Path, default=None, help="write the Markdown table here")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.set_defaults(func=_eval)


def _build_engine(args: argparse.Namespace) -> int:
    """ONNX -> TensorRT engine for this GPU, sealed into the bundle, then checked against ONNX
    Runtime on rendered parts (verdicts must all agree)."""
    from inspectd.bundle import BundleError
    from inspectd.engine import EngineError, EngineUnavailable
    from inspectd.logs import configure_logging

    configure_logging("warning", "console")
    try:
        from inspectd.deploy.tensorrt import BuildError, build_engine, builder_available

        if not builder_available():
            raise EngineUnavailable(
                "TensorRT with its builder is not installed for this Python (on a Jetson: "
                "JetPack's python3-libnvinfer in a venv made with --system-site-packages; on a GPU "
                "box the tensorrt wheel from NVIDIA's index); this machine can run onnxruntime or torch"
            )
        path = build_engine(args.products / args.product, precision=args.precision,
                            batch=args.batch, calib_images=args.calib_images,
                            state_dir=args.state_dir, say=print)  # fmt: skip
    except (BuildError, BundleError, EngineError) as exc:
        print(f"inspectd build-engine: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {path} and re-sealed {args.products / args.product / 'manifest.yaml'}")
    if args.no_verify:
        return 0
    return _verify_engine(argparse.Namespace(
        product=args.product, products=args.products, images=None, count=40, backend="tensorrt",
        device="cuda", batch=args.batch, precision=args.precision, state_dir=args.state_dir))  # fmt: skip


def _verify_engine(args: argparse.Namespace) -> int:
    """A backend vs ONNX Runtime on sample parts; exit 1 when any verdict differs."""
    from inspectd.bundle import BundleError, load_bundle
    from inspectd.engine import EngineError, load_engine
    from inspectd.engine.verify import compare, format_comparison, run_all, sample_images
    from inspectd.logs import configure_logging

    configure_logging("warning", "console")
    try:
        bundle = load_bundle(args.products / args.product)
        names, images = sample_images(bundle, args.images, n=args.count)
        candidate = load_engine(bundle.model_path, backend=args.backend, device=args.device,
                                bundle=bundle, max_batch=args.batch, precision=args.precision,
                                state_dir=args.state_dir)  # fmt: skip
        reference = load_engine(bundle.model_path, backend="onnxruntime")
    except (BundleError, EngineError, FileNotFoundError) as exc:
        print(f"inspectd verify-engine: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    result = compare(run_all(reference, images), run_all(candidate, images), names,
                     bundle.thresholds.image)  # fmt: skip
    text = format_comparison(result, args.backend)
    print(text, file=sys.stdout if result.agree else sys.stderr)
    return 0 if result.agree else 1


def _add_engine_parsers(sub: argparse._SubParsersAction) -> None:
    be = sub.add_parser(
        "build-engine",
        help="compile a bundle's ONNX graph to a TensorRT engine for this GPU",
        description="Build model.<gpu>-sm<cc>-trt<version>.engine beside model.onnx with "
        "TensorRT's builder (timing cache in --state-dir), record it in the manifest, then compare "
        "it with ONNX Runtime on rendered parts (as verify-engine). Exit status 2 when TensorRT or a "
        "GPU is not available, 1 when the engine judges any part differently.",
    )
    _add_bundle_args(be)
    be.add_argument("--precision", choices=["fp16", "int8", "fp32"], default="fp16")
    be.add_argument("--batch", type=int, default=1, help="largest batch (engine.max_batch)")
    be.add_argument("--calib-images", type=Path, default=None, help="int8: folder of good parts")
    be.add_argument("--state-dir", type=Path, default=None,
                    help="timing and calibration caches (default: <products>/.trt-cache)")  # fmt: skip
    be.add_argument("--no-verify", action="store_true", help="skip the comparison with ONNX Runtime")
    be.set_defaults(func=_build_engine)

    ve = sub.add_parser(
        "verify-engine",
        help="compare a backend with ONNX Runtime: map difference and verdict agreement",
        description="Run sample parts (--images, else rendered buttons with every defect) through "
        "the chosen backend and ONNX Runtime, print the largest anomaly-map and score difference "
        "and whether every verdict agrees against the bundle's image threshold. Exit status 1 when "
        "any verdict differs, 2 when the backend or a GPU is not available.",
    )
    _add_bundle_args(ve)
    ve.add_argument("--images", type=Path, default=None, help="folder of part images (searched recursively)")
    ve.add_argument("--count", type=int, default=40, help="rendered parts when --images is not given")
    ve.add_argument("--backend", choices=["tensorrt", "torch"], default="tensorrt")
    ve.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="torch only; tensorrt is cuda")
    ve.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="torch on cuda")
    ve.add_argument("--batch", type=int, default=8)
    ve.add_argument("--state-dir", type=Path, default=None,
                    help="where a tensorrt engine rebuilt for this GPU is kept")  # fmt: skip
    ve.set_defaults(func=_verify_engine)


def _calibrate(args: argparse.Namespace) -> int:
    from inspectd.calibrate.run import CalibrationError, Request, calibrate, summary, write
    from inspectd.capture.base import CaptureError
    from inspectd.logs import configure_logging

    configure_logging("warning", "console")
    products, camera = args.products, None
    if args.config is not None:
        if args.count < 1:
            print("inspectd calibrate: --config needs --count N (good parts to grab)", file=sys.stderr)
            return EXIT_CONFIG
        config = _load_config(args.config)
        if config is None:
            return EXIT_CONFIG
        products, camera = products or config.products_dir, config.camera
    req = Request(bundle_dir=(products or Path("products")) / args.product, images=args.images,
                  camera=camera, count=args.count, defects=args.defects,
                  target_frr=args.target_frr, confidence=args.confidence, method=args.method,
                  force=args.force, drop_training=args.drop_training,
                  pixel_quantile=args.pixel_quantile, min_area=args.min_region_area,
                  progress=sys.stderr.isatty())  # fmt: skip
    try:
        result = calibrate(req)
        files = write(result, req)
    except CalibrationError as exc:
        print(f"inspectd calibrate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CaptureError as exc:
        print(f"inspectd calibrate: camera: {exc}", file=sys.stderr)
        return 1
    print(summary(result, req))
    print("wrote " + ", ".join(str(f) for f in files))
    print("a running daemon takes them on SIGHUP (systemctl reload) or the reload_thresholds command")
    return 0


def _replay(args: argparse.Namespace) -> int:
    import json

    from inspectd.logs import configure_logging
    from inspectd.replay import ReplayError, format_report, replay

    configure_logging("error", "console")  # ERROR parts are in the report, with their reasons
    try:
        report = replay(args.archive, args.products_dir, args.product)
    except ReplayError as exc:
        print(f"inspectd replay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(format_report(report), end="")
    return 0


def _cameras(args: argparse.Namespace) -> int:
    from inspectd.capture.base import CaptureError
    from inspectd.capture.genicam import list_cameras
    from inspectd.logs import configure_logging

    configure_logging("error", "console")
    try:
        cameras = list_cameras(args.cti, pixel_format=not args.no_open)
    except CaptureError as exc:
        print(f"inspectd cameras: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not cameras:
        print("inspectd cameras: the GenTL producer sees no camera", file=sys.stderr)
        return 1
    head = ("#", "VENDOR", "MODEL", "SERIAL", "USER ID", "PIXEL FORMAT")
    rows = [head] + [
        (str(d.index), d.vendor, d.model, d.serial, d.user_id, fmt or "-") for d, fmt in cameras
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from inspectd import __version__

    p = argparse.ArgumentParser(prog="inspectd", description=__doc__)
    p.add_argument("--version", action="version", version=f"inspectd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a station")
    run.add_argument("--config", type=Path, required=True, help="station YAML file")
    run.set_defaults(func=_run)

    check = sub.add_parser("check-config", help="validate a station config and print it resolved")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_check_config)

    demo = sub.add_parser("demo", help="inspect freshly made buttons with the bundled product")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    demo.add_argument("--limit", type=int, default=60, help="number of parts")
    demo.add_argument("--mqtt-host", default="localhost")
    demo.add_argument("--mqtt-port", type=int, default=1883)
    demo.add_argument("--products", type=Path, default=None, help="products folder (default: the repo's)")
    demo.set_defaults(func=_demo)

    train = sub.add_parser("train", help="train a model on good images and write the bundle")
    train.add_argument("--product", required=True)
    train.add_argument("--data", type=Path, required=True, help="MVTec-layout data set")
    train.add_argument("--model", choices=["ae", "hybrid", "vivano"], default="ae")
    train.add_argument("--products", type=Path, default=Path("products"), help="where bundles go")
    train.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="model constructor setting, e.g. depth=6 (repeatable; see docs/models.md)")
    train.add_argument("--input-size", type=int, default=None, help="default: the model's own")
    # None: the paper's value for the chosen model (docs/models.md)
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--patience", type=int, default=None)
    train.add_argument("--early-stop-start", type=int, default=None)
    train.add_argument("--noise-sigma", type=float, default=None,
                       help="training input noise (hybrid default: the paper's per-class value)")
    train.add_argument("--vgg-weights", type=Path, default=None,
                       help="hybrid: torchvision-layout VGG19 weights file")
    train.add_argument("--finetune-vgg", action="store_true", help="hybrid: train the VGG blocks too")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--roi", default=None, help="x,y,width,height crop in frame pixels")
    train.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.set_defaults(func=_train)

    exp = sub.add_parser("export", help="re-export a bundle's model.onnx from its model.pt")
    _add_bundle_args(exp)
    exp.add_argument("--fp16-weights", action="store_true",
                     help="store weights as fp16 (half the file; maps change, so recalibrate)")
    exp.add_argument("--images", type=Path, default=None,
                     help="folder of frames for the parity check (default: synthetic inputs)")
    exp.set_defaults(func=_export)

    cal = sub.add_parser(
        "calibrate",
        help="set thresholds from known-good parts, with a stated false-reject rate",
        description="Score known-good parts (files or the station's camera), set the image "
        "threshold with a stated false-reject rate and confidence bound, the pixel threshold "
        "and the smallest region, write calibration.png/.md and re-seal the bundle. A running "
        "daemon picks the thresholds up on SIGHUP or the reload command.",
    )
    cal.add_argument("--product", required=True)
    cal.add_argument("--products", type=Path, default=None,
                     help="products folder (default: the station config's, else ./products)")  # fmt: skip
    good = cal.add_mutually_exclusive_group(required=True)
    good.add_argument("--images", type=Path, help="folder of known-good part images (searched recursively)")
    good.add_argument("--config", type=Path, help="station YAML: grab good parts from its camera")
    cal.add_argument("--count", type=int, default=0, help="with --config: good parts to grab")
    cal.add_argument("--defects", type=Path, default=None,
                     help="defect images: <dir>/<defect type>/*, masks from an MVTec ground_truth/")  # fmt: skip
    cal.add_argument("--target-frr", type=float, default=0.001, help="false-reject rate aimed at")
    cal.add_argument("--confidence", type=float, default=0.95, help="confidence of the bound")
    cal.add_argument("--method", choices=["order", "tail"], default="order",
                     help="order: distribution-free order statistic (default); tail: "
                          "generalised Pareto fit, bootstrap upper bound")  # fmt: skip
    cal.add_argument("--force", action="store_true",
                     help="too few parts for the target: use the highest good score and say the bound")  # fmt: skip
    cal.add_argument("--drop-training", action="store_true",
                     help="leave out images the model was trained on instead of refusing")  # fmt: skip
    cal.add_argument("--pixel-quantile", type=float, default=0.999,
                     help="pixel threshold: this quantile of good-part map pixels")  # fmt: skip
    cal.add_argument("--min-region-area", type=int, default=None,
                     help="smallest defect region in map pixels (default: keep the bundle's); "
                          "a product specification, reported beside the regions good parts show")  # fmt: skip
    cal.set_defaults(func=_calibrate)
    _add_eval_parser(sub)
    _add_engine_parsers(sub)

    rep = sub.add_parser(
        "replay",
        help="re-inspect archived parts with the current bundle and show what changed",
        description="Run the frames of a station's archive (archive.dir) through the current "
        "bundle with the daemon's own preprocessing, engine and decision, and compare each "
        "part's verdict and score with the archived ones.",
    )
    rep.add_argument("--archive", type=Path, required=True, help="the archive folder")
    rep.add_argument("--product", default=None,
                     help="bundle to inspect with (default: the product each part was inspected with)")  # fmt: skip
    rep.add_argument("--products-dir", "--products", dest="products_dir", type=Path,
                     default=Path("/etc/inspectd/products"),
                     help="folder holding the bundles (default: /etc/inspectd/products)")  # fmt: skip
    rep.add_argument("--json", action="store_true", help="print every part and the summary as JSON")
    rep.set_defaults(func=_replay)

    cams = sub.add_parser(
        "cameras",
        help="list the GenICam cameras a GenTL producer sees",
        description="List vendor, model, serial, user id and current pixel format of every "
        "camera the GenTL producer (--cti, else the .cti files in GENICAM_GENTL64_PATH) sees. "
        "Exit status 2 when no producer is found.",
    )
    cams.add_argument("--cti", type=Path, default=None,
                      help="GenTL producer file (default: the .cti files in GENICAM_GENTL64_PATH)")  # fmt: skip
    cams.add_argument("--no-open", action="store_true",
                      help="do not open the cameras to read their pixel format")  # fmt: skip
    cams.set_defaults(func=_cameras)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
