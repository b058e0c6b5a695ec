"""The embedding cache: which (model, model version, canonical-text hash) already has a vector.

Real logs repeat the same canonical text many times (OTRF about 7x), so each distinct text is
embedded once per model version, ever: the cache is seeded from the database (text_vectors),
and keeps this run's vectors in memory so scoring can read any text's vector without a query.
Vectors of texts embedded by earlier runs are read back from the database when a batch needs them.
"""

from __future__ import annotations

import numpy as np

from plugin.store import Store

# about 100 MB at d=128; beyond it, older vectors are re-read from the database (a consumer runs
# for days: the cache stays well inside its memory budget)
MAX_IN_MEMORY = 200_000


class EmbeddingCache:
    def __init__(self, store: Store, model: str, version: str) -> None:
        self.store = store
        self.model = model
        self.version = version
        self._known = store.vector_hashes(model, version)
        self._vectors: dict[str, np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    def missing(self, items: dict[str, str]) -> dict[str, str]:
        """From {text_hash: text}, the ones with no vector yet; marks them as coming."""
        out = {h: t for h, t in items.items() if h not in self._known}
        self.hits += len(items) - len(out)
        self.misses += len(out)
        self._known.update(out)
        return out

    def remember(self, hashes: list[str], vectors: np.ndarray) -> None:
        if len(self._vectors) + len(hashes) > MAX_IN_MEMORY:
            self._vectors.clear()
        for h, v in zip(hashes, vectors):
            self._vectors[h] = v

    def vectors(self, hashes: list[str]) -> dict[str, np.ndarray]:
        """Vectors for known hashes: from memory, else from the database."""
        out = {h: self._vectors[h] for h in hashes if h in self._vectors}
        rest = [h for h in hashes if h not in out]
        if rest:
            got = self.store.read_vectors(self.model, self.version, rest)
            self.remember(list(got), np.stack(list(got.values())) if got else np.zeros((0, 1)))
            out.update(got)
        return out
