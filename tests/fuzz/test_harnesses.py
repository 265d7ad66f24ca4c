"""The fuzzing harnesses run in the normal suite, so they cannot rot between fuzzing runs.

Each harness's ``one_input`` gets its whole seed corpus, then a few Hypothesis-generated
byte strings: random ones and seeds with a few octets changed (which reach further past the
decoders' first checks).  No atheris needed; ``python3 dev.py fuzz`` does the real fuzzing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import dhcp_target, icmpv6_target, tftp_target
from fuzz.run import TARGETS
from fuzz.seeds import SEEDS, write_seeds
from pxestack.errors import MalformedPacket

HARNESSES: dict[str, Callable[[bytes], None]] = {
    "dhcp": dhcp_target.one_input,
    "tftp": tftp_target.one_input,
    "icmpv6": icmpv6_target.one_input,
}
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_every_target_has_a_harness_and_seeds() -> None:
    assert set(HARNESSES) == set(SEEDS) == set(TARGETS)


@pytest.mark.parametrize("target", sorted(HARNESSES))
def test_harness_accepts_its_seed_corpus(target: str) -> None:
    seeds = SEEDS[target]()
    assert len(seeds) >= 2, "the seed vectors moved: update tests/fuzz/seeds.py"
    for seed in seeds:
        HARNESSES[target](seed)


@pytest.mark.parametrize("target", sorted(HARNESSES))
def test_seeds_are_mostly_well_formed(target: str) -> None:
    """The seeds must get past the decoder, or the fuzzer starts from nothing."""
    decoders = {"dhcp": dhcp_target.decode_dhcp, "tftp": tftp_target.decode_tftp,
                "icmpv6": icmpv6_target.decode_router_solicitation}
    decoded = 0
    for seed in SEEDS[target]():
        try:
            decoders[target](seed)
            decoded += 1
        except MalformedPacket:
            continue
    assert decoded >= 1


# One property per kind of input, each feeding every harness: pytest-twisted, which wraps
# every test of this suite, does not combine Hypothesis with parametrized tests.


@FEW
@given(data=st.binary(max_size=600))
def test_harnesses_survive_random_bytes(data: bytes) -> None:
    for harness in HARNESSES.values():
        harness(data)


@FEW
@given(choice=st.data())
def test_harnesses_survive_mutated_seeds(choice: st.DataObject) -> None:
    target = choice.draw(st.sampled_from(sorted(HARNESSES)))
    packet = bytearray(choice.draw(st.sampled_from(SEEDS[target]())))
    for _ in range(choice.draw(st.integers(1, 4))):
        position = choice.draw(st.integers(0, len(packet) - 1))
        packet[position] = choice.draw(st.integers(0, 255))
    HARNESSES[target](bytes(packet + choice.draw(st.binary(max_size=8))))


def test_write_seeds_writes_one_file_per_seed(tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("seeds")
    count = write_seeds("tftp", directory)
    assert count == len(list(directory.iterdir())) == len(SEEDS["tftp"]())
