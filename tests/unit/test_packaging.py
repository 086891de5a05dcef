"""pyproject.toml lists every package: a folder of modules missing from ``packages`` works in the
editable install of a checkout and is absent from a wheel (inspectd.versions was, once)."""

from __future__ import annotations

import tomllib

from support.paths import REPO

ROOTS = {"inspectd": "inspectd", "calibrate": "inspectd.calibrate", "train": "inspectd.train"}
ROOTS["deploy"] = "inspectd.deploy"


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for folder, name in ROOTS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *parts)))
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found == set(), "listed but not a package folder"
