"""rerankit's HTTP service (Litestar), imported as ``rerankit.server``.

    pip install "rerankit[serve]"
    rerankit serve --model outputs/run1 --port 8080

``create_app(ServerSettings(model=...))`` builds the app for tests or other ASGI servers.
"""

from rerankit.errors import require

require("litestar", "serve")

from rerankit.server.app import create_app  # noqa: E402
from rerankit.server.settings import ServerSettings  # noqa: E402

__all__ = ["ServerSettings", "create_app"]
