"""The TFTP service: the ``tftp:`` section turned into a listening :class:`TftpServer`.

:func:`build_tftp_services` is what :func:`pxestack.service.build_service` calls.  The
content source is the filesystem root from the config unless a higher layer (provisioning,
an embedder) passes its own :class:`~pxestack.tftp.source.FileSource` in
:class:`~pxestack.service.Extensions`.
"""

from __future__ import annotations

import resource
import socket
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.logger import Logger

from pxestack.config import Config
from pxestack.config.tftp import TftpConfig
from pxestack.errors import ApiMisuse
from pxestack.service.limits import DESCRIPTOR_RESERVE, raise_open_file_limit
from pxestack.service.ports import UdpPortService
from pxestack.tftp.negotiate import NegotiationLimits
from pxestack.tftp.protocol import DESCRIPTORS_PER_CONNECTED_TRANSFER, TftpServer
from pxestack.tftp.session import SessionSettings
from pxestack.tftp.source import FileSource, FilesystemSource, UploadDirectory
from pxestack.tftp.stats import SessionStats

log = Logger()

def ensure_transfer_descriptors(max_transfers: int) -> bool:
    """Raise the soft ``RLIMIT_NOFILE`` so *max_transfers* connected transfers fit.

    A connected transfer holds :data:`~pxestack.tftp.protocol.DESCRIPTORS_PER_CONNECTED_TRANSFER`
    descriptors (its socket, the foreign-TID sibling, the file); 512 transfers pass the
    usual soft limit of 1024 (:func:`~pxestack.service.limits.raise_open_file_limit`).
    ``False`` when the hard limit cannot hold them: the caller then serves from
    unconnected sockets (one descriptor less per transfer).
    """
    needed = max_transfers * DESCRIPTORS_PER_CONNECTED_TRANSFER + DESCRIPTOR_RESERVE
    soft = raise_open_file_limit(needed, partial=False)
    return soft == resource.RLIM_INFINITY or soft >= needed


class TftpService(UdpPortService):
    """The TFTP listener port plus its :class:`TftpServer`; stopping cancels transfers.

    :ivar server: the controller (its ``stats`` hold the server counters).
    """

    def __init__(self, server: TftpServer, listen: tuple[str, int], *,
                 reactor: Any = None, reuse_port: bool = False) -> None:
        super().__init__(listen[1], server.listener(), listen[0], reactor=reactor)
        self.server = server
        #: Bind with SO_REUSEPORT, so several processes can share the port and the
        #: kernel spreads clients over them by address hash.
        self.reuse_port = reuse_port
        #: Serve this already bound socket instead of binding one (a worker process's
        #: socket, bound by :class:`~pxestack.service.tftp_workers.TftpWorkerPool`).
        self.adopt_fd: int | None = None
        self.setName("tftp")

    def privilegedStartService(self) -> None:
        """Bind the port; with :attr:`reuse_port`, through an adopted SO_REUSEPORT socket.

        Also raises the open-file limit for connected transfers while still privileged,
        or turns them off (once, with a warning) when it cannot
        (:func:`ensure_transfer_descriptors`).
        """
        self._budget_descriptors()
        if self.port is not None or not (self.reuse_port or self.adopt_fd is not None):
            super().privilegedStartService()
            return
        if self.adopt_fd is not None:
            sock = socket.socket(fileno=self.adopt_fd)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if self.adopt_fd is None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((self.interface, self.port_number))
            sock.setblocking(False)
            self.port = self.reactor.adoptDatagramPort(sock.fileno(), socket.AF_INET,
                                                       self.protocol)
        finally:
            sock.close()  # adoptDatagramPort dup()s the descriptor
        service.Service.privilegedStartService(self)

    def _budget_descriptors(self) -> None:
        """Make room for connected transfers, or fall back to unconnected sockets."""
        server = self.server
        if not server.connected or server.single_port:
            return
        if not ensure_transfer_descriptors(server.max_transfers):
            server.connected = False
            log.warn("open-file limit too low for {transfers} connected TFTP transfers; "
                     "serving from unconnected sockets", transfers=server.max_transfers)

    def stopService(self) -> Any:
        """Cancel running transfers (clients get an ERROR), then close the port."""
        self.server.stop()
        return super().stopService()


