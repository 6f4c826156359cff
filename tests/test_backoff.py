"""The one backoff policy: growth, cap, jitter bounds, Retry-After, reset."""

from __future__ import annotations

import pytest

from abi_tui.backoff import Backoff, retry_after_s


def test_doubles_up_to_the_maximum_and_resets():
    backoff = Backoff(initial=0.5, maximum=3.0, jitter=0.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5
    assert Backoff(initial=1.0, factor=3.0, maximum=100.0, jitter=0.0).delay(3) == 9.0


@pytest.mark.parametrize("draw,expected", [(0.0, 0.8), (0.5, 1.0), (1.0, 1.2)])
def test_jitter_spreads_within_its_fraction(draw, expected):
    backoff = Backoff(initial=1.0, maximum=10.0, jitter=0.2, rand=lambda: draw)
    assert backoff.delay(1) == pytest.approx(expected)


def test_jitter_never_passes_the_maximum():
    assert Backoff(initial=4.0, maximum=4.0, jitter=0.5, rand=lambda: 1.0).delay(1) == 4.0


def test_retry_after_is_honoured_up_to_the_maximum():
    backoff = Backoff(initial=0.5, maximum=8.0, jitter=0.0)
    assert backoff.delay(1, retry_after=3.0) == 3.0   # longer than the backoff: wait what was asked
    assert backoff.delay(3, retry_after=0.1) == 2.0   # shorter: the backoff still applies
    assert backoff.delay(1, retry_after=60.0) == 8.0  # capped: the caller decides about longer waits


def test_retry_after_headers():
    assert retry_after_s({"Retry-After": "7"}) == 7
    assert retry_after_s({"retry-after-ms": "1500", "Retry-After": "7"}) == 1.5
    assert retry_after_s({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0
    assert retry_after_s({"Retry-After": "soon"}) is None and retry_after_s({}) is None
