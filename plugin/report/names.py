"""Names the report's parts share: models' display names, the primary's place, eval scorers.

Why a module of its own: the summary, the sentences, the figures and the HTML page all name
models and read stored eval results the same way; keeping that here lets each of them import it
without importing one another.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["KNOWN_MODELS", "display_name", "eval_scorers", "primary_first"]

#: The models a deployment normally runs: the primary first. Any other model with vectors is
#: compared too; these two are named as absent when missing.
KNOWN_MODELS = ("blt", "linformer")
_NAMES = {"blt": "BLT", "linformer": "Linformer"}


def display_name(model: str) -> str:
    """'BLT', 'Linformer', or the stored name for any other model."""
    return _NAMES.get(model, model)


def primary_first(models: Iterable[str]) -> list[str]:
    """The known models in deployment order (the primary first), then any others by name."""
    have = set(models)
    return [m for m in KNOWN_MODELS if m in have] + sorted(have - set(KNOWN_MODELS))


def eval_scorers(results: Any) -> dict[str, dict]:
    """The per-scorer metrics of one stored eval result: `eval --json`'s whole object (with a
    ``scorers`` key) or just its scorer -> metrics mapping."""
    if isinstance(results, dict) and isinstance(results.get("scorers"), dict):
        results = results["scorers"]
    if isinstance(results, dict):
        return {str(k): v for k, v in results.items() if isinstance(v, dict)}
    return {}
