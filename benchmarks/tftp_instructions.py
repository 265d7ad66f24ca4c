"""Machine instructions per lock-step TFTP block of the read session, counted by callgrind.

A :class:`~pxestack.tftp.session.ReadSession` serves 1 MiB and then 4 MiB (blksize 1468,
windowsize 1) to an ideal in-memory client that acknowledges every DATA at once, the way an
adapter drives it: ``next_after_ack`` first, the general ``receive`` and
``datagrams_to_send`` when that declines, ``next_deadline`` after every block.  Each size
runs in its own interpreter under ``valgrind --tool=callgrind``; the difference of the
totals divided by the difference in blocks is the session's cost per block, with start-up
cancelled out.  No sockets and no reactor, so the count does not depend on the machine's
load (the network benchmarks' does: the reactor's idle iterations are counted too).

``--tree DIR`` measures the ``pxestack`` package of another checkout::

    .venv/bin/python benchmarks/tftp_instructions.py --tree /tmp/pxestack-before
    .venv/bin/python benchmarks/tftp_instructions.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.dhcp_instructions import callgrind_total

BLKSIZE = 1468
MIB = 1 << 20

#: The driver run under callgrind: argv[1] is the size in MiB.
DRIVER = '''
import sys
from pxestack.tftp.session import ReadSession
from pxestack.tftp.source import BytesReader
from pxestack.wire.tftp import ReadRequest

payload = bytes(range(256)) * 4096 * int(sys.argv[1])
request = ReadRequest("f", "octet", (("blksize", "1468"), ("tsize", "0")))
session = ReadSession(request, BytesReader(payload), 0.0)
now = 0.0
out = session.datagrams_to_send(now)
for _ in range(100_000):  # bounded: 4 MiB is 2858 blocks
    if session.finished:
        break
    block = 0
    for datagram in out:
        if datagram[1] == 3:  # DATA
            block = (datagram[2] << 8) | datagram[3]
    now += 0.0001
    ack = bytes((0, 4, (block >> 8) & 0xFF, block & 0xFF))
    data = session.next_after_ack(ack, now)
    if data is None:
        session.receive(ack, now)
        out = session.datagrams_to_send(now)
    else:
        out = [data]
    session.next_deadline()
assert session.finished
'''


def blocks(size: int) -> int:
    """DATA blocks of a *size*-octet file (the last one short, possibly empty)."""
    return size // BLKSIZE + 1


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, help="source tree whose pxestack is measured")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found (Debian package valgrind)")
    env = dict(os.environ, PYTHONHASHSEED="0")
    if args.tree is not None:
        env["PYTHONPATH"] = str(args.tree.resolve())
    totals = {}
    with tempfile.TemporaryDirectory(prefix="tftp-instructions-") as scratch:
        driver = Path(scratch) / "driver.py"
        driver.write_text(DRIVER)
        for mib in (1, 4):
            out = Path(scratch) / f"callgrind.{mib}"
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                            sys.executable, str(driver), str(mib)],
                           env=env, check=True, capture_output=True)
            totals[mib] = callgrind_total(out)
    per_block = (totals[4] - totals[1]) / (blocks(4 * MIB) - blocks(MIB))
    print(f"tree {args.tree.resolve() if args.tree else 'this virtualenv'}")
    print(f"instructions per lock-step block (session): {per_block:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
