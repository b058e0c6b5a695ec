"""The embedding cache: which (model, model version, canonical-text hash) already has a vector.

Real logs repeat the same canonical text many times (OTRF about 7x), so each distinct text is
embedded once per model version, ever: the cache is seeded from the database (text_vectors),
and keeps the vectors of the texts used most recently in memory, so scoring reads a routine
text's vector without a query. Vectors of other texts (embedded by earlier runs, or used long
ago) are read back from the database when a batch needs them.
"""

from __future__ import annotations

import numpy as np

from plugin.memory import LRU
from plugin.store import Store

#: vectors kept in memory, least recently used out: ~0.7 KB each at d=128 (an import's default;
#: a consumer passes its smaller ``stream_cache_texts``)
MAX_IN_MEMORY = 200_000


class EmbeddingCache:
    def __init__(self, store: Store, model: str, version: str,
                 max_in_memory: int = MAX_IN_MEMORY, with_bits: bool = False) -> None:
        self.store = store
        self.model = model
        self.version = version
        #: whether the model stores a window surprisal with its vectors (the BLT), read back
        #: with them
        self.with_bits = with_bits
        self._known = store.vector_hashes(model, version)
        self._vectors: LRU[str, np.ndarray] = LRU(max_in_memory)
        self._bits: LRU[str, float] = LRU(max_in_memory)
        self.hits = 0
        self.misses = 0

    def missing(self, items: dict[str, str]) -> dict[str, str]:
        """From {text_hash: text}, the ones with no vector yet; marks them as coming."""
        out = {h: t for h, t in items.items() if h not in self._known}
        self.hits += len(items) - len(out)
        self.misses += len(out)
        self._known.update(out)
        return out

    def remember(self, hashes: list[str], vectors: np.ndarray,
                 bits: dict[str, float] | None = None) -> None:
        for h, v in zip(hashes, vectors):
            # a copy: a row would keep its whole batch's array alive after the others are out
            self._vectors[h] = v.copy()
        for h, b in (bits or {}).items():
            if b is not None:
                self._bits[h] = b

    def vectors(self, hashes: list[str],
                fresh: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Vectors for known hashes: ``fresh`` (this batch's, not stored yet), else from memory,
        else from the database."""
        fresh = fresh or {}
        out = {h: fresh[h] if h in fresh else self._vectors[h] for h in hashes
               if h in fresh or h in self._vectors}
        rest = [h for h in hashes if h not in out]
        if rest:
            got = self.store.read_vectors(self.model, self.version, rest)
            bits = (self.store.read_window_bits(self.model, self.version, rest)
                    if self.with_bits else None)
            self.remember(list(got), np.stack(list(got.values())) if got else np.zeros((0, 1)),
                          bits)
            out.update(got)
        return out

    def window_bits(self, hashes) -> dict[str, float]:
        """The window surprisal of the known ``hashes`` that have one in memory (`vectors` read
        a batch's from the database with their vectors)."""
        return {h: self._bits[h] for h in hashes if h in self._bits}
