"""ProxyDhcpCore: sans-IO proxyDHCP on ports 67 and 4011, driven with plain values."""

from __future__ import annotations

import runpy
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from dhcp_samples import SAMPLES, VM_MAC
from hypothesis import given, settings
from hypothesis import strategies as st

from pxestack.dhcp.decide import PXE_USE_BOOTFILE_OPTION, BootDefaults
from pxestack.dhcp.outgoing import DestinationKind, Outgoing
from pxestack.dhcp.policy import BootSpec, Machine, StaticBootPolicy
from pxestack.dhcp.proxy import ProxyDhcpCore
from pxestack.wire import constants as c
from pxestack.wire.dhcp import DhcpMessage, decode_dhcp, encode_dhcp
from pxestack.wire.dhcp_options import DhcpOptions, encode_suboptions

SERVER = IPv4Address("198.18.0.1")
SCRIPT = "http://198.18.0.1:8080/boot.ipxe"
CLIENT_IP = IPv4Address("198.18.0.141")
RELAY = IPv4Address("198.18.9.1")
DEFAULTS = BootDefaults(server_address=SERVER, ipxe_script_url=SCRIPT)
UUID_97 = bytes.fromhex("00" "00000000" "0000" "0040" "8000" "e2e000000001")


def core(**kwargs: object) -> tuple[ProxyDhcpCore, StaticBootPolicy]:
    policy = StaticBootPolicy()
    return ProxyDhcpCore(DEFAULTS, policy, **kwargs), policy  # type: ignore[arg-type]


def only(replies: list[Outgoing]) -> Outgoing:
    assert len(replies) == 1
    out = replies[0]
    # Every reply must encode within its own size limit and decode to itself.
    assert decode_dhcp(encode_dhcp(out.message, max_size=out.max_size)) == out.message
    return out


def test_ovmf_native_discover_gets_a_proxy_offer() -> None:
    """OVMF's own PXE client: 60 PXEClient with 43.6 = 8 and the file in the packet."""
    proxy, _ = core()
    request = SAMPLES["ovmf_native_pxe_discover"]()
    out = only(proxy.handle(request, "eth1", now=0.0))
    reply = out.message
    assert reply.op == c.BOOTREPLY and reply.message_type == c.DHCPOFFER
    assert reply.xid == request.xid and reply.chaddr == VM_MAC
    assert reply.yiaddr == IPv4Address(0)  # proxyDHCP never gives an address
    assert reply.siaddr == SERVER and reply.file == b"ipxe.efi"
    assert reply.broadcast
    options = reply.options
    assert options.ip(c.OPT_SERVER_ID) == SERVER
    assert options[c.OPT_VENDOR_CLASS_ID] == b"PXEClient"
    assert options[c.OPT_VENDOR_SPECIFIC] == PXE_USE_BOOTFILE_OPTION
    assert options[c.OPT_CLIENT_UUID] == UUID_97  # echoed: EDK2 drops offers without it
    assert out.destination.kind is DestinationKind.BROADCAST
    assert (str(out.destination.address), out.destination.port) == ("255.255.255.255", 68)
    assert out.source_port == 67 and out.interface == "eth1"
    assert out.max_size == 1444  # option 57 = 1472


def test_ipxe_rom_gets_a_complete_proxy_offer() -> None:
    """iPXE counts it as ProxyDHCP (60 PXEClient) and dhcp_has_pxeopts() holds (siaddr +
    filename), so no ProxyDHCPREQUEST to 4011 follows."""
    proxy, _ = core()
    reply = only(proxy.handle(SAMPLES["seabios_ipxe_rom_discover"](), "eth1", 0.0)).message
    assert reply.options[c.OPT_VENDOR_CLASS_ID] == b"PXEClient"
    assert reply.options.text(c.OPT_BOOTFILE_NAME) == SCRIPT
    assert reply.siaddr == SERVER
    assert c.OPT_VENDOR_SPECIFIC not in reply.options


