"""Byte Latent Transformer, in data-flow order: entropy -> patching -> encoder -> latent.

The model's names load on first use: the package also holds torch-free helpers
(`plugin.models.blt.surprisal`) that a process without the models imports, and importing torch
there costs ~180 MB resident for nothing.
"""

from typing import Any

__all__ = ["BLT", "BLTConfig", "OBJECTIVES", "DEFAULT_OBJECTIVE", "PRESETS"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from plugin.models.blt import model

        return getattr(model, name)
    raise AttributeError(name)
