"""Remote roots: a ROOT on another machine, reached with the system's OpenSSH client.

Layers, bottom-up: ``_address`` (what names a remote root), ``_bootstrap`` and ``_ship`` (the
tool the host runs, uploaded when it lacks it), ``_ssh`` (the connection), ``_session`` (the
host's end of a deploy: the protocol), ``_client`` (this machine's end, and the transfer).
"""

from ._address import RemoteRoot, parse_root

__all__ = ["RemoteRoot", "parse_root"]
