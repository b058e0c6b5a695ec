"""EmbeddingCache on a real store: seeded from the database, marks what is coming, counts hits and
misses, and hands back every known text's vector (memory first, else the database), whatever its
memory bound."""

from __future__ import annotations

import numpy as np
import pytest

from plugin.pipeline.cache import EmbeddingCache
from plugin.store import VectorRows, open_store

MODEL, VERSION, OTHER = "blt", "v1", "v0"
DIM = 4


def h(i: int) -> str:
    return f"{i:032x}"


def vec(i: int, version: str = VERSION) -> np.ndarray:
    """A distinct, exactly representable float32 vector per (text, version)."""
    base = 1.0 if version == VERSION else -1.0
    return np.array([base * i, i + 0.5, i + 0.25, base], dtype=np.float32)


def write(store, ids, version: str = VERSION) -> None:
    store.write_batch({}, [], [VectorRows(MODEL, version, [h(i) for i in ids],
                                          np.stack([vec(i, version) for i in ids]))])


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "cache.duckdb")
    s.register_model(MODEL, VERSION, DIM, None)
    s.register_model(MODEL, OTHER, DIM, None)
    write(s, [1, 2])
    write(s, [3], version=OTHER)  # another version's vector is no vector for this one
    yield s
    s.close()


def count_reads(monkeypatch, store) -> list[list[str]]:
    calls: list[list[str]] = []
    real = store.read_vectors

    def spy(model, version, hashes):
        calls.append(list(hashes))
        return real(model, version, hashes)

    monkeypatch.setattr(store, "read_vectors", spy)
    return calls


def test_seeded_from_the_database_and_marks_what_is_coming(store):
    c = EmbeddingCache(store, MODEL, VERSION)
    first = c.missing({h(1): "one", h(3): "three", h(4): "four"})
    assert first == {h(3): "three", h(4): "four"}  # 1 is stored; 3 only for another version
    assert (c.hits, c.misses) == (1, 2)
    # what was just handed out is coming: never handed out twice
    second = c.missing({h(2): "two", h(3): "three", h(4): "four", h(5): "five"})
    assert second == {h(5): "five"}
    assert (c.hits, c.misses) == (4, 3)
    assert c.missing({}) == {} and (c.hits, c.misses) == (4, 3)


def test_a_fresh_cache_sees_what_an_earlier_run_wrote(store):
    c = EmbeddingCache(store, MODEL, VERSION)
    todo = c.missing({h(7): "seven"})
    write(store, [int(k, 16) for k in todo])
    again = EmbeddingCache(store, MODEL, VERSION)
    assert again.missing({h(7): "seven"}) == {} and (again.hits, again.misses) == (1, 0)
    assert EmbeddingCache(store, MODEL, OTHER).missing({h(7): "seven"}) == {h(7): "seven"}


def test_vectors_come_from_the_database_then_from_memory(store, monkeypatch):
    c = EmbeddingCache(store, MODEL, VERSION)
    reads = count_reads(monkeypatch, store)
    got = c.vectors([h(1), h(2), h(3)])
    assert set(got) == {h(1), h(2)}  # 3 has no vector for this version
    for i in (1, 2):
        np.testing.assert_array_equal(got[h(i)], vec(i))
    assert len(reads) == 1
    again = c.vectors([h(2), h(1)])  # now in memory: no second query
    for i in (1, 2):
        np.testing.assert_array_equal(again[h(i)], vec(i))
    assert len(reads) == 1


def test_remembered_vectors_need_no_query(store, monkeypatch):
    c = EmbeddingCache(store, MODEL, VERSION)
    todo = c.missing({h(8): "eight", h(9): "nine"})
    c.remember(list(todo), np.stack([vec(8), vec(9)]))  # embedded this run, not yet written
    reads = count_reads(monkeypatch, store)
    got = c.vectors([h(9), h(8)])
    np.testing.assert_array_equal(got[h(8)], vec(8))
    np.testing.assert_array_equal(got[h(9)], vec(9))
    assert reads == []


def test_the_memory_bound_keeps_vectors_correct(store, monkeypatch):
    c = EmbeddingCache(store, MODEL, VERSION, max_in_memory=3)
    ids = list(range(10, 20))
    for start in range(0, len(ids), 2):  # as the embed stage does: write, then remember
        batch = ids[start:start + 2]
        assert c.missing({h(i): str(i) for i in batch}) == {h(i): str(i) for i in batch}
        write(store, batch)
        c.remember([h(i) for i in batch], np.stack([vec(i) for i in batch]))
        assert len(c._vectors) <= 3
    want = [h(i) for i in [1, 2] + ids]
    for _ in range(2):  # twice: the second pass finds a different mix in memory
        got = c.vectors(want)
        assert set(got) == set(want)
        for i in [1, 2] + ids:
            np.testing.assert_array_equal(got[h(i)], vec(i))


def test_routine_texts_stay_in_memory_and_texts_seen_once_go_first(store, monkeypatch):
    """Least recently used out: a text used batch after batch keeps its vector in memory however
    many new texts pass (the clear-when-full before it sent every routine text back to the
    database at once)."""
    c = EmbeddingCache(store, MODEL, VERSION, max_in_memory=3)
    reads = count_reads(monkeypatch, store)
    c.vectors([h(1)])  # the routine text: read once
    for i in range(30, 40):  # ten texts seen once each, the routine one between them
        c.missing({h(i): str(i)})
        write(store, [i])
        c.remember([h(i)], vec(i)[None, :])
        np.testing.assert_array_equal(c.vectors([h(1)])[h(1)], vec(1))
    assert reads == [[h(1)]]
    assert len(c._vectors) == 3 and h(1) in c._vectors and h(30) not in c._vectors


def test_a_batch_with_more_new_texts_than_the_bound_hands_every_vector_on(store, monkeypatch):
    """The batch's own new vectors are not stored yet when scoring asks for them: they come from
    the pass itself, not from the memory they no longer fit in."""
    c = EmbeddingCache(store, MODEL, VERSION, max_in_memory=2)
    ids = list(range(50, 55))
    new = c.missing({h(i): str(i) for i in ids})
    vecs = np.stack([vec(i) for i in ids])
    c.remember(list(new), vecs)
    reads = count_reads(monkeypatch, store)
    got = c.vectors([h(i) for i in ids], dict(zip(new, vecs)))
    assert reads == [] and set(got) == {h(i) for i in ids}
    for i in ids:
        np.testing.assert_array_equal(got[h(i)], vec(i))
