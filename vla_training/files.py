"""Files written whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write JSON atomically (a temporary file renamed into place: never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)
