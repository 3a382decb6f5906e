"""The project's Definitions, from the settings of the environment (``INGEST_ENV``)."""

from ingest_pipeline.defs.build import build_definitions
from ingest_pipeline.settings import load_settings

settings = load_settings()
defs = build_definitions(settings)
