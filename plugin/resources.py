"""Where the shipped data files live, in a source tree and in an installed wheel alike."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def schemas_dir() -> Path:
    """The shipped `schemas/` folder: next to the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "schemas"
    if (checkout / "duckdb.sql").is_file():
        return checkout
    return Path(str(resources.files("plugin") / "schemas"))


def default_model_dir() -> Path:
    return Path(__file__).resolve().parent / "assets" / "default-model"
