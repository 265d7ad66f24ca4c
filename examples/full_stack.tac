"""The whole pxestack (DHCP + TFTP + HTTP + provisioning) as a twistd application file.

    twistd -n -y examples/full_stack.tac                      # foreground, as root
    PXESTACK_CONFIG=/etc/pxestack.yaml twistd -n -y examples/full_stack.tac
    twistd -n --uid nobody --gid nogroup -y examples/full_stack.tac   # drop root after binding

The configuration is ``$PXESTACK_CONFIG``, else ``full_stack.yaml`` beside this file.  The
service tree is the one ``pxestack serve`` and ``twistd pxestack`` run: every service binds
its privileged port in ``privilegedStartService``, before twistd drops root.  A configuration
with mistakes stops twistd with every problem and its key path.
"""

import os
from pathlib import Path

from twisted.application import service

from pxestack.app import build_root_service
from pxestack.config import load_config_file

# twistd executes this file with exec(): __file__ is set to the .tac's path.
_here = Path(__file__).resolve().parent
config = load_config_file(os.environ.get("PXESTACK_CONFIG") or _here / "full_stack.yaml")

application = service.Application("pxestack")
build_root_service(config).setServiceParent(application)
