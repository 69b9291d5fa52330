"""How a benchmark ends: the machine it ran on, and its JSON results file."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["machine", "write_results"]


def machine(load_before: float, **versions: str) -> dict[str, Any]:
    """The 1-minute load before and now, the Python (and any ``versions``), the CPUs."""
    return {"loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), **versions, "cpus": os.cpu_count()}


def write_results(path: Path, payload: Mapping[str, Any], console: Console) -> None:
    """Write ``payload`` as indented JSON to ``path`` (parents created) and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {path}")
