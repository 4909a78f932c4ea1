"""Fake upstreams speaking every provider's real wire format, with fault injection.

See :mod:`.app` for the paths and the control API, :mod:`.faults` for the faults, and
``docs/providers.md`` for how to use them.
"""

from .app import SandboxApp
from .faults import Fault
from .server import SandboxServer
from .wire import INVALID_KEY_PREFIX

__all__ = ["INVALID_KEY_PREFIX", "Fault", "SandboxApp", "SandboxServer"]