def test_non_pxe_clients_are_not_answered() -> None:
    """Proxy mode answers boot clients only: busybox udhcpc is the site DHCP server's business."""
    proxy, _ = core()
    assert proxy.handle(SAMPLES["busybox_udhcpc_discover"](), "eth1", 0.0) == []
    assert proxy.counters["ignored_not_pxe"] == 1


@pytest.mark.parametrize(
    "message",
    [
        SAMPLES["dnsmasq_offer_to_ipxe"](),  # a BOOTREPLY from the site server
        SAMPLES["ovmf_native_pxe_discover"]().replace(
            options=DhcpOptions({c.OPT_MESSAGE_TYPE: bytes((c.DHCPRELEASE,)),
                                 c.OPT_VENDOR_CLASS_ID: b"PXEClient"})),
        SAMPLES["ovmf_native_pxe_discover"]().replace(
            options=DhcpOptions({c.OPT_VENDOR_CLASS_ID: b"PXEClient"})),  # plain BOOTP
    ],
    ids=["bootreply", "release", "no-message-type"],
)
def test_other_messages_are_ignored(message: DhcpMessage) -> None:
    proxy, _ = core()
    assert proxy.handle(message, "eth1", 0.0) == []


def test_policy_changes_act_on_the_next_packet() -> None:
    proxy, policy = core()
    request = SAMPLES["ovmf_native_pxe_discover"]()
    policy.ignore("52:54:00:E2:E0:01")
    assert proxy.handle(request, "eth1", 0.0) == []
    policy.unignore("52-54-00-e2-e0-01")
    assert only(proxy.handle(request, "eth1", 1.0)).message.message_type == c.DHCPOFFER


def test_policy_sees_the_machine_and_interface() -> None:
    seen: list[Machine] = []

    class Recording:
        def boot_spec(self, machine: Machine) -> BootSpec | None:
            seen.append(machine)
            return BootSpec(boot_file="snponly.efi")

    proxy = ProxyDhcpCore(DEFAULTS, Recording())
    reply = only(proxy.handle(SAMPLES["ovmf_native_pxe_discover"](), "eth7", 0.0)).message
    assert reply.file == b"snponly.efi"
    assert seen[0].interface == "eth7" and seen[0].mac == "52:54:00:e2:e0:01"
    assert str(seen[0].uuid) == "00000000-0000-4000-8000-e2e000000001"


def port_4011_request(**changes: object) -> DhcpMessage:
    """EDK2 after a BINL offer: DHCPREQUEST to siaddr:4011 with its address in ciaddr."""
    request = SAMPLES["ovmf_native_pxe_request"]()
    options = request.options.without(c.OPT_SERVER_ID, c.OPT_REQUESTED_IP).with_option(
        c.OPT_VENDOR_SPECIFIC, encode_suboptions({c.PXE_BOOT_ITEM: b"\x80\x00\x00\x00"})
    )
    return request.replace(ciaddr=CLIENT_IP, options=options, **changes)


def test_port_4011_request_gets_an_ack_back_to_the_sender() -> None:
    """PXE 2.1 §2.2.4: ACK unicast to the source, 43.71 echoed."""
    proxy, _ = core()
    out = only(proxy.handle(port_4011_request(), "eth1", 0.0, port=4011,
                            source=(str(CLIENT_IP), 4011)))
    reply = out.message
    assert reply.message_type == c.DHCPACK and reply.ciaddr == CLIENT_IP
    assert reply.file == b"ipxe.efi" and reply.yiaddr == IPv4Address(0)
    assert reply.options.pxe_suboptions() == {
        c.PXE_DISCOVERY_CONTROL: b"\x08", c.PXE_BOOT_ITEM: b"\x80\x00\x00\x00"
    }
    assert out.destination.kind is DestinationKind.UNICAST
    assert (out.destination.address, out.destination.port) == (CLIENT_IP, 4011)
    assert out.source_port == 4011
    assert out.max_size == 65252  # OVMF's option 57 = 65280 in REQUEST


