"""How many malloc arenas the server process uses (glibc).

glibc gives threads their own malloc arenas, up to eight per CPU.  The server's threads
(the provisioning pool, the reactor) take turns under Python's global lock, so separate
arenas buy no parallelism; they only keep memory apart.  Each git audit commit of a large
cluster allocates buffers of a few hundred KiB (the root tree, one entry per host, written
and compressed), and whichever waiting thread writes the commit leaves such buffers free
in its own arena: a unit run of 64 writer threads over 10 000 hosts grew the peak RSS by
20 MiB with glibc's default and by under 5 MiB with two arenas.  :func:`limit_arenas`
sets the limit with ``mallopt`` before the threads start; the ``MALLOC_ARENA_MAX``
environment variable, when set, wins.
"""

from __future__ import annotations

import ctypes
import os

#: The arenas the server uses (glibc's ``M_ARENA_MAX``).
ARENAS = 2
#: glibc's ``mallopt`` parameter number of ``M_ARENA_MAX``.
_M_ARENA_MAX = -8


def limit_arenas(count: int = ARENAS) -> bool:
    """Limit this process to *count* malloc arenas; ``True`` when set.

    Does nothing (``False``) without glibc's ``mallopt`` or when ``MALLOC_ARENA_MAX`` is
    set in the environment (the operator's choice).  Arenas made before the call stay.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, count))


__all__ = ["ARENAS", "limit_arenas"]
