"""``pxestack serve`` with TLS on an admin listener, as a mayu deployment with TLS runs it.

One real server in a subprocess on loopback (free ports), certificates from a CA made at
test time.  Machines use plain HTTP on ``http.listen``; the admin API is HTTPS-only on
``http.admin_listen``.  curl, Python's ``ssl`` and ``pxestack ctl`` verify the server
against the CA; admins authenticate with two named tokens, a client certificate, or by
coming from a trusted network, and each audit commit names who acted.  SIGHUP swaps the
certificate (a broken one is refused and the old one kept).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pygit2
import pytest
from conftest import require
from cryptography import x509
from tls_ca import Issued, TestCa

TOKEN_BOB = "bob-" + "0123456789abcdef" * 3
TOKEN_ROBOT = "robot-" + "fedcba9876543210" * 3
#: The source address of the "trusted" admin (all of 127.0.0.0/8 reaches loopback).
TRUSTED_SOURCE = "127.0.0.2"
SERIAL = "sn-tls-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """The running server and what the clients need."""

    proc: subprocess.Popen[bytes]
    ca: TestCa
    cert: Issued
    alice: Issued
    plain: str
    admin: str
    admin_port: int
    log: Path
    cluster: Path
    bob_file: Path
    robot_file: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, start: int = 0, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text()[start:]:
                return
            assert self.proc.poll() is None, self.log_text()
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged:\n{self.log_text()}")


def write_token(path: Path, token: str) -> Path:
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("https-admin")
    ca = TestCa(tmp / "ca")
    cert = ca.server()
    alice = ca.client("ops-alice")
    bob_file = write_token(tmp / "bob.token", TOKEN_BOB)
    robot_file = write_token(tmp / "robot.token", TOKEN_ROBOT)
    plain_port, admin_port = free_port(), free_port()
    config = tmp / "pxestack.yaml"
    config.write_text(
        "state_dir: state\n"
        "http:\n"
        f"  listen: 127.0.0.1:{plain_port}\n"
        f"  admin_listen: 127.0.0.1:{admin_port}\n"
        f"  public_url: http://127.0.0.1:{plain_port}\n"
        f"  tls: {{cert_file: {cert.cert}, key_file: {cert.key}}}\n"
        "provision:\n"
        # Machines enrol from loopback with no DHCP of pxestack's to vouch for them.
        "  enrolment: open\n"
        "  default_os_version: 3975.2.0\n"
        "  network: {ip_range: {start: 198.18.10.10, end: 198.18.10.50}, subnet_size: 24}\n"
        "  profiles: [{name: core, quantity: 5}]\n"
        "  api:\n"
        f"    tokens: [{{name: ops-bob, token_file: {bob_file}}},\n"
        f"             {{name: ci-robot, token_file: {robot_file}}}]\n"
        f"    trusted_networks: [{TRUSTED_SOURCE}/32]\n"
        f"    client_ca_file: {ca.ca_file}\n"
    )
    log = tmp / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pxestack", "serve", "--config", str(config)],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=sink,
        )
    running = Server(proc, ca, cert, alice, f"http://127.0.0.1:{plain_port}",
                     f"https://127.0.0.1:{admin_port}", admin_port, log,
                     tmp / "state" / "cluster", bob_file, robot_file)
    try:
        running.wait_for_log("pxestack running", timeout=60)
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def context(server: Server, client: Issued | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server.ca.ca_file))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def python_request(server: Server, method: str, path: str, body: dict | None = None, *,
                   token: str | None = None, client: Issued | None = None,
                   source: str | None = None) -> tuple[int, bytes]:
    """One HTTPS request with Python's ssl, verified against the test CA."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", server.admin_port, context=context(server, client), timeout=10,
        source_address=(source, 0) if source else None)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, json.dumps(body) if body is not None else None,
                           headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def curl(server: Server, *args: str) -> tuple[int, str]:
    """curl against the admin listener with the test CA; (HTTP status, body)."""
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "20", "--cacert",
         str(server.ca.ca_file), "--write-out", "\n%{http_code}", *args],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


