"""Server-side sessions of the dashboard: a random cookie value, a CSRF token, an expiry.

A session is made when the admin token is given to the login form.  The browser only holds
the session's random identifier (cookie ``pxestack_session``: ``HttpOnly``,
``SameSite=Strict``, ``Secure`` over TLS); everything else stays here, in memory, so a
restart logs everybody out.  At most ``max_sessions`` exist (the oldest is dropped for a new
one) and each ends ``lifetime`` seconds after the login.  Every state-changing request must
carry the session's CSRF token (a hidden form field or the ``X-CSRF-Token`` header).

Logs name a session by its ``label``, a short random word that is not the secret.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

#: The cookie that holds the session identifier.
COOKIE = "pxestack_session"
#: Seconds a session lasts after the login.
LIFETIME = 8 * 3600.0
#: Sessions kept at once.
MAX_SESSIONS = 64


@dataclass(slots=True)
class Session:
    """One logged-in browser."""

    id: str
    csrf: str
    label: str
    client: str
    created: float
    expires: float
    #: Who acts through this session: the admin token's name (``admin`` for
    #: ``provision.api.token``), or ``local:<address>`` where no admin credential exists.
    actor: str = "unknown"
    #: A one-time message for the next page (the outcome of an action).
    flash: list[tuple[str, str]] = field(default_factory=list)

    def csrf_ok(self, presented: str | None) -> bool:
        """Whether *presented* is this session's CSRF token (constant time)."""
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8", "replace"), self.csrf.encode()
        )


class SessionStore:
    """The sessions, bounded in number and in time."""

    def __init__(self, *, lifetime: float = LIFETIME, max_sessions: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.time) -> None:
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, client: str, actor: str = "unknown") -> Session:
        """A new session for a login from *client*, acting as *actor*."""
        self._expire()
        now = self.clock()
        session = Session(
            id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32),
            label=secrets.token_hex(3), client=client, created=now,
            expires=now + self.lifetime, actor=actor,
        )
        self._sessions[session.id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this identifier, or None."""
        if not session_id or len(session_id) > 100:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires <= self.clock():
            del self._sessions[session_id]
            return None
        return session

    def end(self, session_id: str) -> None:
        """Log a session out."""
        self._sessions.pop(session_id, None)

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[key]


__all__ = ["COOKIE", "LIFETIME", "MAX_SESSIONS", "Session", "SessionStore"]
