"""``python -m bidl_runtime.run --grid 3x2``: run a model on the spatio-temporal grid."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("bidl_runtime.run: the grid runtime is not implemented yet (issue 4).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
