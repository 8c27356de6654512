"""Step news records (``exchange/wire.py`` §3): int64 words, no pickling, any rid a client sends."""

import random

import pytest

from sglang_dcp.exchange.wire import NEWS_HEADER, NEWS_SECTIONS, decode_news, encode_news


def _rid(rng: random.Random) -> str:
    alphabet = "abcXYZ019-_/ é漢😀\x00\n"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))


@pytest.mark.parametrize("seed", range(30))
def test_random_news_round_trips_with_padding(seed):
    rng = random.Random(seed)
    rids = [_rid(rng) for _ in range(rng.randint(1, 6))]
    moves = [(rng.choice(rids), rng.randrange(64), rng.randrange(64), rng.randrange(10**6),
              rng.randrange(10**6, 2 * 10**6)) for _ in range(rng.randint(0, 5))]  # fmt: skip
    releases = rng.sample(rids, rng.randint(0, len(rids)))
    decoding = [(rng.choice(rids), rng.randrange(64),
                 tuple((rng.randrange(64), 64 * i, 64 * i + 64) for i in range(rng.randint(0, 4))))
                for _ in range(rng.randint(0, 5))]  # fmt: skip
    extending = [(rng.choice(rids), rng.randrange(64), ((rng.randrange(64), 0, 32),), 32, 64)
                 for _ in range(rng.randint(0, 3))]  # fmt: skip
    news = {"moves": moves, "releases": releases, "decoding": decoding, "extending": extending,
            "after": moves[::-1]}  # fmt: skip
    words = encode_news(news)
    assert all(-(2**63) <= w < 2**63 for w in words)  # fits int64
    assert decode_news(words + [0] * rng.randint(0, 9)) == news


def test_an_all_zero_record_is_empty_news():
    """A rank that wrote no record is gathered as zeros (padding): it has no news."""
    empty = {name: [] for name, _, _ in NEWS_SECTIONS}
    assert decode_news([0] * NEWS_HEADER) == empty
    assert encode_news({}) == [0] * NEWS_HEADER


def test_a_short_or_corrupt_record_is_refused():
    words = encode_news({"moves": [("a", 0, 1, 0, 64)]})
    with pytest.raises(ValueError, match="header says"):
        decode_news(words[:-1])
    with pytest.raises(ValueError, match="bad header"):
        decode_news([-1] + words[1:])
    with pytest.raises(ValueError, match="needs 2 extra fields"):
        encode_news({"extending": [("a", 0, ())]})
