"""ASGI entry point for ``uvicorn medannot.server.asgi:app``; settings come from the environment."""

from medannot.server.app import create_app
from medannot.server.config import resolve_settings

app = create_app(resolve_settings())
