"""Option negotiation: a decision table with the RFC clause or client behind each row."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pxestack.errors import ApiMisuse
from pxestack.tftp.negotiate import OACK_LIMIT, Negotiated, NegotiationLimits, negotiate
from pxestack.wire.tftp import OptionAck, encode_tftp

LIMITS = NegotiationLimits(max_blksize=1468, max_windowsize=16)


@pytest.mark.parametrize(
    ("requested", "size", "expected"),
    [
        # RFC 2347 §3: no options, no OACK; transfer starts with DATA 1 at 512.
        ((), 100, Negotiated()),
        # iPXE: blksize=1432 tsize=0 -> both acknowledged.
        ((("blksize", "1432"), ("tsize", "0")), 74213,
         Negotiated(blksize=1432, tsize=74213,
                    oack=(("blksize", "1432"), ("tsize", "74213")))),
        # OVMF: tsize=0 blksize=1468 windowsize=4.
        ((("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")), 850528,
         Negotiated(blksize=1468, windowsize=4, tsize=850528,
                    oack=(("tsize", "850528"), ("blksize", "1468"), ("windowsize", "4")))),
        # RFC 2348 §2 + configured max: 65464 is clamped to 1468 (MTU-sized blocks).
        ((("blksize", "65464"),), 1, Negotiated(blksize=1468, oack=(("blksize", "1468"),))),
        # Above the RFC range: clamped.
        ((("blksize", "99999"),), 1, Negotiated(blksize=1468, oack=(("blksize", "1468"),))),
        # RFC 2348 §2: below 8 is invalid -> ignored, not acknowledged.
        ((("blksize", "7"),), 1, Negotiated()),
        ((("blksize", "8"),), 1, Negotiated(blksize=8, oack=(("blksize", "8"),))),
        # Garbage values are ignored (RFC 2347-2349, 7440).
        ((("blksize", "-1"),), 1, Negotiated()),
        ((("blksize", " 512"),), 1, Negotiated()),
        ((("blksize", "0x200"),), 1, Negotiated()),
        ((("blksize", "9" * 400),), 1, Negotiated()),
        ((("blksize", "\u0661\u0662"),), 1, Negotiated()),
        # RFC 2349 §4: tsize answered only when the size is known.
        ((("tsize", "0"),), None, Negotiated()),
        ((("tsize", "0"),), 0, Negotiated(tsize=0, oack=(("tsize", "0"),))),
        # RFC 2349 §3: timeout 1..255.
        ((("timeout", "3"),), 1, Negotiated(timeout=3, oack=(("timeout", "3"),))),
        ((("timeout", "0"),), 1, Negotiated()),
        ((("timeout", "256"),), 1, Negotiated()),
        # tftp-hpa's utimeout is not supported: ignored.
        ((("utimeout", "5000"),), 1, Negotiated()),
        # RFC 7440 §2: windowsize 1..65535, clamped to the configured 16.
        ((("windowsize", "64"),), 1, Negotiated(windowsize=16, oack=(("windowsize", "16"),))),
        ((("windowsize", "0"),), 1, Negotiated()),
        # Duplicates: the first occurrence wins, later ones are ignored.
        ((("blksize", "1024"), ("blksize", "512")), 1,
         Negotiated(blksize=1024, oack=(("blksize", "1024"),))),
        # Unknown options are ignored (RFC 2347 §2).
        ((("multicast", ""), ("rollover", "0")), 1, Negotiated()),
    ],
)
def test_read_negotiation(
    requested: tuple[tuple[str, str], ...], size: int | None, expected: Negotiated
) -> None:
    assert negotiate(requested, limits=LIMITS, file_size=size) == expected


def test_write_echoes_client_tsize() -> None:
    result = negotiate((("tsize", "4096"),), limits=LIMITS, write=True)
    assert result.tsize == 4096
    assert result.oack == (("tsize", "4096"),)


def test_switches_turn_options_off() -> None:
    """dnsmasq tftp-no-blocksize / tftp-hpa -r blksize: some clients misbehave with it."""
    limits = NegotiationLimits(allow_blksize=False, allow_windowsize=False, allow_timeout=False)
    requested = (("blksize", "1468"), ("windowsize", "8"), ("timeout", "2"))
    assert negotiate(requested, limits=limits, file_size=1) == Negotiated()


@pytest.mark.parametrize("kwargs", [{"max_blksize": 7}, {"max_blksize": 65465},
                                    {"max_windowsize": 0}])
def test_limits_are_checked(kwargs: dict[str, int]) -> None:
    with pytest.raises(ApiMisuse):
        NegotiationLimits(**kwargs)


option_names = st.sampled_from(["blksize", "tsize", "timeout", "windowsize", "utimeout", "x"])
option_values = st.one_of(st.integers(-5, 200000).map(str), st.text(max_size=30))


@given(
    st.lists(st.tuples(option_names, option_values), max_size=10),
    st.one_of(st.none(), st.integers(0, 2**40)),
    st.integers(8, 65464),
    st.integers(1, 65535),
)
def test_negotiation_invariants(
    requested: list[tuple[str, str]], size: int | None, max_blksize: int, max_window: int
) -> None:
    limits = NegotiationLimits(max_blksize=max_blksize, max_windowsize=max_window)
    result = negotiate(tuple(requested), limits=limits, file_size=size)
    assert 8 <= result.blksize <= max_blksize or result.blksize == 512
    assert 1 <= result.windowsize <= max_window
    assert result.timeout is None or 1 <= result.timeout <= 255
    # Only requested options, each at most once, and the OACK fits a 512-octet buffer.
    names = [name for name, _ in result.oack]
    assert len(names) == len(set(names))
    assert set(names) <= {name for name, _ in requested}
    assert len(encode_tftp(OptionAck(result.oack))) <= OACK_LIMIT
    if result.tsize is not None:
        assert result.tsize == size
    # What the OACK says is what the transfer uses.
    granted = dict(result.oack)
    assert int(granted.get("blksize", 512)) == result.blksize
    assert int(granted.get("windowsize", 1)) == result.windowsize
