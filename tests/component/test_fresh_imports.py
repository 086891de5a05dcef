"""What a module pulls in, and a module run as a script, each in a fresh interpreter (moved
from the unit folder: they start a process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.paths import REPO


def test_module_runs_as_script_and_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys, runpy; "
        "sys.argv = ['button', '--out', sys.argv[1], '--train-good', '1', '--test-good', '0', "
        "'--per-defect', '0', '--size', '64']; "
        "import inspectd.synthetic, inspectd.train.datasets.mvtec; "
        "assert 'torch' not in sys.modules, 'dataset modules must not import torch'; "
        "runpy.run_module('inspectd.synthetic', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s/train/good/000.png").is_file()


def test_config_package_import_is_light():
    code = (
        "import sys, inspectd.config\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'cv2') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_no_transport_in_the_contract() -> None:
    """The builders import no MQTT client: the outbox and delivery use them without paho."""
    code = (
        "import sys, inspectd.contract.messages\n"
        "print(any(m.startswith('paho') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
