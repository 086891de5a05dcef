"""The model family names, importable without pydantic or torch (the command line's choices).

`inspectd.train.families.FAMILIES` builds each of them; the bundle manifest allows only these.
"""

from __future__ import annotations

from typing import Literal, get_args

FamilyName = Literal["ae", "hybrid", "vivano", "patchcore"]
FAMILY_NAMES: tuple[str, ...] = get_args(FamilyName)
