"""Train and evaluate every (data set, model) pair and write the results table.

    python -m inspectd.train.experiments --data ../shared/data --out .work/results \
        --vgg-weights ../shared/weights/vgg19_blocks1-3_torchvision_norm.pth --profile cpu

`--profile paper` uses each model's paper settings (full size, full length: the hybrid is a
GPU run, with `--device cuda`; vivano's 512 px / patch 64 / 200 epochs fits a CPU on the small
sets). `--profile cpu` shortens the runs so a table fits a 2-core CPU: smaller inputs and ViT,
fewer epochs, a subset of the good images. The table says which profile made each row, so
shortened numbers are never read as the papers' setting. `--jobs N` runs N (set, model) runs at
once in their own processes (several small runs share one GPU). Each run writes a full bundle
(products layout) under --out; results.json collects the metrics, and for vivano also the
reconstruction-error score the paper reports and a posterior-collapse check of the latent.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any, cast

import torch
import yaml

from inspectd.train.families import family
from inspectd.train.train_bundle import BuildRequest, build_product, training_settings

# profile -> model -> (constructor overrides, TrainSettings overrides, most good images used)
PROFILES: dict[str, dict[str, tuple[dict[str, Any], dict[str, Any], int | None]]] = {
    # vivano: the paper's 512 px, patch 64, 200 epochs, batch 16, lr 1e-5 (the family's training
    # settings); D 512, depth 6, 8 heads from its ancestor VT-ADL (the paper gives none)
    "paper": {
        "ae": ({}, {}, None),
        "hybrid": ({}, {}, None),
        "vivano": ({"input_size": 512, "patch": 64, "dim": 512, "depth": 6, "heads": 8}, {}, None),
        "patchcore": ({}, {}, None),
    },
    "cpu": {
        "ae": ({"input_size": 128}, {"epochs": 40, "patience": 10, "lr": 1e-3}, 150),
        "hybrid": (
            {"input_size": 128, "dim": 256, "depth": 2},
            {"epochs": 30, "early_stop_start": 0, "patience": 10, "lr": 3e-4},
            100,
        ),
        "vivano": (
            {"input_size": 256, "patch": 32},
            {"epochs": 30, "patience": 10, "lr": 3e-4},
            100,
        ),
        # no training to shorten: the registry's defaults on every good image
        "patchcore": ({}, {}, None),
    },
}


def run(
    data: Path,
    sets: list[str],
    models: list[str],
    out: Path,
    profile: str,
    vgg_weights: Path | None,
    device: str,
    extra: dict[str, Any] | None = None,
    time_budget_s: float | None = None,
    jobs: int = 1,
    settings: dict[str, Any] | None = None,
    max_good: int | None = None,
) -> list[dict[str, Any]]:
    """`extra`: constructor settings on top of the profile's (an option being measured);
    `settings`: TrainSettings values on top of the profile's (e.g. noise="fixed");
    `time_budget_s`: training time per run, for a GPU slot of fixed length; `jobs`: runs at
    once, each in its own process; `max_good`: good training images used instead of the
    profile's subset (does training data or training length limit a set?)."""
    tasks = [
        (
            data,
            name,
            model,
            out,
            profile,
            vgg_weights,
            device,
            extra,
            time_budget_s,
            settings,
            max_good,
        )
        for name in sets
        for model in models
    ]
    rows: list[dict[str, Any]] = []

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        (out / "results.json").write_text(json.dumps(rows, indent=1))

    if jobs <= 1:
        for task in tasks:
            done(run_one(*task))
        return rows
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: CUDA cannot be re-initialised in a forked child
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in as_completed([pool.submit(run_one, *t) for t in tasks]):
            done(future.result())
    order = {(t[1], t[2]): i for i, t in enumerate(tasks)}
    rows.sort(key=lambda r: order[(r["set"], r["model"])])
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    return rows


