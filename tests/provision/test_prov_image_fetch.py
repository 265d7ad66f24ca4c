"""``POST /admin/images/fetch`` and ``GET /admin/images``: release fetches in the server,
progress on ``/admin/events``.  Downloads come from :mod:`vendor_mirror` on 127.0.0.1."""

from __future__ import annotations

import pytest
from provision_helpers import ADMIN_TOKEN, make_rig
from vendor_mirror import FCOS_FILES, FCOS_VERSION, Mirror

from pxestack.bootevents import IMAGE_PHASE, BootEventRecorder
from pxestack.http.events import EventFeed, sse_message
from pxestack.provision.imagefetch import ImageFetches
from pxestack.provision.images import ImageStore


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def mirror():
    served = Mirror()
    server, thread = served.serve()
    served.add_fcos()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def rig_with_fetches(tmp_path, run=None):
    rig = make_rig(tmp_path / "cluster")
    recorder = BootEventRecorder(backlog=50, image_backlog=100)
    rig.api.events = recorder
    rig.api.event_feed = EventFeed(recorder)
    deferred = []

    def later(work):  # a runner that holds the work (a fetch "in progress")
        deferred.append(work)

    store = ImageStore(tmp_path / "images")
    rig.api.image_fetches = ImageFetches(store, run or (lambda work: work()),
                                         report=rig.api.image_step, interval=0.0)
    return rig, recorder, store, later, deferred


def test_fetch_from_the_api_and_its_progress_on_the_event_feed(tmp_path, mirror):
    rig, recorder, store, _later, _held = rig_with_fetches(tmp_path)
    body = {"os": "fcos", "stream": "stable", "base_url": mirror.base}
    assert rig.client.request("POST", "/admin/images/fetch", body).code == 401
    answer = rig.client.request("POST", "/admin/images/fetch", body, token=ADMIN_TOKEN)
    assert answer.code == 202, answer.body
    assert answer.json()["os"] == "fcos"
    assert (store.root / "fcos" / FCOS_VERSION / "rootfs.img").read_bytes() == FCOS_FILES[
        "rootfs"]
    listing = rig.client.request("GET", "/admin/images", token=ADMIN_TOKEN).json()
    assert listing["fetches"] == []
    assert listing["recent"][0]["phase"] == "done"
    assert [(v["os"], v["version"]) for v in listing["versions"]] == [("fcos", FCOS_VERSION)]
    steps = rig.client.request("GET", "/admin/events", token=ADMIN_TOKEN).json()
    kinds = [s["detail"] for s in steps if s["phase"] == IMAGE_PHASE]
    assert kinds[0] == "started" and kinds[-1] == "done"
    assert steps[-1]["image"]["version"] == FCOS_VERSION
    assert b"event: image" in sse_message(recorder.since(0)[-1])


def test_one_fetch_at_a_time_per_os_and_version(tmp_path, mirror):
    rig, _recorder, _store, later, held = rig_with_fetches(tmp_path)
    rig.api.image_fetches.run = later
    body = {"os": "fcos", "stream": "stable", "base_url": mirror.base}
    assert rig.client.request("POST", "/admin/images/fetch", body, token=ADMIN_TOKEN).code == 202
    second = rig.client.request("POST", "/admin/images/fetch", body, token=ADMIN_TOKEN)
    assert second.code == 409 and b"running already" in second.body
    listing = rig.client.request("GET", "/admin/images", token=ADMIN_TOKEN).json()
    assert [f["os"] for f in listing["fetches"]] == ["fcos"]
    other = {"os": "fcos", "stream": "testing", "base_url": mirror.base}
    assert rig.client.request("POST", "/admin/images/fetch", other, token=ADMIN_TOKEN).code == 202
    third = {"os": "fcos", "stream": "next", "base_url": mirror.base}
    assert rig.client.request("POST", "/admin/images/fetch", third, token=ADMIN_TOKEN).code == 503
    held[0]()  # the first finishes: it can be started again
    assert rig.client.request("POST", "/admin/images/fetch", body, token=ADMIN_TOKEN).code == 202


@pytest.mark.parametrize(("body", "field"), [
    ({"os": "windows"}, "os"),
    ({"os": "fcos", "channel": "stable"}, "channel"),
    ({"os": "debian"}, "release"),
    ({"os": "fcos", "stream": 7}, "stream"),
    ({"os": "fcos", "url": "x"}, "url"),
    ({"os": "flatcar"}, "keyring"),
])
def test_bad_bodies_name_the_field(tmp_path, body, field):
    rig, *_ = rig_with_fetches(tmp_path)
    answer = rig.client.request("POST", "/admin/images/fetch", body, token=ADMIN_TOKEN)
    assert answer.code == 400
    assert field in answer.body.decode()


def test_without_an_image_cache_the_endpoints_are_404(tmp_path):
    rig = make_rig(tmp_path / "cluster")
    assert rig.client.request("GET", "/admin/images", token=ADMIN_TOKEN).code == 404
    assert rig.client.request("POST", "/admin/images/fetch", {"os": "fcos"},
                              token=ADMIN_TOKEN).code == 404


def test_image_steps_keep_the_recorders_bounds():
    recorder = BootEventRecorder(backlog=10, image_backlog=3)
    recorder.record("script", 1.0, serial="abc", mac="52:54:00:00:00:01")
    for i in range(20):
        recorder.record_image(2.0 + i, "progress", {"os": "fcos", "total_done": i})
    recorder.record("kernel", 30.0, serial="abc")
    kept = recorder.since(0)
    assert [e.phase for e in kept] == ["script", *[IMAGE_PHASE] * 3, "kernel"]
    assert [e.seq for e in kept] == sorted(e.seq for e in kept)
    assert recorder.current()["abc"].phase == "kernel"  # not a machine
    storm = recorder.storm(buckets=4)
    assert IMAGE_PHASE not in storm["counts"]
