"""Hashed byte n-gram ids: shapes, table ranges, no crossing of events, naive reference."""

import torch

from plugin.models.blt.byteseq import make_batch
from plugin.models.blt.hashing import BASES, MIX, MOD, SENTINEL, HashConfig, hashed_ngram_ids


def _flat(texts):
    ids, layout = make_batch(texts, packed=True)
    return layout.flat(ids), layout.pos


def test_shapes_and_table_ranges():
    cfg = HashConfig(ngram_sizes=(3, 4, 5), n_hashes=2, buckets=50)
    ids, pos = _flat([b"event=1 Image=cmd.exe", b"", b"ab"])
    out = hashed_ngram_ids(ids, pos, cfg)
    assert out.shape == (ids.numel(), 6)
    for t in range(6):
        assert ((out[:, t] >= t * 50) & (out[:, t] < (t + 1) * 50)).all()


def test_matches_naive_rolling_hash():
    cfg = HashConfig(ngram_sizes=(3, 4), n_hashes=2, buckets=97)
    ids, pos = _flat([b"hello world", b"xyz"])
    out = hashed_ngram_ids(ids, pos, cfg)
    seq = ids.tolist()
    col = 0
    for h in range(2):
        for n in cfg.ngram_sizes:
            for i in range(len(seq)):
                acc = 0
                for k in range(n):
                    tok = seq[i - k] if pos[i] >= k else SENTINEL
                    acc = (acc + tok * pow(BASES[h], k, MOD)) % MOD
                mul, add = MIX[h]
                expect = (acc * mul + add) % MOD % 97 + col * 97
                assert out[i, col] == expect
            col += 1


def test_ngrams_do_not_cross_events():
    cfg = HashConfig()
    alone_ids, alone_pos = _flat([b"powershell -enc AAAA"])
    ids, pos = _flat([b"some other event text", b"powershell -enc AAAA"])
    n = alone_ids.numel()
    assert torch.equal(hashed_ngram_ids(ids, pos, cfg)[-n:], hashed_ngram_ids(alone_ids, alone_pos, cfg))