def session_settings(tftp: TftpConfig) -> SessionSettings:
    """The sans-IO session tunables the ``tftp:`` section describes."""
    return SessionSettings(
        limits=NegotiationLimits(
            max_blksize=tftp.max_blksize,
            max_windowsize=tftp.max_windowsize,
            allow_blksize=tftp.blksize_option,
            allow_windowsize=tftp.windowsize_option,
        ),
        max_retries=tftp.retries,
        deadline=tftp.deadline,
        initial_rto=tftp.initial_rto,
        min_rto=tftp.min_rto,
        max_rto=tftp.max_rto,
    )


def record_tftp_steps(server: Any, events: Any,
                      mac_of: Callable[[str], bytes | None] | None) -> None:
    """Report every finished transfer of *server* (a :class:`TftpServer`, or the worker
    pool, which relays its workers' transfers) to *events* (a
    :class:`~pxestack.bootevents.BootEventRecorder`), composed with its ``on_stats``.

    A transfer is a step of the machine whose DHCP lease holds the client's address
    (*mac_of*, the DHCP service's lease lookup); without one it is not recorded.
    """
    previous = server.on_stats

    def on_stats(stats: SessionStats) -> None:
        if previous is not None:
            previous(stats)
        if mac_of is None:
            return
        try:
            host = str(stats.client[0])
            mac = mac_of(host)
            if mac is not None:
                outcome = getattr(stats.outcome, "value", stats.outcome)
                events.record("tftp", stats.finished, mac=mac, ip=host,
                              duration=max(0.0, stats.finished - stats.started),
                              detail=f"{stats.path} {outcome}")
        except Exception:
            log.failure("recording a TFTP boot step failed")

    server.on_stats = on_stats


def build_tftp_services(
    config: Config, ext: Any, *, reactor: Any = None,
    mac_of: Callable[[str], bytes | None] | None = None,
) -> list[service.IService]:
    """The TFTP service for *config*; *ext* is a :class:`pxestack.service.Extensions`.

    *mac_of* finds the machine behind a client address (the DHCP service's leases) for
    the boot steps reported to ``ext.events``.

    ``ext.tftp_source`` replaces the filesystem root when set.  The root (and the upload
    directory, when configured) is created if missing.  With ``tftp.workers`` above 1
    (and ``ext.tftp_in_reactor`` false) the service is a
    :class:`~pxestack.service.tftp_workers.TftpWorkerPool`; otherwise a :class:`TftpService`
    in this process's reactor.
    """
    tftp = config.tftp
    if tftp is None:
        raise ApiMisuse("build_tftp_services needs a config with a tftp section")
    source: FileSource | None = getattr(ext, "tftp_source", None)
    metrics = getattr(ext, "metrics", None)
    if tftp.workers > 1 and not getattr(ext, "tftp_in_reactor", False):
        from pxestack.service.tftp_workers import TftpWorkerPool

        if source is None:
            tftp.root.mkdir(parents=True, exist_ok=True)
        if tftp.upload_dir is not None:
            tftp.upload_dir.mkdir(parents=True, exist_ok=True)
        pool = TftpWorkerPool(config, source=source, reactor=reactor)
        if metrics is not None:
            metrics.attach_tftp_server(pool)
        events = getattr(ext, "events", None)
        if events is not None:
            # The workers report each finished transfer to the pool (once a second).
            record_tftp_steps(pool, events, mac_of)
        return [pool]
    if source is None:
        tftp.root.mkdir(parents=True, exist_ok=True)
        source = FilesystemSource(tftp.root, lowercase=tftp.lowercase)
    upload = None
    if tftp.upload_dir is not None:
        tftp.upload_dir.mkdir(parents=True, exist_ok=True)
        upload = UploadDirectory(tftp.upload_dir)
    server = TftpServer(
        source,
        settings=session_settings(tftp),
        upload=upload,
        single_port=tftp.single_port,
        per_client_limit=tftp.per_client_limit,
        max_transfers=tftp.max_transfers,
        transfer_host=tftp.listen[0],
        reactor=reactor,
    )
    if metrics is not None:
        metrics.attach_tftp_server(server)
    events = getattr(ext, "events", None)
    if events is not None:
        record_tftp_steps(server, events, mac_of)
    return [TftpService(server, tftp.listen, reactor=reactor)]


__all__ = [
    "TftpService",
    "build_tftp_services",
    "ensure_transfer_descriptors",
    "record_tftp_steps",
    "session_settings",
]
