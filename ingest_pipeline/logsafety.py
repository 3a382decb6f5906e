"""Defence in depth for logs: secrets from the environment never appear in a log line.

The project never logs credentials itself; this guards against a library that would (botocore
at DEBUG logs request headers) and against a secret pasted into a URL or an error message.
"""

from __future__ import annotations

import logging
import os

SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
# Libraries whose DEBUG output includes request headers (and so signatures and key ids).
CHATTY_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")
MASK = "***"


class RedactSecrets(logging.Filter):
    """Replaces every known secret value in a record's final message with ``***``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        # Short values would mask innocent text; real keys are 16+ characters.
        self._secrets = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self._secrets:
            redacted = redacted.replace(secret, MASK)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure_logging(level: str) -> None:
    """Root logging for the CLI: the given level, quiet libraries, secrets redacted."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.getLogger().level, logging.INFO))
    # Dagster's storage migrations log every step at INFO; a user needs none of it.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    redact = RedactSecrets([os.environ.get(v, "") for v in SECRET_VARIABLES])
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
