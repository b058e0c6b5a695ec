"""The embed stage: canonical texts of a batch -> vectors of the texts not seen before."""

from __future__ import annotations

import time
from typing import Protocol, Sequence

import numpy as np
import structlog

from plugin.memory import release_freed_heap
from plugin.models.blt.surprisal import window_max
from plugin.pipeline.cache import EmbeddingCache
from plugin.store import VectorRows

log = structlog.get_logger(__name__)


class Embedder(Protocol):
    name: str
    version: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def sampled(text_hash: str, rate: float) -> bool:
    """Whether a text is in a model's sample. Decided by the text's hash, not by chance, so a
    text is always in or always out: its twins get the same treatment in every run and batch."""
    if rate >= 1.0:
        return True
    return int(text_hash[:8], 16) < rate * 0x1_0000_0000


class EmbedStage:
    """Adds VectorRows for a batch's new distinct texts; the sink writes them with the events.

    Two halves, so the flow can embed the next batch while this one is scored and written:
    `prepare` (the model call: no store, no stage state but the cache's set of known hashes) may
    run on a thread of its own, ahead, in batch order; the call itself (on the stage thread)
    files the vectors in the cache and hands every distinct text's vector to the stages after it.
    Each half runs on one thread only, and a text the next batch finds "known" was remembered by
    an earlier batch's call on the stage thread before this batch's call runs.

    ``sample_rate`` < 1 embeds only the texts `sampled` picks (the shadow model's knob: its
    cost scales with the rate); the primary always runs at 1.0.
    """

    def __init__(self, embedder: Embedder, cache: EmbeddingCache, sample_rate: float = 1.0) -> None:
        self.embedder = embedder
        self.cache = cache
        self.sample_rate = sample_rate
        self.name = f"embed:{embedder.name}"
        self.texts_embedded = 0
        self.events = 0
        self.seconds = 0.0
        # the model whose per-thread `last_surprisal` scoring reads (behind a worker pool: the
        # local copy the pool's answers land on)
        self._surprisal_of = getattr(embedder, "local", embedder)

    def prepare(self, batch) -> None:
        """The model's half: embed the batch's texts that have no vector yet."""
        distinct = {e.text_hash: e.normalized for e in batch.events
                    if sampled(e.text_hash, self.sample_rate)}
        self.events += sum(1 for e in batch.events if e.text_hash in distinct)
        todo = self.cache.missing(distinct)
        vecs = None
        surprisal = None
        if todo:
            t0 = time.perf_counter()
            vecs = self.embedder.embed(list(todo.values()))
            self.seconds += time.perf_counter() - t0
            self.texts_embedded += len(todo)
            surprisal = getattr(self._surprisal_of, "last_surprisal", None)
            release_freed_heap()
        batch.prepared[self.name] = (distinct, todo, vecs, surprisal)

    def __call__(self, batch) -> None:
        if self.name not in batch.prepared:  # nobody ran the model's half ahead: run it now
            self.prepare(batch)
        distinct, todo, vecs, surprisal = batch.prepared.pop(self.name)
        if surprisal is not None:  # the embedding pass's surprisal, for scoring on this thread
            self._surprisal_of.last_surprisal = surprisal
        fresh = {}
        if todo:
            # the pass's summary for scoring, stored with the vector: a text read back later is
            # scored without running the entropy model again
            bits = ({h: window_max(surprisal[t]) if t in surprisal else None
                     for h, t in todo.items()} if surprisal is not None else None)
            self.cache.remember(list(todo), vecs, bits)
            fresh = dict(zip(todo, vecs))
            batch.vectors.append(VectorRows(self.embedder.name, self.embedder.version, list(todo),
                                            vecs, list(bits.values()) if bits else None))
        # every distinct text of the batch, for the stages after this one (scoring); the new
        # ones from this pass (a batch with more new texts than the cache holds pushes some out
        # before they are stored)
        batch.text_vectors[self.embedder.name] = self.cache.vectors(list(distinct), fresh)
        if self.cache.with_bits:
            self._surprisal_of.last_window_bits = {
                distinct[h]: b for h, b in self.cache.window_bits(distinct).items()}

    def stats(self) -> dict:
        rate = self.texts_embedded / self.seconds if self.seconds else 0.0
        return {"name": self.name, "model": self.embedder.name,
                "model_version": self.embedder.version, "sample_rate": self.sample_rate,
                "events": self.events, "texts_embedded": self.texts_embedded, "cache_hits": self.cache.hits,
                "embed_seconds": round(self.seconds, 2), "texts_per_second": round(rate, 1)}
