"""Where the shared test data lives: `../shared/testdata` beside the repository (as CI lays it
out), or TEMPERED_SHARED."""

from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(os.environ.get("TEMPERED_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CAPTURES = SHARED / "testdata" / "pxe-clients"

if not CAPTURES.is_dir():
    raise RuntimeError(f"the captured PXE clients are missing at {CAPTURES}: check out shared/ beside the repo")
