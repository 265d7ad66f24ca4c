"""Child process of test_prov_crash.py: enrol hosts and move them along, acknowledging each
completed change on stdout (as an API answer would), until it is killed with SIGKILL."""

from __future__ import annotations

import sys
from pathlib import Path

from pxestack.provision.model import Host, HostState
from pxestack.provision.store import FileHostStore


def main() -> None:
    store = FileHostStore(Path(sys.argv[1]))
    start = int(sys.argv[2])
    for index in range(start, start + 10000):
        serial = f"sn-{index:05d}"
        store.enrol(
            serial, lambda _e, s=serial: Host(serial=s, machine_id="cd" * 16), ["host created"]
        )
        print(f"ACK {serial} unknown", flush=True)
        for state in (HostState.INSTALLING, HostState.INSTALLED):
            store.update(serial, lambda h, st=state: (h.evolve(state=st), f"to {st.value}", ()))
            print(f"ACK {serial} {state.value}", flush=True)


if __name__ == "__main__":
    main()
