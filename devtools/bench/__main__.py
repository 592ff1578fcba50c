"""``python -m devtools.bench [options]``: the bench without the CLI (and the RSS peer child)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
