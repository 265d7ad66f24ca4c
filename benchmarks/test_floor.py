"""The python-floor TFTP reference serves the right bytes (loopback only, bounded waits)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

FLOOR = Path(__file__).with_name("floor_tftp.py")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def floor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, bytes]]]:
    """A floor server on a free loopback port with three files of known bytes."""
    root = tmp_path_factory.mktemp("floor-root")
    files = {
        "empty.bin": b"",
        "odd.bin": os.urandom(10 * 1000 + 7),
        "exact.bin": os.urandom(4 * 1000),
        # 8-octet blocks: more than 65535 of them, so the block number rolls over.
        "many.bin": os.urandom(8 * 70_000 + 3),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    port = _free_udp_port()
    process = subprocess.Popen(
        [sys.executable, str(FLOOR), "--listen", "127.0.0.1", "--port", str(port),
         "--root", str(root)],
    )  # fmt: skip
    time.sleep(0.5)
    try:
        yield port, files
    finally:
        process.terminate()
        process.wait(timeout=10)


def _download(port: int, name: str, options: dict[str, str]) -> bytes:
    """A minimal RFC 1350/2347/7440 read client with a 5 s receive bound."""
    request = b"\0\1" + name.encode() + b"\0octet\0"
    for key, value in options.items():
        request += key.encode() + b"\0" + value.encode() + b"\0"
    blksize = int(options.get("blksize", "512"))
    windowsize = int(options.get("windowsize", "1"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(request, ("127.0.0.1", port))
        received = bytearray()
        expected = 1
        in_window = 0
        while True:
            datagram, server = sock.recvfrom(65536)
            opcode, number = struct.unpack("!HH", datagram[:4])
            if opcode == 6:  # OACK
                sock.sendto(struct.pack("!HH", 4, 0), server)
                continue
            assert opcode == 3, datagram[:40]
            assert number == expected & 0xFFFF
            received += datagram[4:]
            in_window += 1
            last = len(datagram) - 4 < blksize
            if last or in_window == windowsize:
                sock.sendto(struct.pack("!HH", 4, number), server)
                in_window = 0
            if last:
                return bytes(received)
            expected += 1


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("odd.bin", {}),
        ("odd.bin", {"blksize": "1000"}),
        ("exact.bin", {"blksize": "1000"}),
        ("empty.bin", {}),
        ("odd.bin", {"blksize": "1000", "windowsize": "4", "tsize": "0"}),
        ("many.bin", {"blksize": "8", "windowsize": "16"}),
    ],
)
def test_floor_serves_exact_bytes(floor: tuple[int, dict[str, bytes]], name: str,
                                  options: dict[str, str]) -> None:
    port, files = floor
    assert _download(port, name, options) == files[name]