def test_port_4011_without_source_uses_ciaddr() -> None:
    proxy, _ = core()
    out = only(proxy.handle(port_4011_request(), "eth1", 0.0, port=4011))
    assert (out.destination.address, out.destination.port) == (CLIENT_IP, 68)


def test_port_4011_ignores_discover() -> None:
    proxy, _ = core()
    discover = SAMPLES["ovmf_native_pxe_discover"]()
    assert proxy.handle(discover, "eth1", 0.0, port=4011) == []


@pytest.mark.parametrize("sample", ["ovmf_native_pxe_request", "seabios_ipxe_rom_request"])
def test_request_on_port_67_is_never_answered(sample: str) -> None:
    """A REQUEST on port 67 selects the site server's address offer: never ACK it, whatever
    server identifier it names (ours, the site's, or none)."""
    proxy, _ = core()
    request = SAMPLES[sample]()
    variants = [
        request,
        request.replace(options=request.options.with_option(c.OPT_SERVER_ID, SERVER.packed)),
        request.replace(options=request.options.without(c.OPT_SERVER_ID)),
    ]
    for message in variants:
        assert proxy.handle(message, "eth1", 0.0) == []
    assert proxy.counters["acks"] == 0
    assert proxy.counters["ignored_message"] == len(variants)


GOLDEN_EXCHANGES = Path(__file__).resolve().parents[1] / "golden" / "proxy_exchange"


def captured_exchange(name: str) -> list[tuple[int, int, DhcpMessage]]:
    """(source port, destination port, message) of one captured exchange, in wire order."""
    seen = []
    for line in (GOLDEN_EXCHANGES / f"{name}.txt").read_text().splitlines():
        source, destination, payload = line.split()
        seen.append((int(source.rsplit(":", 1)[1]), int(destination.rsplit(":", 1)[1]),
                     decode_dhcp(bytes.fromhex(payload))))
    return seen


@pytest.mark.parametrize(("name", "ours"), [
    ("ovmf_pxe_own_address", IPv4Address("198.18.0.2")),
    ("ovmf_pxe_shared_address", IPv4Address("198.18.0.1")),
])
def test_captured_uefi_exchange_beside_a_site_server(name: str, ours: IPv4Address) -> None:
    """OVMF's PXE client beside a site DHCP server, as captured on the wire: the proxy's
    only answer to the whole exchange is its OFFER (naming its own address); the REQUEST
    that selects the site's address offer, on port 67, gets nothing from the proxy."""
    exchange = captured_exchange(name)
    kinds = [(m.op, m.message_type) for _, _, m in exchange]
    assert kinds == [
        (c.BOOTREQUEST, c.DHCPDISCOVER), (c.BOOTREPLY, c.DHCPOFFER),
        (c.BOOTREPLY, c.DHCPOFFER), (c.BOOTREQUEST, c.DHCPREQUEST),
        (c.BOOTREPLY, c.DHCPACK),
    ]
    site_offer = exchange[1][2]
    request = exchange[3][2]
    assert request.options.ip(c.OPT_SERVER_ID) == site_offer.options.ip(c.OPT_SERVER_ID)
    assert request.options.ip(c.OPT_REQUESTED_IP) == site_offer.yiaddr

    proxy = ProxyDhcpCore(BootDefaults(server_address=ours, ipxe_script_url=SCRIPT),
                          StaticBootPolicy())
    replies = [
        out
        for i, (_, dport, message) in enumerate(exchange) if dport == c.DHCP_SERVER_PORT
        for out in proxy.handle(message, "br0", float(i), port=dport)
    ]
    offer = only(replies).message
    assert offer.message_type == c.DHCPOFFER and offer.yiaddr == IPv4Address(0)
    assert offer.options.ip(c.OPT_SERVER_ID) == ours and offer.siaddr == ours
    assert offer.file == b"ipxe.efi"
    # The offer pxestack sent in the capture carries the same boot facts.
    captured = exchange[2][2]
    assert (captured.siaddr, captured.file) == (offer.siaddr, offer.file)
    assert captured.options.ip(c.OPT_SERVER_ID) == ours
    assert proxy.counters["acks"] == 0