def run_one(
    data: Path,
    name: str,
    model: str,
    out: Path,
    profile: str,
    vgg_weights: Path | None,
    device: str,
    extra: dict[str, Any] | None,
    time_budget_s: float | None,
    settings: dict[str, Any] | None = None,
    max_good: int | None = None,
) -> dict[str, Any]:
    """Train, export, evaluate one (set, model) and return its results row."""
    params, overrides, max_train = PROFILES[profile][model]
    max_train = max_good or max_train
    params = {**params, **(extra or {})}
    train_settings = training_settings(
        family(model),
        name,
        device=device,
        time_budget_s=time_budget_s,
        **{**overrides, **(settings or {})},
    )
    t0 = time.monotonic()
    bundle = build_product(
        BuildRequest(
            product=f"{name}-{model}",
            data=data / name,
            out=out / f"{name}-{model}",
            model=model,
            params=params,
            settings=train_settings,
            vgg_weights=vgg_weights,
            max_train=max_train,
        )
    )
    manifest = yaml.safe_load((bundle / "manifest.yaml").read_text())
    t = manifest["training"]
    row = {
        "set": name,
        "model": model,
        "profile": profile,
        "device": device,
        "params": manifest["model"]["params"],
        "images": t["images"],
        # a fitted family (patchcore) has no epochs; its fit facts instead
        **{k: t[k] for k in ("epochs_run", "stopped", "best_epoch", "fit") if k in t},
        "train_seconds": t["train_seconds"],
        "total_seconds": round(time.monotonic() - t0, 1),
        "threads": torch.get_num_threads(),
        "settings": t["settings"],
        "metrics": manifest["metrics"],
    }
    if model == "vivano":
        row["reconstruction_score"], row["latent"] = vivano_extras(bundle, data / name, device)
    return row


def vivano_extras(
    bundle_dir: Path, data: Path, device: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """The reconstruction-error score the ViV-Ano paper also reports (map = per-pixel squared
    error of the decoder's image, score = its mean over the image, metrics as for the NLL map),
    and latent_diagnostics on the test images' good parts (posterior collapse)."""
    import numpy as np

    from inspectd.bundle import load_bundle
    from inspectd.models import load_graph
    from inspectd.models.vivano import ViVAno
    from inspectd.preprocess import load_inputs
    from inspectd.train.datasets.mvtec import MVTecSet
    from inspectd.train.evaluate import compute_metrics, test_masks

    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    model = cast(ViVAno, load_graph(bundle).model.to(device))
    samples = MVTecSet(data).test()
    maps, latents = [], []
    with torch.no_grad():
        for i in range(0, len(samples), 16):
            batch = samples[i : i + 16]
            imgs = load_inputs([s.path for s in batch], m.preprocess)
            x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255.0).to(device)
            maps.append(((model.reconstruct(x) - x) ** 2).mean(1).cpu().numpy())
            good = [j for j, s in enumerate(batch) if not s.is_anomalous]
            if good:
                latents.append(model.latent_diagnostics(x[good]))
    amaps = np.concatenate(maps)
    masks, has_mask = test_masks(samples, m.preprocess, amaps.shape[1:])
    scores = amaps.reshape(len(amaps), -1).mean(1)
    metrics = compute_metrics(
        [s.defect for s in samples], scores, amaps, masks, float("inf"), has_mask
    )
    keep = ("image_auroc", "pixel_auroc", "aupro", "recall_at_frr")
    latent = (
        {k: round(float(np.mean([d[k] for d in latents])), 5) for k in latents[0]}
        if latents
        else {}
    )
    return {k: metrics[k] for k in keep}, latent


def metrics_with_test_noise(
    bundle_dir: Path, data: Path, sigma: float, seed: int = 0
) -> dict[str, Any]:
    """Image and pixel AUROC of a trained bundle when the model reconstructs x + N(0, sigma^2)
    (one draw, fixed seed) and the head compares against the clean x: input noise at test time."""
    import numpy as np

    from inspectd.accuracy import auroc
    from inspectd.bundle import load_bundle
    from inspectd.models import load_graph
    from inspectd.preprocess import load_inputs
    from inspectd.train.datasets.mvtec import MVTecSet
    from inspectd.train.evaluate import test_masks

    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    graph = load_graph(bundle)
    samples, gen = MVTecSet(data).test(), torch.Generator().manual_seed(seed)
    scores, maps = [], []
    with torch.no_grad():
        for i in range(0, len(samples), 16):
            imgs = load_inputs([s.path for s in samples[i : i + 16]], m.preprocess)
            x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
            noisy = x + torch.randn(x.shape, generator=gen) * sigma
            amap, score = graph.head(x, graph.model(noisy))
            scores.append(score.numpy())
            maps.append(amap.numpy())
    amaps = np.concatenate(maps)
    masks, _ = test_masks(samples, m.preprocess, amaps.shape[1:])
    labels = np.array([s.is_anomalous for s in samples])
    image_auroc = auroc(labels, np.concatenate(scores))
    return {
        "sigma": sigma,
        "seed": seed,
        "image_auroc": round(image_auroc, 4),
        "pixel_auroc": round(auroc(masks, amaps), 4),
    }


