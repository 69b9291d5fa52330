"""``python -m dashboards OUT_DIR [DASHBOARDS_PATH]``: write dashboards + provisioning files."""

from __future__ import annotations

import sys
from pathlib import Path

from dashboards.fleet import export_dashboards


def main(argv: list[str]) -> int:
    """Entry point; returns the process exit code."""
    if not 1 <= len(argv) <= 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in export_dashboards(Path(argv[0]), dashboards_path=argv[1] if argv[1:] else None):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
