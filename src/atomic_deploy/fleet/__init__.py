"""Fleets: one release to many remote roots, prepared everywhere, then switched everywhere,
all-or-nothing ([docs/fleet.md]). Built on the remote package's session protocol."""

from ._deploy import (
    EXIT_MIXED,
    FleetOptions,
    FleetResult,
    HostOutcome,
    deploy_fleet,
    host_line,
    with_unchanged,
)
from ._hosts import check_distinct, named_fleet, read_hosts

__all__ = ["EXIT_MIXED", "FleetOptions", "FleetResult", "HostOutcome", "check_distinct",
           "deploy_fleet", "host_line", "named_fleet", "read_hosts", "with_unchanged"]
