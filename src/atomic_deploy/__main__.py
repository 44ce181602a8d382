from __future__ import annotations

import sys

from ._fastcli import main

if __name__ == "__main__":
    sys.exit(main())
