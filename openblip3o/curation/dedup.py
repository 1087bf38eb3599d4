"""Prompt normalisation and de-duplication: exact (after normalising) and near-duplicate (character n-gram MinHash).

Why characters, not a token set: compositional prompts differ in word *order* ("a red cube and a blue ball" vs "a blue
cube and a red ball" have the same token set but mean different images), and character n-grams spanning word
boundaries keep that difference. MinHash with LSH banding finds candidate pairs without comparing all pairs; every
candidate is then checked with the exact Jaccard similarity, so the threshold is exact, not approximate.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

NUM_PERM = 64  # MinHash permutations; with BANDS x ROWS = 64 the LSH catches pairs well below a 0.9 threshold
BANDS = 16
ROWS = NUM_PERM // BANDS
MERSENNE = (1 << 31) - 1  # the prime of the hash family (a * x + b) mod p; a, x < 2**31 keeps a * x in uint64
SPACE = re.compile(r"\s+")
TRAILING = ".,;: "


def normalise(text: str) -> str:
    """One canonical form: Unicode NFKC, straight quotes, single spaces, no trailing punctuation, lower case first
    letter kept as written (prompts are case-sensitive for quoted text, so only the comparison key is lower-cased)."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    return SPACE.sub(" ", text).strip().rstrip(TRAILING).strip()


def key(text: str) -> str:
    """The exact-duplicate key: the normalised text, case-folded."""
    return normalise(text).casefold()


def shingles(text: str, n: int) -> set[str]:
    text = f" {key(text)} "  # padded so the first and last words make their own n-grams
    if len(text) <= n:
        return {text}
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _hash64(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")


class _Permutations:
    """NUM_PERM fixed (a, b) pairs: signatures are comparable across runs and processes (no `hash()` salting)."""

    def __init__(self, seed: int = 1):
        self.a = np.array([_hash64(f"a{seed}:{i}") % (MERSENNE - 1) + 1 for i in range(NUM_PERM)], dtype=np.uint64)
        self.b = np.array([_hash64(f"b{seed}:{i}") % MERSENNE for i in range(NUM_PERM)], dtype=np.uint64)

    def signature(self, grams: set[str]) -> tuple[int, ...]:
        values = np.array([_hash64(g) % MERSENNE for g in grams], dtype=np.uint64)
        hashed = (self.a[:, None] * values[None, :] + self.b[:, None]) % MERSENNE  # vectorised: 60k prompts in seconds
        return tuple(hashed.min(axis=1).tolist())


class Deduplicator:
    """Accepts texts one by one and says whether each is new; the first of any duplicate group wins.

    `add(text)` returns None when accepted, else the reason ("exact" or "near") it was refused.
    """

    def __init__(self, near_threshold: float | None = 0.9, ngram: int = 5):
        self.near_threshold, self.ngram = near_threshold, ngram
        self.keys: set[str] = set()
        self.grams: list[set[str]] = []
        self.buckets: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        self.permutations = _Permutations()
        self.refused = {"exact": 0, "near": 0}

    def add(self, text: str) -> str | None:
        k = key(text)
        if k in self.keys:
            self.refused["exact"] += 1
            return "exact"
        if self.near_threshold is not None:
            grams = shingles(text, self.ngram)
            signature = self.permutations.signature(grams)
            bands = [(band, signature[band * ROWS:(band + 1) * ROWS]) for band in range(BANDS)]
            candidates = {i for band in bands for i in self.buckets.get(band, ())}
            if any(jaccard(grams, self.grams[i]) >= self.near_threshold for i in candidates):
                self.refused["near"] += 1
                return "near"
            for band in bands:
                self.buckets.setdefault(band, []).append(len(self.grams))
            self.grams.append(grams)
        self.keys.add(k)
        return None


def deduplicate(texts, near_threshold: float | None = 0.9, ngram: int = 5) -> list[str]:
    """The texts with duplicates removed, first occurrences kept, order preserved."""
    dedup = Deduplicator(near_threshold, ngram)
    return [text for text in texts if dedup.add(text) is None]