@pytest.mark.parametrize(("name", "ours"), [
    ("ovmf_http_boot_own_address", IPv4Address("198.18.0.2")),
    ("ovmf_http_boot_shared_address", IPv4Address("198.18.0.1")),
])
def test_captured_http_boot_exchange_beside_a_site_server(name: str, ours: IPv4Address
                                                          ) -> None:
    """OVMF's UEFI HTTP Boot client beside a site DHCP server, as captured on the wire: the
    proxy's only answer is an OFFER with option 60 ``HTTPClient`` and the boot URL, which
    the client combines with the site's address offer; its REQUEST goes to the site."""
    exchange = captured_exchange(name)
    kinds = [(m.op, m.message_type) for _, _, m in exchange]
    assert kinds == [
        (c.BOOTREQUEST, c.DHCPDISCOVER), (c.BOOTREPLY, c.DHCPOFFER),
        (c.BOOTREPLY, c.DHCPOFFER), (c.BOOTREQUEST, c.DHCPREQUEST),
        (c.BOOTREPLY, c.DHCPACK),
    ]
    discover, site_offer, request = exchange[0][2], exchange[1][2], exchange[3][2]
    assert (discover.options.get(c.OPT_VENDOR_CLASS_ID) or b"").startswith(b"HTTPClient")
    assert request.options.ip(c.OPT_SERVER_ID) == site_offer.options.ip(c.OPT_SERVER_ID)
    assert request.options.ip(c.OPT_REQUESTED_IP) == site_offer.yiaddr

    base = f"http://{ours}:8080"
    proxy = ProxyDhcpCore(BootDefaults(server_address=ours, ipxe_script_url=SCRIPT,
                                       http_boot_base_url=base), StaticBootPolicy())
    replies = [
        out
        for i, (_, dport, message) in enumerate(exchange) if dport == c.DHCP_SERVER_PORT
        for out in proxy.handle(message, "br0", float(i), port=dport)
    ]
    offer = only(replies).message
    assert offer.message_type == c.DHCPOFFER and offer.yiaddr == IPv4Address(0)
    assert offer.options.ip(c.OPT_SERVER_ID) == ours
    assert offer.options[c.OPT_VENDOR_CLASS_ID] == b"HTTPClient"
    assert offer.options.text(c.OPT_BOOTFILE_NAME) == f"{base}/ipxe.efi"
    assert c.OPT_VENDOR_SPECIFIC not in offer.options
    # The offer pxestack sent in the capture carries the same boot facts.
    captured = exchange[2][2]
    assert captured.options.ip(c.OPT_SERVER_ID) == ours
    assert captured.options[c.OPT_VENDOR_CLASS_ID] == b"HTTPClient"
    assert (captured.siaddr, captured.file) == (offer.siaddr, offer.file)
    assert proxy.counters["acks"] == 0


def test_efi_via_4011_variant() -> None:
    """pixiecore's EFI variant: a BINL offer on 67, the file only on 4011 (netboot#43)."""
    proxy, _ = core(efi_via_4011=True)
    offer = only(proxy.handle(SAMPLES["ovmf_native_pxe_discover"](), "eth1", 0.0)).message
    assert offer.options[c.OPT_VENDOR_CLASS_ID] == b"PXEClient"
    assert c.OPT_VENDOR_SPECIFIC not in offer.options and offer.file == b""
    assert c.OPT_BOOTFILE_NAME not in offer.options and offer.siaddr == SERVER
    ack = only(proxy.handle(port_4011_request(), "eth1", 1.0, port=4011)).message
    assert ack.file == b"ipxe.efi"
    # BIOS and iPXE clients are unaffected.
    bios = only(proxy.handle(SAMPLES["seabios_ipxe_rom_discover"](), "eth1", 0.0)).message
    assert bios.options.text(c.OPT_BOOTFILE_NAME) == SCRIPT


