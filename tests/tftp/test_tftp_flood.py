"""A request flood against a real ``pxestack tftp`` on loopback: a real client still boots.

The flood sends about 2000 RRQs, each from a new source port, within a few seconds, and
never acknowledges anything (what a spoofing or broken machine on the segment does).  It
comes from eight source addresses (127.0.0.2 to 127.0.0.9): eight addresses times the
default 64 transfers per client fill the server's 512 slots, which is what starved real
machines before the admission rule.  The real client, on 127.0.0.1, must still get a slot
(from the address holding the most) and finish.  It is tftp-hpa's ``tftp`` when installed,
else a minimal lock-step client written here; its time is recorded (``record_property``)
and asserted loosely.

A flood from the real client's own address is the spoofing case: TFTP cannot tell the two
apart, and admission only lets the source replace its own oldest never-acknowledged
transfer (tests/tftp/test_tftp_admission.py covers that rule without sockets).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pxestack.wire.tftp import Ack, Data, ReadRequest, decode_tftp, encode_tftp

pytestmark = pytest.mark.slow

#: RRQs the flood sends, each from its own source port, and over how many seconds.
FLOOD_REQUESTS = 2000
#: The flood's source addresses (the real client uses 127.0.0.1).
FLOOD_SOURCES = tuple(f"127.0.0.{n}" for n in range(2, 10))
FLOOD_SECONDS = 3.0
#: The real client must be done within this (loose: a shared, loaded 2-CPU machine).
CLIENT_LIMIT = 10.0
FILE_SIZE = 256 * 1024 + 7


def _free_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    data = os.urandom(FILE_SIZE)
    (tmp_path / "undionly.kpxe").write_bytes(data)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pxestack", "tftp", "--root", str(tmp_path), "--listen",
         f"127.0.0.1:{port}", "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 20
        ready = False
        while time.monotonic() < deadline:
            # Ready once it answers an RRQ for a missing file (the log level hides the
            # "listening" line).
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.settimeout(0.2)
                probe.sendto(encode_tftp(ReadRequest("missing")), ("127.0.0.1", port))
                with contextlib.suppress(OSError):
                    probe.recvfrom(2048)
                    ready = True
            if ready or process.poll() is not None:
                break
        assert ready, "pxestack tftp did not start"
        yield port, data
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _flood(port: int, sockets: list[socket.socket], stop: threading.Event) -> None:
    """FLOOD_REQUESTS RRQs from new source ports over FLOOD_SECONDS; never an ACK."""
    request = encode_tftp(ReadRequest("undionly.kpxe"))
    start = time.monotonic()
    for index in range(FLOOD_REQUESTS):
        if stop.is_set():
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((FLOOD_SOURCES[index % len(FLOOD_SOURCES)], 0))
        sock.setblocking(False)
        sockets.append(sock)  # kept open: no ICMP error ends the server's transfer
        with contextlib.suppress(OSError):
            sock.sendto(request, ("127.0.0.1", port))
        lag = start + FLOOD_SECONDS * (index + 1) / FLOOD_REQUESTS - time.monotonic()
        if lag > 0:
            stop.wait(lag)


def _own_client(port: int, target: Path) -> None:
    """A minimal RFC 1350 lock-step client (RRQ resent every second, as firmware does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(1.0)
        received = bytearray()
        expected = 1
        tid: tuple[str, int] | None = None
        last: bytes = encode_tftp(ReadRequest("undionly.kpxe"))
        destination: tuple[str, int] = ("127.0.0.1", port)
        deadline = time.monotonic() + CLIENT_LIMIT * 2
        while time.monotonic() < deadline:
            sock.sendto(last, destination)
            try:
                datagram, source = sock.recvfrom(4096)
            except TimeoutError:
                continue
            packet = decode_tftp(datagram)
            assert isinstance(packet, Data), packet
            if tid is None:
                tid = source
            if source != tid or packet.block != expected & 0xFFFF:
                continue
            received += packet.payload
            last, destination = encode_tftp(Ack(packet.block)), tid
            expected += 1
            if len(packet.payload) < 512:
                sock.sendto(last, destination)
                target.write_bytes(received)
                return
        raise AssertionError("own client did not finish")


def _tftp_hpa(port: int, target: Path) -> None:
    subprocess.run(["tftp", "-m", "binary", "127.0.0.1", str(port), "-c", "get",
                    "undionly.kpxe", str(target)],
                   check=True, timeout=CLIENT_LIMIT * 2, capture_output=True)


def test_real_client_completes_during_a_request_flood(
    server: tuple[int, bytes], tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    port, data = server
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FLOOD_REQUESTS + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    sockets: list[socket.socket] = []
    stop = threading.Event()
    flood = threading.Thread(target=_flood, args=(port, sockets, stop), daemon=True)
    client = _tftp_hpa if shutil.which("tftp") else _own_client
    target = tmp_path / "out.bin"
    try:
        flood.start()
        # Let the flood fill the server's slots first (8 sources x 64 per client).
        while len(sockets) < FLOOD_REQUESTS // 4 and flood.is_alive():
            time.sleep(0.01)
        begin = time.monotonic()
        client(port, target)
        elapsed = time.monotonic() - begin
        flooding = flood.is_alive()
    finally:
        stop.set()
        flood.join(timeout=10)
        for sock in sockets:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    record_property("client", client.__name__.strip("_"))
    record_property("client_seconds", round(elapsed, 3))
    print(f"{client.__name__.strip('_')} took {elapsed:.3f} s during the flood")
    assert flooding, "the flood ended before the real client finished"
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert elapsed < CLIENT_LIMIT
