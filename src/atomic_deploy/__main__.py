from __future__ import annotations

from ._fastcli import run

if __name__ == "__main__":
    run()
