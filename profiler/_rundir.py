"""Run folders and per-rank run metadata: run ids, reserving `<out_dir>/<run_id>`, metadata.json."""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import Any

__all__ = ["new_run_id", "reserve_run_dir", "write_metadata_file"]


def new_run_id() -> str:
    """A fresh run id: UTC-free local timestamp plus 6 random hex digits."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def reserve_run_dir(out_dir: str, run_id: str, named: bool) -> str:
    """Claim `<out_dir>/<run_id>` (adding -2, -3, ... to a reused run name) by creating it."""
    os.makedirs(out_dir, exist_ok=True)
    candidate, k = run_id, 1
    while True:
        try:
            os.mkdir(os.path.join(out_dir, candidate))
            return candidate
        except FileExistsError:
            if not named and k > 100:
                raise
            k += 1
            candidate = f"{run_id}-{k}"


def write_metadata_file(rank_dir: str, pid: int, meta: dict[str, Any]) -> str:
    """Write `rank_dir/metadata.json` atomically (temp file, then rename); returns its path."""
    os.makedirs(rank_dir, exist_ok=True)
    path = os.path.join(rank_dir, "metadata.json")
    tmp = os.path.join(rank_dir, f".metadata-{pid}.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(meta, fh, indent=1, default=str)
    os.replace(tmp, path)
    return path
