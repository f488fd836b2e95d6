"""The one error tree of rerankit.

    RerankitError
    ├── ConfigError       a config file or override is wrong (names the key path)
    ├── DataError         a data file is wrong (names file, line and field)
    ├── ModelLoadError    a model, adapter or run folder cannot be loaded
    └── MissingExtraError an optional dependency is not installed (names the extra)

The CLI turns any of these into a one-line message and exit code 2; nothing is printed
and ignored.
"""

from __future__ import annotations


class RerankitError(Exception):
    """Base class of every error rerankit raises on purpose."""


class ConfigError(RerankitError, ValueError):
    """A config value is missing, unknown or of the wrong type."""


class DataError(RerankitError, ValueError):
    """A data file cannot be used as it is.

    ``path``, ``line`` and ``field`` say where; any of them may be ``None``.
    """

    def __init__(
        self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None
    ) -> None:
        self.path, self.line, self.field = path, line, field
        where = ":".join(str(p) for p in (path, line) if p is not None)
        prefix = f"{where}: " if where else ""
        suffix = f" (field '{field}')" if field else ""
        super().__init__(f"{prefix}{message}{suffix}")


class ModelLoadError(RerankitError, OSError):
    """A model, adapter or run folder is missing, unfinished or unreadable."""


class MissingExtraError(RerankitError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""


def short_reason(exc: BaseException) -> str:
    """``Type: first line of the message`` (or just the type): a reason fit for one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def install_hint(extra: str) -> str:
    """The command that installs an extra, as every missing-extra message gives it."""
    return f'pip install "rerankit[{extra}]"'


def require(module: str, extra: str):
    """Import an optional dependency, or raise MissingExtraError: one line naming the module
    and the command that installs the extra it comes with."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:  # the module, or one it imports (a partial install)
        missing = (exc.name or module).partition(".")[0]
        raise MissingExtraError(
            f"{missing} is not installed; it comes with rerankit[{extra}]: {install_hint(extra)}"
        ) from None