def test_relayed_requests_only_from_configured_relays() -> None:
    """Never a reflector: no answers for unknown relays; known relays get giaddr:67."""
    request = SAMPLES["ovmf_native_pxe_discover"]().replace(giaddr=RELAY, flags=0)
    proxy, _ = core()
    assert proxy.handle(request, "eth1", 0.0) == []
    assert proxy.counters["ignored_relay"] == 1
    proxy, _ = core(relays=[RELAY])
    out = only(proxy.handle(request, "eth1", 0.0))
    assert out.destination.kind is DestinationKind.RELAY
    assert (out.destination.address, out.destination.port) == (RELAY, 67)
    assert out.message.giaddr == RELAY and not out.message.broadcast


def test_stripped_ipxe_is_chainloaded_once() -> None:
    """Loop breaker: the same transaction keeps its answer; the next one gets the script."""
    proxy, _ = core()
    stripped = SAMPLES["seabios_ipxe_rom_discover"]().replace(
        options=SAMPLES["seabios_ipxe_rom_discover"]().options.with_option(
            c.OPT_IPXE_ENCAP, bytes.fromhex("150101")))
    first = only(proxy.handle(stripped, "eth1", 0.0)).message
    assert first.file == b"undionly.kpxe"
    again = only(proxy.handle(stripped, "eth1", 1.0)).message  # retransmit, same xid
    assert again.file == b"undionly.kpxe"
    child = only(proxy.handle(stripped.replace(xid=stripped.xid + 7), "eth1", 5.0)).message
    assert child.options.text(c.OPT_BOOTFILE_NAME) == SCRIPT and child.file == b""


def test_counters() -> None:
    proxy, _ = core()
    proxy.handle(SAMPLES["ovmf_native_pxe_discover"](), "eth1", 0.0)
    proxy.handle(port_4011_request(), "eth1", 0.0, port=4011)
    proxy.handle(SAMPLES["busybox_udhcpc_discover"](), "eth1", 0.0)
    assert (proxy.counters["offers"], proxy.counters["acks"],
            proxy.counters["ignored_not_pxe"]) == (1, 1, 1)


@settings(max_examples=150)
@given(
    st.dictionaries(st.sampled_from([43, 55, 57, 60, 61, 77, 93, 97, 175, 82, 12]),
                    st.binary(max_size=300), max_size=8),
    st.sampled_from([c.DHCPDISCOVER, c.DHCPREQUEST, c.DHCPINFORM]),
    st.sampled_from([67, 4011]),
    st.booleans(),
)
def test_any_request_yields_encodable_replies(options: dict[int, bytes], message_type: int,
                                              port: int, pxe: bool) -> None:
    """Whatever a client sends, replies fit its size limit (option 57, at least 576)."""
    if pxe:
        options[c.OPT_VENDOR_CLASS_ID] = b"PXEClient:Arch:00000:UNDI:002001"
    message = DhcpMessage(
        op=c.BOOTREQUEST, xid=3, chaddr=VM_MAC, ciaddr=CLIENT_IP,
        options=DhcpOptions({c.OPT_MESSAGE_TYPE: bytes((message_type,)), **options}),
    )
    proxy, _ = core()
    for out in proxy.handle(message, None, 0.0, port=port):
        data = encode_dhcp(out.message, max_size=out.max_size)
        assert len(data) <= out.max_size
        assert decode_dhcp(data).options.raw(c.OPT_SERVER_ID) == SERVER.packed


def test_embedding_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """examples/dhcp_decisions.py (linked from docs/dhcp-wire.md) keeps working."""
    example = Path(__file__).resolve().parents[2] / "examples" / "dhcp_decisions.py"
    runpy.run_path(str(example), run_name="__main__")
    output = capsys.readouterr().out
    assert "boot 'http://198.18.0.1:8080/boot.ipxe'" in output
    assert "boot 'ipxe.efi'" in output
    assert output.count("-> no reply") == 2
