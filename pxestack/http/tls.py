"""TLS for the HTTP service: a server certificate that can be replaced while serving.

:class:`ServerTls` is what :class:`twisted.protocols.tls.TLSMemoryBIOFactory` asks for a
new server-side connection (``IOpenSSLServerConnectionCreator``).  It holds one
``CertificateOptions`` built from PEM files; :meth:`ServerTls.reload` builds a new one
from the same files (the service calls it on SIGHUP) and swaps it in only when the new
files load, so a broken certificate never takes the service down: connections already
open keep the context they started with, new connections get the new one.

With a client CA, clients are asked for a certificate but not required to send one; a
certificate that is sent must verify against that CA, or the handshake fails.
:func:`peer_subject` gives the verified subject of a request's client certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()


class TlsLoadError(Exception):
    """The certificate, key or client CA cannot be used; ``key`` names the file's role."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    """What was loaded: the serving context and a description of the certificate."""

    options: CertificateOptions
    serial: int
    subject: str
    not_after: str


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsLoadError(key, f"{path}: {exc.strerror or exc}") from None


def _certificates(path: Path, key: str) -> list[x509.Certificate]:
    try:
        found = x509.load_pem_x509_certificates(_read(path, key))
    except ValueError as exc:
        raise TlsLoadError(key, f"{path} is not a PEM certificate file: {exc}") from None
    return found


def load_certificate(
    cert_file: Path, key_file: Path, client_ca_file: Path | None = None
) -> LoadedCertificate:
    """Build the serving context from PEM files; :class:`TlsLoadError` names what failed.

    *cert_file* holds the certificate, then any intermediate certificates.
    """
    chain = _certificates(cert_file, "cert_file")
    try:
        key: Any = serialization.load_pem_private_key(_read(key_file, "key_file"),
                                                      password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise TlsLoadError("key_file", f"{key_file} is not an unencrypted PEM private key: "
                           f"{exc}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    leaf = chain[0]
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise TlsLoadError("key_file", f"{key_file} is not the key of the certificate in "
                           f"{cert_file}")
    extra: dict[str, Any] = {}
    if client_ca_file is not None:
        cas = _certificates(client_ca_file, "client_ca_file")
        extra = {
            "verify": True,
            "requireCertificate": False,  # asked for, not required: tokens still work
            "caCerts": [crypto.X509.from_cryptography(ca) for ca in cas],
        }
    try:
        options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key),
            certificate=crypto.X509.from_cryptography(leaf),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
            # Clients that offer ALPN (curl offers h2 first) must find a protocol in
            # common: without one the handshake fails with an internal-error alert.
            acceptableProtocols=[b"http/1.1"],
            **extra,
        )
        options.getContext()  # fail here, not on the first connection
    except (SSL.Error, ValueError, TypeError) as exc:
        raise TlsLoadError("cert_file", f"{cert_file} cannot be served: {exc}") from None
    return LoadedCertificate(
        options=options,
        serial=leaf.serial_number,
        subject=leaf.subject.rfc4514_string(),
        not_after=leaf.not_valid_after_utc.isoformat(),
    )


@implementer(IOpenSSLServerConnectionCreator)
class ServerTls:
    """The server side of TLS, with a certificate that :meth:`reload` can replace."""

    def __init__(self, cert_file: Path, key_file: Path,
                 client_ca_file: Path | None = None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self.current = load_certificate(cert_file, key_file, client_ca_file)

    @property
    def client_certificates(self) -> bool:
        """Whether clients are asked for a certificate."""
        return self.client_ca_file is not None

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N803
        """A connection with the context of the certificate loaded last (built by Twisted,
        which also sets up ALPN for it)."""
        connection: SSL.Connection = self.current.options.serverConnectionForTLS(tlsProtocol)
        return connection

    def reload(self) -> bool:
        """Load the files again; keep the old certificate (and log why) when that fails."""
        try:
            loaded = load_certificate(self.cert_file, self.key_file, self.client_ca_file)
        except TlsLoadError as exc:
            log.error("TLS certificate not reloaded, still serving serial {serial:x}: "
                      "http.tls.{key}: {error}",
                      serial=self.current.serial, key=exc.key, error=exc.message)
            return False
        old, self.current = self.current, loaded
        log.info("TLS certificate reloaded from {path}: serial {old:x} -> {new:x}, "
                 "subject {subject}, valid until {until}; new connections use it",
                 path=str(self.cert_file), old=old.serial, new=loaded.serial,
                 subject=loaded.subject, until=loaded.not_after)
        return True


def peer_subject(transport: object) -> str | None:
    """The subject (RFC 4514) of the client certificate on *transport*, or None.

    Only certificates that verified during the handshake are there at all: without a
    client CA none is asked for, and one that does not verify fails the handshake.
    """
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        certificate = get()
    except (SSL.Error, AttributeError):
        return None
    if certificate is None:
        return None
    subject: str = certificate.to_cryptography().subject.rfc4514_string()
    return subject


__all__ = ["LoadedCertificate", "ServerTls", "TlsLoadError", "load_certificate", "peer_subject"]
