"""The shared test helpers that decide which cases run: the all-pairs covering."""
from __future__ import annotations

import itertools

import pytest

from helpers import all_pairs

FACTORS = [
    {"a": [1, 2]},
    {"a": [1, 2, 3], "b": ["x", "y"]},
    {"net": list("ABCD"), "loss": list(range(8)), "opt": list("abcdefgh"), "dtype": ["f32", "f64"]},
    {"p": [0, 1], "q": [0, 1], "r": [0, 1], "s": [0, 1], "t": [0, 1]},
    {"x": [1], "y": [1, 2, 3], "z": [True, False]},
]


@pytest.mark.parametrize("factors", FACTORS, ids=lambda f: "x".join(str(len(v)) for v in f.values()))
def test_every_pair_of_values_appears(factors):
    rows = all_pairs(factors)
    assert all(set(row) == set(factors) and all(row[n] in factors[n] for n in factors) for row in rows)
    for f, g in itertools.combinations(factors, 2):
        seen = {(row[f], row[g]) for row in rows}
        assert seen == set(itertools.product(factors[f], factors[g])), (f, g)
    if len(factors) == 1:
        assert [row["a"] for row in rows] == factors["a"]


def test_all_pairs_is_deterministic_and_much_smaller_than_the_product():
    factors = FACTORS[2]
    rows = all_pairs(factors)
    assert rows == all_pairs(factors)
    assert 64 <= len(rows) <= 80  # at least 8 x 8 rows for the two 8-value factors; the product has 512
    assert len({tuple(r.values()) for r in rows}) == len(rows)  # no row twice
