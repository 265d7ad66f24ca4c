"""100 simultaneous first contacts over real HTTP on loopback never over-fill a profile.
The store work runs in the service's thread pool, as in production."""

from __future__ import annotations

import pytest_twisted
import treq
from provision_helpers import BASE_URL, provision_config
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from pxestack.provision import assign
from pxestack.provision.api import ProvisioningApi
from pxestack.provision.provisioner import Provisioner, callback_key
from pxestack.provision.store import FileHostStore


@pytest_twisted.inlineCallbacks
def test_hundred_concurrent_http_first_contacts(tmp_path):
    cluster = tmp_path / "cluster"
    config = provision_config(
        cluster, profiles=[{"name": "core", "quantity": 3}, {"name": "worker", "quantity": 5}]
    )
    store = FileHostStore(cluster)
    provisioner = Provisioner(config, store, base_url=BASE_URL, key=callback_key(cluster))
    pool = ThreadPool(minthreads=4, maxthreads=4, name="test-provision")
    pool.start()
    api = ProvisioningApi(
        provisioner, admin_token=None, run=lambda work: deferToThreadPool(reactor, pool, work)
    )
    port = reactor.listenTCP(0, Site(api.root()), interface="127.0.0.1")
    connections = HTTPConnectionPool(reactor)
    connections.maxPersistentPerHost = 100
    agent = Agent(reactor, pool=connections)
    base = f"http://127.0.0.1:{port.getHost().port}".encode()
    try:

        def contact(index):
            d = agent.request(b"GET", base + b"/first-stage-script/sn-%03d" % index)
            d.addCallback(
                lambda response: treq.content(response).addCallback(
                    lambda body: (response.code, body)
                )
            )
            return d

        results = yield defer.gatherResults([contact(i) for i in range(100)], consumeErrors=True)
    finally:
        yield port.stopListening()
        yield connections.closeCachedConnections()
        pool.stop()
    assert [code for code, _ in results] == [200] * 100
    hosts = store.hosts()
    counts = assign.profile_counts(hosts)
    assert (counts["core"], counts["worker"], counts["default"]) == (3, 5, 92)
    assert len({h.internal_addr for h in hosts}) == 100
