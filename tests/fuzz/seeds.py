"""Seed inputs for the fuzzing harnesses, read from the vectors the test suite already has.

Nothing binary is committed for fuzzing: the seeds are the golden DHCP packets
(``tests/golden/dhcp/*.hex``), both directions of the recorded proxyDHCP exchanges
(``tests/golden/proxy_exchange/*.txt``), and the TFTP and ICMPv6 byte literals of the wire
tests (``tests/wire/test_tftp.py``, ``tests/wire/test_icmpv6.py``), collected here at run
time.  :func:`write_seeds` writes them into a corpus directory for libFuzzer.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
GOLDEN_DHCP = TESTS / "golden" / "dhcp"
PROXY_EXCHANGE = TESTS / "golden" / "proxy_exchange"
WIRE_TESTS = TESTS / "wire"


def dhcp_seeds() -> list[bytes]:
    """Every golden DHCP packet and every packet of the recorded proxy exchanges."""
    seeds = []
    for path in sorted(GOLDEN_DHCP.glob("*.hex")):
        text = path.read_text()
        seeds.append(bytes.fromhex("".join(line.split("#", 1)[0] for line in text.splitlines())))
    for path in sorted(PROXY_EXCHANGE.glob("*.txt")):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) == 3 and not line.startswith("#"):
                seeds.append(bytes.fromhex(fields[2]))
    return seeds


def _byte_literals(path: Path) -> list[bytes]:
    """The bytes constants in a test module: ``b"..."`` literals and ``bytes.fromhex("...")``
    calls whose arguments are string literals (implicitly concatenated ones included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[bytes] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            found.append(node.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "fromhex" and len(node.args) == 1
              and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            try:
                found.append(bytes.fromhex(node.args[0].value))
            except ValueError:
                continue
    return found


def tftp_seeds() -> list[bytes]:
    """The TFTP datagrams written out in the TFTP codec tests (opcode 1 to 6)."""
    seeds = [raw for raw in _byte_literals(WIRE_TESTS / "test_tftp.py")
             if len(raw) >= 2 and raw[0] == 0 and 1 <= raw[1] <= 6]
    # A request carrying every option the negotiation reads, in odd case and with garbage.
    seeds.append(b"\x00\x01pxelinux.0\x00octet\x00BLKSIZE\x0065464\x00tsize\x000\x00"
                 b"timeout\x00255\x00windowsize\x0065535\x00utimeout\x001000\x00")
    seeds.append(b"\x00\x02upload.bin\x00netascii\x00tsize\x00123456\x00blksize\x007\x00")
    return _unique(seeds)


def icmpv6_seeds() -> list[bytes]:
    """The router solicitations and advertisements of the ICMPv6 codec tests."""
    seeds = [raw for raw in _byte_literals(WIRE_TESTS / "test_icmpv6.py")
             if len(raw) >= 8 and raw[0] in (133, 134)]
    # A solicitation with the source link-layer option and an unknown option after it.
    seeds.append(bytes.fromhex("8500000000000000" "0101525400e2e001" "2601" + "00" * 6))
    # A router advertisement (M=1, O=1, lifetime 1800 s) with link-layer and prefix options.
    seeds.append(bytes.fromhex(
        "86000000" "40c00708" "00000000" "00000000" "0101525400e2e001"
        "0304" "40c0" "00278d00" "00093a80" "00000000" "20010db8000000000000000000000000"
    ))
    return _unique(seeds)


def _unique(seeds: list[bytes]) -> list[bytes]:
    return list(dict.fromkeys(seeds))


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "dhcp": dhcp_seeds,
    "tftp": tftp_seeds,
    "icmpv6": icmpv6_seeds,
}


def write_seeds(target: str, directory: Path) -> int:
    """Write the seeds of *target* into *directory* (one file each, named by content hash);
    return how many there are."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[target]()
    for seed in seeds:
        (directory / hashlib.sha1(seed, usedforsecurity=False).hexdigest()).write_bytes(seed)
    return len(seeds)
