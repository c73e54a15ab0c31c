"""The service's one version: `pyproject.toml`'s, read once (shown in the spec and /api/health)."""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

with open(PYPROJECT, "rb") as _f:
    VERSION: str = tomllib.load(_f)["project"]["version"]
