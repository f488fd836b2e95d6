"""Quiet by default: the command line prints rerankit's own lines and progress bars, not the
load reports, deprecation notices and debug lines of the libraries under it.

``rerankit -v`` (or ``RERANKIT_LOG=debug``) leaves them all on.
"""

from __future__ import annotations

import logging
import os
import warnings

# Loggers of libraries whose notices do not concern a user of rerankit (bitsandbytes' kernel
# lookup when offline, bm25s' debug lines, transformers' load reports of the new score head).
NOISY_LOGGERS = ("bitsandbytes", "kernels", "bm25s", "transformers", "huggingface_hub", "peft", "accelerate")


def verbose_requested(flag: bool) -> bool:
    return flag or os.environ.get("RERANKIT_LOG", "").strip().lower() == "debug"


class _ErrorsOnlyFromLibraries(logging.Filter):
    """Drops records below ERROR from the noisy libraries, whatever level they set themselves
    (bm25s sets its own logger to DEBUG when imported)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.split(".")[0] not in NOISY_LOGGERS


def quiet_third_parties() -> None:
    """Errors only from the libraries rerankit drives; their deprecation warnings off; the
    weight-loading bars of transformers off (training's own progress bars stay)."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ErrorsOnlyFromLibraries())
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
