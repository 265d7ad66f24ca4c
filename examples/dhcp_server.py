"""Embed pxestack's full DHCP server in your own Twisted program, with your own boot policy.

Runs without root on loopback (port 6767; clients answer on 6768)::

    python examples/dhcp_server.py          # serve until Ctrl-C
    python examples/dhcp_server.py --demo   # send one DISCOVER to itself, print the OFFER, exit

The pieces, bottom up (docs/dhcp.md "Embedding"):

1. an :class:`InMemoryLeaseStore` with the subnets and reservations (add a
   :class:`LeaseJournal` as its ``listener`` to make leases survive restarts);
2. a :class:`BootPolicy`: any object with ``boot_spec(machine) -> BootSpec | None``;
3. the sans-IO :class:`DhcpServerCore`; you could call ``core.handle(message, iface, now)``
   yourself with any I/O you like;
4. the Twisted adapter :class:`DhcpServerProtocol` on a UDP port.
"""

from __future__ import annotations

import sys
from ipaddress import IPv4Address, IPv4Network

from twisted.internet import reactor, task
from twisted.internet.protocol import DatagramProtocol

from pxestack.dhcp.decide import BootDefaults
from pxestack.dhcp.leases import AddressRange, InMemoryLeaseStore, Reservation, Subnet
from pxestack.dhcp.policy import BootSpec, Machine
from pxestack.dhcp.protocol import DeadlineTimer, DhcpServerProtocol
from pxestack.dhcp.server import DhcpServerCore, InterfaceInfo, ServerSettings, SubnetSettings
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions

SERVER = IPv4Address("127.0.0.1")
NETWORK = IPv4Network("127.0.0.0/8")
PORT = 6767


class LabPolicy:
    """Boot everyone from our script, except machines we were told to leave alone."""

    def __init__(self) -> None:
        self.installed: set[str] = {"52:54:00:00:00:99"}

    def boot_spec(self, machine: Machine) -> BootSpec | None:
        if machine.mac in self.installed:
            return None  # ignore: no reply at all
        return BootSpec(ipxe_script_url=f"http://{SERVER}:8080/boot.ipxe?mac={machine.mac}")


def build_core() -> DhcpServerCore:
    subnet = SubnetSettings(
        Subnet(NETWORK, (AddressRange(IPv4Address("127.0.10.10"), IPv4Address("127.0.10.250")),)),
        lease_time=3600,
        routers=(SERVER,),
        dns=(SERVER,),
    )
    store = InMemoryLeaseStore(
        [subnet.subnet],
        [Reservation(IPv4Address("127.0.10.5"), mac=bytes.fromhex("525400000001"))],
    )
    return DhcpServerCore(
        ServerSettings((subnet,)),
        store,
        LabPolicy(),
        BootDefaults(server_address=SERVER),  # each interface's address is used per reply
    )


class DemoClient(DatagramProtocol):
    """Sends one DISCOVER and prints the OFFER it gets back."""

    def startProtocol(self) -> None:
        discover = DhcpMessage(
            op=c.BOOTREQUEST, xid=0x1234, chaddr=bytes.fromhex("525400000001"),
            options=DhcpOptions({c.OPT_MESSAGE_TYPE: bytes((c.DHCPDISCOVER,))}),
        )
        self.transport.write(encode_dhcp(discover), (str(SERVER), PORT))

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        offer = decode_dhcp(data)
        print(f"OFFER {offer.yiaddr} from {offer.options.ip(c.OPT_SERVER_ID)} "
              f"lease {offer.options.u32(c.OPT_LEASE_TIME)} s")
        reactor.stop()


def main(argv: list[str]) -> int:
    core = build_core()
    iface = InterfaceInfo("lo", SERVER, NETWORK)
    protocol = DhcpServerProtocol(
        core, iface, timer=DeadlineTimer(core, reactor),
        # On loopback and a test port: broadcast to the loopback network, clients on 6768.
        broadcast_address="127.255.255.255", client_port=PORT + 1,
    )
    port = reactor.listenUDP(PORT, protocol, interface=str(SERVER))
    port.setBroadcastAllowed(True)  # replies to clients without an address are broadcast
    if "--demo" in argv:
        # Bound to the wildcard address: a socket bound to 127.0.0.1 gets no broadcasts.
        reactor.listenUDP(PORT + 1, DemoClient(), interface="")
        task.deferLater(reactor, 10, reactor.stop)  # never hang
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
