"""Local stand-ins for what the product talks to in production, for demos, development and tests:
``simulator`` (Binance's REST, WebSocket and archive), ``moto_server`` (S3 and Kinesis) and
``faultproxy`` (throttling, 5xx and outages in front of an AWS endpoint).

None of it ships in a production image: their own dependencies come with the ``[standins]``
extra, and the product imports this package only from the commands that start a stand-in.
The simulator imports nothing else from ``ingest_pipeline`` (checked by ``make lint``), so a bug
in our client or normalizers cannot hide itself on both sides of the wire.
"""

from __future__ import annotations

import importlib.util

EXTRA = "standins"


class StandinsMissing(RuntimeError):
    """A stand-in's dependency is not installed: the ``[standins]`` extra is missing."""


def require(module: str) -> None:
    """Raise ``StandinsMissing`` naming the extra when ``module`` is not importable."""
    if importlib.util.find_spec(module) is None:
        raise StandinsMissing(
            f"the local stand-ins need {module!r}, which comes with the [{EXTRA}] extra: "
            f"pip install 'ingest_pipeline[{EXTRA}]'"
        )
