"""Zero-downtime, crash-safe release deploys by atomic symlink switch."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    AtomicDeployError,
    CheckFailed,
    InterruptedBySignal,
    InvalidInput,
    LockHeld,
    OperationFailed,
)
from .operations import (
    ActivateResult,
    AdoptResult,
    DeployOptions,
    DeployResult,
    PruneResult,
    activate,
    adopt,
    deploy,
    prepare,
    prune,
    rollback,
)
from .query import ReleaseInfo, Status, list_releases, status

__all__ = [
    "ActivateResult",
    "AdoptResult",
    "AtomicDeployError",
    "CheckFailed",
    "DeployOptions",
    "DeployResult",
    "InterruptedBySignal",
    "InvalidInput",
    "LockHeld",
    "OperationFailed",
    "PruneResult",
    "ReleaseInfo",
    "Status",
    "__version__",
    "activate",
    "adopt",
    "deploy",
    "list_releases",
    "prepare",
    "prune",
    "rollback",
    "status",
]
