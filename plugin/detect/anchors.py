"""The anchors `sysmon-blt eval` reports beside our scorers, on the same canonical texts.

Why these three: they are what a practitioner would try first, and the issue quotes their
figures on comparable captures, so a scorer that cannot beat them is not worth its GPU.

* ``TfidfNearestNeighbor``: TF-IDF character 3-5-grams, score = 1 - the highest cosine similarity
  to any baseline text (exact 1-NN). The strongest anchor.
* ``TfidfKMeans``: the same vectors, MiniBatchKMeans on the baseline, score = L2 distance to the
  nearest centroid (what a centroid-only detector sees).
* ``Drain3Rarity``: Drain3 log templates, streaming; score = template rarity at arrival.

All share ``fit(baseline_texts)`` then ``score(test_texts) -> np.ndarray`` (higher = more
anomalous, one score per input text, in order). Texts are deduplicated before the expensive work
(real logs repeat heavily) and scores are mapped back, except for Drain3 where the order of
arrival is part of the definition.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

__all__ = ["TfidfNearestNeighbor", "TfidfKMeans", "Drain3Rarity", "make_vectorizer"]


def make_vectorizer(max_features: int | None = 2**18) -> TfidfVectorizer:
    """The anchors' shared vectorizer: char 3-5-grams, sublinear TF, L2-normalized rows.

    ``lowercase=False``: canonical texts are already lower-cased, and masks like ``<user>`` keep
    their case-sensitive meaning. float32 halves memory and doubles product throughput.
    """
    return TfidfVectorizer(
        analyzer="char", ngram_range=(3, 5), sublinear_tf=True, max_features=max_features,
        lowercase=False, dtype=np.float32,
    )


def _distinct(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct texts in first-seen order, and each input's index into them."""
    index: dict[str, int] = {}
    inverse = np.empty(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        inverse[i] = index.setdefault(t, len(index))
    return list(index), inverse


class TfidfNearestNeighbor:
    """Exact 1-NN cosine distance to the baseline in TF-IDF char 3-5-gram space.

    Why the split product: canonical texts share many n-grams (``image=c:\\windows\\``...), so
    a plain sparse product ``test @ baseline.T`` spends nearly all its time on a few hundred
    very common features, in scipy's single-threaded loops. Features present in at least
    ``dense_min_df`` of the baseline texts (at most ``max_dense``, and at most ``dense_budget``
    floats of baseline) are therefore kept as a dense block and multiplied with BLAS; the rare
    rest stays sparse and is cheap. The two partial products are summed before the row maximum,
    so the result is exact. Work runs in test-row chunks sized to keep one chunk's similarities
    to about ``sims_budget`` floats.
    """

    def __init__(self, max_features: int | None = 2**18, dense_min_df: float = 0.1,
                 max_dense: int = 2048, dense_budget: int = 64 * 2**20,
                 sims_budget: int = 16 * 2**20) -> None:
        self.max_features = max_features
        self.dense_min_df = dense_min_df
        self.max_dense = max_dense
        self.dense_budget = dense_budget
        self.sims_budget = sims_budget
        self.vectorizer: TfidfVectorizer | None = None
        self._perm: np.ndarray | None = None  # feature order: dense columns first
        self._n_dense = 0
        self._base_dense: np.ndarray | None = None  # (n_baseline x n_dense) float32
        self._base_sparse_t = None  # (n_sparse_features x n_baseline) CSR

    def fit(self, baseline_texts: Sequence[str]) -> "TfidfNearestNeighbor":
        """Fit the vectorizer on the distinct baseline texts and keep their vectors."""
        distinct, _ = _distinct(baseline_texts)
        if not distinct:
            raise ValueError("TfidfNearestNeighbor.fit needs at least one baseline text")
        self.vectorizer = make_vectorizer(self.max_features)
        base = self.vectorizer.fit_transform(distinct).tocsc()
        n_base, n_feat = base.shape
        df = np.diff(base.indptr)
        order = np.argsort(-df, kind="stable")
        cap = min(self.max_dense, self.dense_budget // max(n_base, 1), n_feat)
        n_dense = int(np.sum(df[order[:cap]] >= self.dense_min_df * n_base))
        self._perm = order
        self._n_dense = n_dense
        base = base[:, order]
        self._base_dense = np.ascontiguousarray(base[:, :n_dense].toarray(), dtype=np.float32)
        self._base_sparse_t = base[:, n_dense:].T.tocsr()
        return self

    def score(self, test_texts: Sequence[str]) -> np.ndarray:
        """1 - max cosine similarity to any baseline text, per input text (0 = seen verbatim)."""
        if self.vectorizer is None:
            raise RuntimeError("fit() first")
        if len(test_texts) == 0:
            return np.zeros(0, dtype=np.float64)
        distinct, inverse = _distinct(test_texts)
        test = self.vectorizer.transform(distinct).tocsc()[:, self._perm].tocsr()
        n_base = self._base_dense.shape[0]
        chunk_size = int(min(1024, max(16, self.sims_budget // max(n_base, 1))))
        nd = self._n_dense
        best = np.zeros(len(distinct), dtype=np.float64)
        for start in range(0, test.shape[0], chunk_size):
            chunk = test[start:start + chunk_size]
            rare = chunk[:, nd:]
            cols = np.unique(rare.indices)
            if nd:
                sims = chunk[:, :nd].toarray() @ self._base_dense.T  # BLAS: the common n-grams
                if cols.size:
                    part = (rare[:, cols] @ self._base_sparse_t[cols]).tocoo()
                    sims[part.row, part.col] += part.data  # CSR product: no duplicate entries
                best[start:start + chunk.shape[0]] = sims.max(axis=1)
            elif cols.size:
                part = (rare[:, cols] @ self._base_sparse_t[cols]).tocsr()
                best[start:start + chunk.shape[0]] = _row_max(part)
        scores = 1.0 - np.clip(best, 0.0, 1.0)
        return scores[inverse]


def _row_max(m) -> np.ndarray:
    """Row maxima of a CSR matrix with non-negative entries (empty rows -> 0)."""
    out = np.zeros(m.shape[0], dtype=np.float64)
    nonempty = np.diff(m.indptr) > 0
    if m.nnz:
        out[nonempty] = np.maximum.reduceat(m.data, m.indptr[:-1][nonempty])
    return out


class TfidfKMeans:
    """Distance to the nearest MiniBatchKMeans centroid in L2-normalized TF-IDF space.

    Centroids are fitted on the distinct baseline texts (duplicates would only weight the
    centroids towards the chattiest event types). The anchor for "centroid distance alone".
    """

    def __init__(self, k: int = 16, seed: int = 0, max_features: int | None = 2**18) -> None:
        self.k = k
        self.seed = seed
        self.max_features = max_features
        self.vectorizer: TfidfVectorizer | None = None
        self.kmeans = None

    def fit(self, baseline_texts: Sequence[str]) -> "TfidfKMeans":
        """Fit the vectorizer and k centroids (k capped by the number of distinct texts)."""
        from sklearn.cluster import MiniBatchKMeans

        distinct, _ = _distinct(baseline_texts)
        if not distinct:
            raise ValueError("TfidfKMeans.fit needs at least one baseline text")
        self.vectorizer = make_vectorizer(self.max_features)
        base = self.vectorizer.fit_transform(distinct)
        k = max(1, min(self.k, base.shape[0]))
        self.kmeans = MiniBatchKMeans(n_clusters=k, random_state=self.seed, n_init=3,
                                      batch_size=2048).fit(base)
        return self

    def score(self, test_texts: Sequence[str]) -> np.ndarray:
        """L2 distance of each text's TF-IDF vector to its nearest centroid."""
        if self.vectorizer is None or self.kmeans is None:
            raise RuntimeError("fit() first")
        if len(test_texts) == 0:
            return np.zeros(0, dtype=np.float64)
        distinct, inverse = _distinct(test_texts)
        dist = self.kmeans.transform(self.vectorizer.transform(distinct)).min(axis=1)
        return np.asarray(dist, dtype=np.float64)[inverse]


class Drain3Rarity:
    """Streaming Drain3 template rarity.

    Definition: the miner first learns every baseline text. Then each test text, in order, is
    added to the miner (it joins or creates a template cluster, and the miner keeps learning, as a
    deployed Drain3 would); its score is ``-log(size / total)``, where ``size`` is its cluster's
    size right after adding it and ``total`` the number of texts the miner has seen so far,
    itself included. A never-seen template scores ``log(total)``; the most common ones near 0.
    Masking is off: canonical texts are already masked.
    """

    def __init__(self, sim_th: float = 0.4, depth: int = 4, max_children: int = 100) -> None:
        self.sim_th = sim_th
        self.depth = depth
        self.max_children = max_children
        self.miner = None
        self.total = 0

    def _new_miner(self):
        try:
            from drain3 import TemplateMiner
            from drain3.template_miner_config import TemplateMinerConfig
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "Drain3Rarity needs drain3: pip install drain3 (or the project's 'eval' extra)"
            ) from exc
        config = TemplateMinerConfig()  # defaults, never the cwd's drain3.ini
        config.masking_instructions = []
        config.drain_sim_th = self.sim_th
        config.drain_depth = self.depth
        config.drain_max_children = self.max_children
        config.profiling_enabled = False
        config.snapshot_interval_minutes = 0
        return TemplateMiner(persistence_handler=None, config=config)

    def fit(self, baseline_texts: Sequence[str]) -> "Drain3Rarity":
        """A fresh miner that has learnt every baseline text (duplicates count: sizes matter)."""
        self.miner = self._new_miner()
        self.total = 0
        for text in baseline_texts:
            self.miner.add_log_message(text)
            self.total += 1
        return self

    def score(self, test_texts: Sequence[str]) -> np.ndarray:
        """Rarity of each text's template at its arrival; the miner keeps what it sees."""
        if self.miner is None:
            raise RuntimeError("fit() first")
        out = np.empty(len(test_texts), dtype=np.float64)
        for i, text in enumerate(test_texts):
            result = self.miner.add_log_message(text)
            self.total += 1
            out[i] = -math.log(result["cluster_size"] / self.total)
        return out
