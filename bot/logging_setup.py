"""Masks every configured secret in every log record, whoever logs it (our code or an SDK)."""

from __future__ import annotations

import logging

from bot.config import Settings

MASK = "***"


class SecretMaskingFilter(logging.Filter):
    def __init__(self, secrets: list[str]):
        super().__init__()
        # Longest first so that a secret containing another is masked whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def _mask(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True
        masked = self._mask(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._mask(record.exc_text)
        if masked != message or record.args:
            record.msg, record.args = masked, None
        return True


def install_secret_filter(settings: Settings) -> SecretMaskingFilter:
    """Attach the filter to every handler of the root logger (filters on loggers do not see child records)."""
    flt = SecretMaskingFilter(settings.secret_values())
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    for h in root.handlers:
        h.addFilter(flt)
    return flt


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> SecretMaskingFilter:
    """The process's logging: level and format from settings, secrets masked (the CLI, and each
    worker process of `pbxbot serve --workers N`, which starts with no logging set up)."""
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    return install_secret_filter(settings)
