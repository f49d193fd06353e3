"""``ledger view``: a read-only local web page over a runs directory (starlette + uvicorn).

Plain HTML, CSS and JavaScript in ``viewer/static``, served by the package; no build step.
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
