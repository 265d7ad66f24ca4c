"""A ``task.Clock`` that also keeps IReactorFDSet's reader registry, for adapter tests."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock


class FdReactor(Clock):
    """task.Clock plus the reader registry (``addReader``/``removeReader``) adapters use."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)