def served_serial(server: Server) -> int:
    with socket.create_connection(("127.0.0.1", server.admin_port), timeout=10) as raw, \
            context(server).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def ctl(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    # Run from the server's own directory: from the checkout, a quickstart token left by
    # `dev.py serve` (pxestack-state/admin-token) would be sent to this server and refused.
    return subprocess.run(
        [sys.executable, "-m", "pxestack", "ctl", "--server", server.admin, *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=server.log.parent,
        env={**os.environ, "PXESTACK_TOKEN": ""})


def authors(server: Server) -> list[tuple[str, str, str, str]]:
    """(author name, author e-mail, committer name, first message line), oldest first."""
    repo = pygit2.Repository(str(server.cluster))
    walker = repo.walk(repo.head.target, pygit2.enums.SortMode.TOPOLOGICAL
                       | pygit2.enums.SortMode.REVERSE)
    return [(c.author.name, c.author.email, c.committer.name, c.message.splitlines()[0])
            for c in walker]


def test_machines_use_plain_http_and_the_admin_api_is_not_on_it(server: Server) -> None:
    with urllib.request.urlopen(f"{server.plain}/first-stage-script/{SERIAL}",
                                timeout=10) as answer:
        assert answer.status == 200
    request = urllib.request.Request(f"{server.plain}/admin/hosts",
                                     headers={"Authorization": f"Bearer {TOKEN_BOB}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert b"admin listener" in refused.value.read()


def test_curl_verifies_the_server_and_named_tokens_author_the_audit(server: Server) -> None:
    require(shutil.which("curl") is not None, "needs curl")
    code, body = curl(server, "-X", "PUT", "-H", f"Authorization: Bearer {TOKEN_BOB}",
                      "-H", "Content-Type: application/json",
                      "--data", '{"ProviderId": "p-bob"}',
                      f"{server.admin}/admin/host/{SERIAL}/set_provider_id")
    assert code == 202, body
    # Python's ssl, verified against the CA, with the other named token.
    status, body = python_request(server, "PUT", f"/admin/host/{SERIAL}/set_ipmi_addr",
                                  {"IPMIAddr": "10.9.0.7"}, token=TOKEN_ROBOT)
    assert status == 202, body
    # No credentials and not from a trusted network: refused.
    status, _ = python_request(server, "GET", "/admin/hosts")
    assert status == 401
    # A wrong token is refused even from the trusted network.
    status, _ = python_request(server, "GET", "/admin/hosts", token="x" * 40,
                               source=TRUSTED_SOURCE)
    assert status == 401
    # Without the CA the server is not trusted.
    plain_curl = subprocess.run(["curl", "--silent", "--max-time", "20",
                                 f"{server.admin}/admin/hosts"], capture_output=True,
                                timeout=30, check=False)
    assert plain_curl.returncode == 60  # peer certificate cannot be authenticated


def test_a_client_certificate_authenticates_as_its_subject(server: Server) -> None:
    require(shutil.which("curl") is not None, "needs curl")
    code, body = curl(server, "--cert", str(server.alice.cert), "--key", str(server.alice.key),
                      "-X", "PUT", "-H", "Content-Type: application/json",
                      "--data", '{"Cabinet": 3}',
                      f"{server.admin}/admin/host/{SERIAL}/set_cabinet")
    assert code == 202, body
    status, body = python_request(server, "GET", "/admin/hosts", client=server.alice)
    assert status == 200
    assert [host["Serial"] for host in json.loads(body)] == [SERIAL]
    # A certificate from another CA fails the handshake.
    stranger = TestCa(server.ca.directory / "other").client("mallory")
    mark = len(server.log_text())
    with pytest.raises((ssl.SSLError, ConnectionError)):
        python_request(server, "GET", "/admin/hosts", client=stranger)
    server.wait_for_log("TLS with 127.0.0.1 failed", start=mark)


def test_a_trusted_network_needs_no_token_and_is_logged(server: Server) -> None:
    require(shutil.which("curl") is not None, "needs curl")
    code, body = curl(server, "--interface", TRUSTED_SOURCE, "-X", "PUT",
                      "-H", "Content-Type: application/json",
                      "--data", '{"FleetMetadata": ["rack=r1"]}',
                      f"{server.admin}/admin/host/{SERIAL}/set_metadata")
    assert code == 202, body
    status, _ = python_request(server, "GET", "/admin/hosts", source=TRUSTED_SOURCE)
    assert status == 200
    server.wait_for_log(f"admin request from trusted network {TRUSTED_SOURCE}/32: "
                        f"PUT /admin/host/{SERIAL}/set_metadata")


def test_pxestack_ctl_verifies_with_ca_file_and_presents_client_certificates(
        server: Server) -> None:
    listing = ctl(server, "--ca-file", str(server.ca.ca_file), "--token-file",
                  str(server.bob_file), "-o", "json", "list")
    assert listing.returncode == 0, listing.stderr
    assert [host["Serial"] for host in json.loads(listing.stdout)] == [SERIAL]
    mark = len(server.log_text())
    status = ctl(server, "--ca-file", str(server.ca.ca_file), "--cert-file",
                 str(server.alice.cert), "--key-file", str(server.alice.key),
                 "set", SERIAL, "etcdtoken", "tok-alice")
    assert status.returncode == 0, (status.stderr, server.log_text()[mark:])
    unverified = ctl(server, "--token-file", str(server.bob_file), "list")
    assert unverified.returncode == 1
    assert "certificate" in unverified.stderr.lower()


def test_every_audit_commit_names_its_actor(server: Server) -> None:
    require(shutil.which("curl") is not None, "needs curl")
    found = authors(server)
    by_message = {message: (name, email, committer) for name, email, committer, message
                  in found}
    assert by_message[f"{SERIAL}: updated host provider id"][:2] == (
        "ops-bob", "ops-bob@pxestack.invalid")
    mine = [(name, committer) for name, _, committer, message in found
            if message.startswith(f"{SERIAL}:")]
    names = [name for name, _ in mine]
    assert names[0] == f"machine:{SERIAL}"
    for actor in ("ops-bob", "ci-robot", "cert:CN=ops-alice", f"trusted:{TRUSTED_SOURCE}"):
        assert actor in names, found
    assert {committer for _, committer in mine} == {"mayu commiter"}
    emails = {email for _, email, _, _ in found}
    assert "cert-cn-ops-alice@pxestack.invalid" in emails
    log = server.log_text()
    assert TOKEN_BOB not in log and TOKEN_ROBOT not in log
    assert "admin request by ops-bob: PUT /admin/host/" in log


def test_sighup_swaps_the_certificate_and_keeps_it_when_the_new_one_is_broken(
        server: Server) -> None:
    before = served_serial(server)
    assert before == server.cert.serial
    renewed = server.ca.server("renewed")
    shutil.copyfile(renewed.cert, server.cert.cert)
    shutil.copyfile(renewed.key, server.cert.key)
    mark = len(server.log_text())
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log("TLS certificate reloaded", start=mark)
    assert served_serial(server) == renewed.serial
    # A broken certificate: logged, and the renewed one stays in use.
    server.cert.cert.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    mark = len(server.log_text())
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log("TLS certificate not reloaded", start=mark)
    assert "http.tls.cert_file" in server.log_text()[mark:]
    assert served_serial(server) == renewed.serial
    assert server.proc.poll() is None
