"""A measuring stick, not a TFTP server: the least work a Python process can do per block.

``python floor_tftp.py --listen IP --root DIR [--workers N]`` serves read requests for
files in *DIR* with nothing but what a TFTP read needs on the wire: the RRQ, an OACK for
``blksize``/``windowsize``/``tsize``, then DATA answered by ACK.  There is no path check,
no retransmission, no time-out, no ERROR handling, no logging and no statistics, so it
fails under loss and must never face a real network.  The benchmark runs it beside
pxestack, tftpd-hpa, dnsmasq and atftpd (``python-floor``) to show, measured in the same
run, what any pure-Python TFTP server can reach on this machine:

* one transfer running alone is served from a blocking ``recvfrom``/``sendto`` loop
  (``SO_RCVTIMEO`` of 1 ms, then back to ``epoll`` to look for new requests);
* several transfers share one ``epoll``; each ready socket is read once and answered;
* each transfer socket is connected to its client (``send``/``recv``: no address to parse
  or build per datagram, and the kernel keeps the route), which a real server can only do
  with a second socket for datagrams from foreign TIDs (RFC 1350 wants an ERROR 5 for
  them);
* the file is memory-mapped; a DATA datagram is the 4-octet header joined to a slice.

``--workers N`` forks N processes that bind the port with ``SO_REUSEPORT``, as
``pxestack tftp --workers`` does.  SIGTERM ends every process.
"""

from __future__ import annotations

import argparse
import mmap
import os
import select
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

OP_RRQ, OP_DATA, OP_ACK, OP_OACK = 1, 3, 4, 6
#: How long a lone transfer's blocking receive waits before looking for new requests.
LONE_WAIT = struct.pack("ll", 0, 1000)
_HEADER = struct.Struct("!HH")


@dataclass
class Transfer:
    """One read transfer: its socket, the mapped file and where it stands."""

    sock: socket.socket
    client: tuple[str, int]
    data: memoryview
    blksize: int
    windowsize: int
    oack: bool
    #: Blocks sent so far (the last block number sent); 0 before the first DATA.
    sent: int = 0
    #: The block number of the empty or short block that ends the transfer.
    last: int = field(init=False)

    def __post_init__(self) -> None:
        self.last = len(self.data) // self.blksize + 1

    def datagram(self, block: int) -> bytes:
        """DATA for *block* (1-based)."""
        start = (block - 1) * self.blksize
        return _HEADER.pack(OP_DATA, block & 0xFFFF) + self.data[start : start + self.blksize]

    def acked_block(self, ack: bytes) -> int | None:
        """The full block number an ACK datagram acknowledges (past rollover), or None."""
        if len(ack) < 4 or ack[1] != OP_ACK:
            return None
        return self.sent - ((self.sent - ((ack[2] << 8) | ack[3])) & 0xFFFF)

    def on_ack(self, acked: int) -> bool:
        """Send the next window after the ACK of block *acked*; False once done."""
        if acked >= self.last:
            return False
        if acked != self.sent:
            return True  # an ACK inside the window: wait for the window's last
        send = self.sock.send
        end = min(acked + self.windowsize, self.last)
        for block in range(acked + 1, end + 1):
            send(self.datagram(block))
        self.sent = end
        return True


def parse_request(datagram: bytes) -> tuple[str, dict[str, str]] | None:
    """The file name and options of an RRQ, or None for anything else."""
    if len(datagram) < 4 or datagram[1] != OP_RRQ:
        return None
    fields = datagram[2:].split(b"\0")
    if len(fields) < 3:
        return None
    name = fields[0].decode("ascii", "replace").lstrip("/")
    words = [value.decode("ascii", "replace") for value in fields[2:-1]]
    options = {key.lower(): value for key, value in zip(words[::2], words[1::2], strict=False)}
    return name, options


def start_transfer(listen: str, root: Path, datagram: bytes,
                   client: tuple[str, int]) -> Transfer | None:
    """Open a transfer socket, send the OACK or the first DATA; None if not servable."""
    request = parse_request(datagram)
    if request is None:
        return None
    name, options = request
    try:
        with open(root / name, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            mapped = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) if size else b""
    except OSError:
        return None
    blksize = min(int(options.get("blksize", "512")), 65464)
    windowsize = max(1, min(int(options.get("windowsize", "1")), 64))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((listen, 0))
    sock.connect(client)
    sock.setblocking(False)
    transfer = Transfer(sock, client, memoryview(mapped), blksize, windowsize,
                        oack="blksize" in options or "windowsize" in options)
    if transfer.oack:
        parts = [b"blksize", str(blksize).encode()]
        if "windowsize" in options:
            parts += [b"windowsize", str(windowsize).encode()]
        if "tsize" in options:
            parts += [b"tsize", str(size).encode()]
        sock.send(struct.pack("!H", OP_OACK) + b"\0".join(parts) + b"\0")
    else:
        transfer.on_ack(0)
    return transfer


def serve_alone(transfer: Transfer) -> bool:
    """Serve a lone transfer with blocking receives until it ends or goes quiet.

    Returns False when the transfer has ended.
    """
    sock = transfer.sock
    sock.setblocking(True)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, LONE_WAIT)
    receive = sock.recv
    try:
        while True:
            try:
                ack = receive(64)
            except OSError:
                return True
            acked = transfer.acked_block(ack)
            if acked is not None and not transfer.on_ack(acked):
                return False
    finally:
        sock.setblocking(False)


def serve(listen: str, port: int, root: Path) -> None:
    """One process's loop: the listener and every transfer behind one epoll."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((listen, port))
    listener.setblocking(False)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    transfers: dict[int, Transfer] = {}

    def finish(transfer: Transfer) -> None:
        descriptor = transfer.sock.fileno()
        poller.unregister(descriptor)
        del transfers[descriptor]
        transfer.sock.close()

    while True:
        for descriptor, _events in poller.poll():
            if descriptor == listener.fileno():
                while True:
                    try:
                        datagram, client = listener.recvfrom(2048)
                    except BlockingIOError:
                        break
                    transfer = start_transfer(listen, root, datagram, client)
                    if transfer is not None:
                        transfers[transfer.sock.fileno()] = transfer
                        poller.register(transfer.sock.fileno(), select.EPOLLIN)
                continue
            transfer = transfers.get(descriptor)
            if transfer is None:
                continue
            try:
                ack = transfer.sock.recv(64)
            except BlockingIOError:
                continue
            acked = transfer.acked_block(ack)
            if acked is None:
                continue
            ended = not transfer.on_ack(acked)
            if not ended and len(transfers) == 1:
                ended = not serve_alone(transfer)
            if ended:
                finish(transfer)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, fork the workers, serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="IPv4 address to serve on")
    parser.add_argument("--port", type=int, default=69)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    children = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            serve(args.listen, args.port, args.root)
            os._exit(0)
        children.append(pid)

    def end_all(*_: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, end_all)
    signal.signal(signal.SIGINT, end_all)
    serve(args.listen, args.port, args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
