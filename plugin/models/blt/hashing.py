"""Hashed byte n-gram ids (BLT paper, section 3.2.1), vectorized over a flat token stream.

For every token ``i`` and every ``n`` in ``ngram_sizes`` the n-gram is the ``n`` tokens ending
at ``i`` inside the same event (positions before the event's BOS read as an out-of-event
sentinel, so n-grams never straddle two events). Each n-gram is hashed by ``n_hashes`` rolling
polynomial hashes ``sum_k tok[i-k] * base^k  (mod 2^31 - 1)`` with different bases, then mixed and
reduced to ``buckets``. Each (n, hash function) pair owns its own table of ``buckets`` rows inside
one embedding bag, so the returned ids are already offset by ``table * buckets``.

The loop runs over ``k < max(ngram_sizes)`` (a handful of tensor ops), never over bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MOD = 2**31 - 1  # Mersenne prime; products stay far below 2**63
BASES = (257, 65_537, 1_000_003, 998_244_353, 7_919, 104_729, 1_299_709, 15_485_863)
MIX = ((48_271, 11), (69_621, 7), (16_807, 3), (39_373, 5), (742_938_285, 13), (950_706_376, 17),
       (1_226_874_159, 19), (62_089_911, 23))
SENTINEL = 258  # outside the event (byte ids are 0..257)


@dataclass
class HashConfig:
    ngram_sizes: tuple[int, ...] = (3, 4, 5, 6)
    n_hashes: int = 2
    buckets: int = 1024

    def __post_init__(self):
        self.ngram_sizes = tuple(int(n) for n in self.ngram_sizes)
        if not self.ngram_sizes or min(self.ngram_sizes) < 2:
            raise ValueError("ngram_sizes must be non-empty and >= 2")
        if not 1 <= self.n_hashes <= len(BASES):
            raise ValueError(f"n_hashes must be in 1..{len(BASES)}")

    @property
    def n_tables(self) -> int:
        return len(self.ngram_sizes) * self.n_hashes


def hashed_ngram_ids(ids: torch.Tensor, pos: torch.Tensor, cfg: HashConfig) -> torch.Tensor:
    """Flat ``(N,)`` token ids and positions -> ``(N, n_tables)`` embedding-bag row ids."""
    max_n = max(cfg.ngram_sizes)
    ids = ids.long()
    # shifted[k][i] = ids[i - k] inside the event, SENTINEL before its start
    shifted = [ids]
    for k in range(1, max_n):
        prev = torch.cat([ids.new_full((min(k, ids.numel()),), SENTINEL), ids[:-k]])
        shifted.append(torch.where(pos >= k, prev, torch.full_like(ids, SENTINEL)))

    cols = []
    for h in range(cfg.n_hashes):
        base, (mul, add) = BASES[h], MIX[h]
        acc = shifted[0].clone()
        power = 1
        by_n = {1: acc}
        for k in range(1, max_n):
            power = power * base % MOD
            acc = (acc + shifted[k] * power) % MOD
            by_n[k + 1] = acc
        for n in cfg.ngram_sizes:
            cols.append((by_n[n] * mul + add) % MOD % cfg.buckets)
    out = torch.stack(cols, dim=1)
    # table t = (hash h, size n) owns rows [t * buckets, (t + 1) * buckets)
    offsets = torch.arange(cfg.n_tables, device=ids.device) * cfg.buckets
    return out + offsets
