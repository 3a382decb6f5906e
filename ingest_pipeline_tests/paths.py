"""Where the test data is: the real captures kept in the repository (``data/``)."""

from pathlib import Path

from ingest_pipeline.capture_loader import CAPTURES_DIR as CAPTURES

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["CAPTURES", "ROOT"]