def _f(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _recall(metrics: dict[str, Any], rate: str = "0.01") -> float | None:
    return (metrics.get("recall_at_frr", {}).get(rate) or {}).get("recall")


def _cut(row: dict[str, Any]) -> str:
    return " (time budget)" if row.get("stopped") == "time budget" else ""


def table(rows: list[dict[str, Any]]) -> str:
    """Per set and model: image AUROC / pixel AUROC / AUPRO (in %), then per defect type."""
    lines = [
        "| set | model | profile | recall @ 1 % FRR | image AUROC | pixel AUROC | AUPRO "
        "| epochs | images | train time |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["metrics"]
        lines.append(
            f"| {r['set']} | {r['model']} | {r['profile']} | {_f(_recall(m))} "
            f"| {_f(m['image_auroc'])} "
            f"| {_f(m['pixel_auroc'])} | {_f(m['aupro'])} "
            f"| {r.get('epochs_run', 'fit')}{_cut(r)} | "
            f"{r['images']} "
            f"| {r['train_seconds'] / 60:.1f} min |"
        )
    lines += [
        "",
        "Per defect type (recall @ 1 % FRR / image AUROC / pixel AUROC / AUPRO, %):",
        "",
        "| set | defect | " + " | ".join(sorted({r["model"] for r in rows})) + " |",
    ]
    models = sorted({r["model"] for r in rows})
    lines.append("|---|---|" + "---|" * len(models))
    by = {(r["set"], r["model"]): r["metrics"]["per_defect"] for r in rows}
    for s in dict.fromkeys(r["set"] for r in rows):
        defects = sorted({d for (s2, _), per in by.items() if s2 == s for d in per})
        for d in defects:
            cells = []
            for mo in models:
                m = by.get((s, mo), {}).get(d)
                cells.append(
                    ""
                    if m is None
                    else f"{_f(m.get('recall_at_frr', {}).get('0.01'))} / "
                    f"{_f(m['image_auroc'])} / {_f(m['pixel_auroc'])} / {_f(m['aupro'])}"
                )
            lines.append(f"| {s} | {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, required=True, help="folder of MVTec-layout sets")
    p.add_argument("--sets", nargs="+", default=None, help="default: every set under --data")
    p.add_argument("--models", nargs="+", default=["ae", "hybrid", "vivano"])
    p.add_argument("--out", type=Path, default=Path(".work/results"))
    p.add_argument("--profile", choices=list(PROFILES), default="cpu")
    p.add_argument("--vgg-weights", type=Path, default=None)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="training time per run; a run stopped by it says so (stopped: time budget)",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model setting on top of the profile's, to measure an open point",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    p.add_argument(
        "--max-good",
        type=int,
        default=None,
        metavar="N",
        help="good training images (train + validation) instead of the profile's subset",
    )
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="training setting on top of the profile's (TrainSettings, e.g. noise=fixed)",
    )
    p.add_argument(
        "--test-noise",
        type=float,
        default=None,
        metavar="SIGMA",
        help="no training: metrics of the bundles under --out, test-time noise SIGMA",
    )
    a = p.parse_args()
    sets = a.sets or sorted(d.name for d in a.data.iterdir() if (d / "train" / "good").is_dir())
    if a.test_noise is not None:
        for s in sets:
            for model in a.models:
                print(
                    s,
                    model,
                    metrics_with_test_noise(a.out / f"{s}-{model}", a.data / s, a.test_noise),
                )
        return
    extra = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in a.param)}
    budget = a.max_minutes * 60.0 if a.max_minutes else None
    settings = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in a.setting)}
    rows = run(
        a.data,
        sets,
        a.models,
        a.out,
        a.profile,
        a.vgg_weights,
        a.device,
        extra,
        budget,
        a.jobs,
        settings,
        a.max_good,
    )
    text = table(rows)
    (a.out / "results.md").write_text(
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} "
        f"threads\n\n{text}"
    )
    print(text)


if __name__ == "__main__":
    main()
