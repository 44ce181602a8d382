"""Zero-downtime, crash-safe release deploys by atomic symlink switch.

The public names are imported on first use (PEP 562), so ``atomic-deploy status`` does not pay
for the deploy machinery it never runs.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs more than `atomic-deploy status` itself
if TYPE_CHECKING:
    from typing import Any

_EXPORTS = {
    "__version__": "_version",
    "AtomicDeployError": "errors",
    "CheckFailed": "errors",
    "InterruptedBySignal": "errors",
    "InvalidInput": "errors",
    "LockHeld": "errors",
    "OperationFailed": "errors",
    "ActivateResult": "operations",
    "AdoptResult": "operations",
    "DeployOptions": "operations",
    "DeployResult": "operations",
    "PruneResult": "operations",
    "activate": "operations",
    "adopt": "operations",
    "deploy": "operations",
    "prepare": "operations",
    "prune": "operations",
    "rollback": "operations",
    "ReleaseInfo": "query",
    "Status": "query",
    "list_releases": "query",
    "status": "query",
}

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

if TYPE_CHECKING:
    from ._version import __version__
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'atomic_deploy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
