"""Under TLS the asset server must not use sendfile (bytes must be encrypted in user space):
a real HTTPS server on 127.0.0.1 serves byte-exact bodies through the copy path."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import require
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SERVER = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor, ssl
    from pxestack.http.site import build_site

    root, key, cert = sys.argv[1:4]
    context = ssl.DefaultOpenSSLContextFactory(key, cert)
    port = reactor.listenSSL(0, build_site(root), context, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()
    """
)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throw-away key and certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_tls_downloads_use_the_copy_path(tmp_path: Path) -> None:
    require(shutil.which("curl") is not None, "needs curl")
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(3 * 1024 * 1024 + 17)
    (root / "initrd").write_bytes(data)
    key, cert = self_signed(tmp_path)
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    server = subprocess.Popen([sys.executable, str(script), str(root), str(key), str(cert)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline() or b"0")
        assert port, server.stderr.read() if server.stderr else ""
        base = f"https://127.0.0.1:{port}"
        outputs = [tmp_path / f"out{i}" for i in range(3)]
        clients = [subprocess.Popen(["curl", "--silent", "--fail", "--insecure", "--max-time",
                                     "60", "-o", str(out), f"{base}/assets/initrd"])
                   for out in outputs]
        assert [client.wait(timeout=90) for client in clients] == [0, 0, 0]
        for out in outputs:
            assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
        ranged = subprocess.run(["curl", "--silent", "--insecure", "-r", "-100",
                                 f"{base}/initrd"], capture_output=True, timeout=30, check=False)
        assert ranged.stdout == data[-100:]
        status = subprocess.run(["curl", "--silent", "--insecure", f"{base}/healthz?format=json"],
                                capture_output=True, timeout=30, check=True)
        totals = json.loads(status.stdout)["totals"]
        assert totals["sendfile_bytes"] == 0
        assert totals["copied_bytes"] == 3 * len(data) + 100
        assert totals["completed"] == 4
    finally:
        server.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if server.poll() is None:
            server.kill()
        server.wait(timeout=5)
