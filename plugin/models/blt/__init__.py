"""Byte Latent Transformer, in data-flow order: entropy -> patching -> encoder -> latent."""

from plugin.models.blt.model import BLT, BLTConfig, OBJECTIVES, DEFAULT_OBJECTIVE, PRESETS

__all__ = ["BLT", "BLTConfig", "OBJECTIVES", "DEFAULT_OBJECTIVE", "PRESETS"]
