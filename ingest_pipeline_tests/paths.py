"""Where the shared test data is: ``../shared`` beside the repository (as in CI), or
``$INGEST_SHARED_DIR``."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INGEST_SHARED_DIR", ROOT.parent / "shared"))
CAPTURES = SHARED / "data" / "binance-capture"
