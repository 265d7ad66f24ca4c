"""``python -m pxestack``: the same as the ``pxestack`` command."""

from pxestack.cli import entry_point

entry_point()
