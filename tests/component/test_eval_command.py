"""`inspectd eval` end to end in its own process, on the repo's button bundle (moved from the unit
folder: it runs the command line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import REPO


@pytest.fixture(scope="module")
def button_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inspectd.synthetic import write_dataset

    out = tmp_path_factory.mktemp("eval") / "button"
    write_dataset(out, seed=0, n_train_good=1, n_test_good=4, n_test_per_defect=1)
    return out


def test_eval_command_end_to_end_without_torch(button_set: Path, tmp_path: Path) -> None:
    """`inspectd eval` on the repo's button bundle: table on stdout, JSON and Markdown files,
    and torch never imported (the daemon's rule: evaluation runs on ONNX Runtime)."""
    code = (
        "import sys; from inspectd.cli import main; "
        f"rc = main(['eval', '--product', 'button', '--products', {str(REPO / 'products')!r}, "
        f"'--data', {str(button_set)!r}, '--json', {str(tmp_path / 'm.json')!r}, "
        f"'--md', {str(tmp_path / 'm.md')!r}]); "
        "assert 'torch' not in sys.modules, 'eval imported torch'; sys.exit(rc)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "m.json").read_text())
    for key in (
        "product",
        "model_sha256",
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "image_f1_max",
        "image_f1_threshold",
        "image_threshold",
        "recall",
        "good_rejected",
        "per_defect",
        "recall_at_frr",
    ):
        assert key in report, key
    types = sorted(p.name for p in (button_set / "test").iterdir() if p.name != "good")
    assert sorted(report["per_defect"]) == types
    assert set(report["per_defect"][types[0]]) >= {
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "recall_at_frr",
    }
    assert "recall @ 1 % FRR" in p.stdout
    assert report["test_images"] == 4 + len(types) and 0.5 < report["pixel_auroc"] <= 1.0
    assert "| **all** |" in p.stdout and all(f"| {t} |" in p.stdout for t in types)
    assert (tmp_path / "m.md").read_text() in p.stdout


def test_eval_command_errors_exit_2(
    button_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inspectd.cli import main

    assert (
        main(
            [
                "eval",
                "--product",
                "nope",
                "--products",
                str(REPO / "products"),
                "--data",
                str(button_set),
            ]
        )
        == 2
    )
    assert "not a product bundle" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "test" / "good").mkdir(parents=True)
    assert (
        main(
            [
                "eval",
                "--product",
                "button",
                "--products",
                str(REPO / "products"),
                "--data",
                str(empty),
            ]
        )
        == 2
    )
    assert "no test images" in capsys.readouterr().err


# -- recall at a false-reject rate -------------------------------------------------------------
