"""A minimal third-party pxestack extension, in one file.

It counts the boot steps pxestack records, serves the counts as JSON at ``/boot-counts/``
and logs every enrolment.  To use it, install it with an entry point in the
``pxestack.extensions`` group, for example in its own ``pyproject.toml``::

    [project]
    name = "pxestack-boot-counts"
    version = "1.0"
    dependencies = ["pxestack"]

    [project.entry-points."pxestack.extensions"]
    boot-counts = "minimal_extension:BootCounts"

then ``pip install .``, check that ``pxestack extensions list`` shows ``boot-counts``, and
enable it in the configuration file::

    extensions:
      - use: boot-counts
        config: {greeting: "hello"}

A mistake in ``config`` is reported like any other configuration error, by key path
(``extensions[0].config.greeting: 5 is not a string``), and ``pxestack serve`` exits with
status 2.  docs/extensions.md describes the whole API.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from twisted.web.resource import Resource

from pxestack.bootevents import BootEvent
from pxestack.extensions import ConfigSection, Extension, ExtensionContext


class CountsResource(Resource):
    """``GET /boot-counts/``: the number of recorded steps per phase."""

    isLeaf = True

    def __init__(self, greeting: str, counts: Counter[str]) -> None:
        super().__init__()
        self.greeting = greeting
        self.counts = counts

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"greeting": self.greeting, "steps": dict(self.counts)}).encode()


class BootCounts(Extension):
    """Counts boot steps by phase and serves them at ``/boot-counts/``."""

    description = "counts boot steps by phase (an example)"

    def read_config(self, section: ConfigSection) -> str:
        # The project's configuration reader: each getter records a problem named by its
        # key path and returns the default; unknown keys are reported afterwards.
        greeting: str = section.str("greeting", "hello")
        return greeting

    def setup(self, context: ExtensionContext, config: str) -> None:
        counts: Counter[str] = Counter()

        def on_event(event: BootEvent) -> None:  # called in the reactor thread
            counts[event.phase] += 1
            if event.phase == "enrolled":
                context.log.info("{greeting}, {serial}", greeting=config, serial=event.serial)

        context.subscribe(on_event)
        context.add_http_child(b"boot-counts", CountsResource(config, counts))
