"""The embedding cache: which (model, model version, canonical-text hash) already has a vector.

Real logs repeat the same canonical text many times (OTRF about 7x), so each distinct text is
embedded once per model version, ever: the cache is seeded from the database, and the vectors
themselves live there (text_vectors), not in memory.
"""

from __future__ import annotations

from plugin.store.duckdb import Store


class EmbeddingCache:
    def __init__(self, store: Store, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self._known = store.vector_hashes(model, version)
        self.hits = 0
        self.misses = 0

    def missing(self, items: dict[str, str]) -> dict[str, str]:
        """From {text_hash: text}, the ones with no vector yet; marks them as coming."""
        out = {h: t for h, t in items.items() if h not in self._known}
        self.hits += len(items) - len(out)
        self.misses += len(out)
        self._known.update(out)
        return out
