"""``python -m fastxai``: the command line (see ``fastxai.cli``)."""

from __future__ import annotations

import sys

from fastxai.cli import main

if __name__ == "__main__":
    sys.exit(main())
