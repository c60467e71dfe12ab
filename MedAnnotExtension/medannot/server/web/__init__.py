"""The lab dashboard: server-rendered pages (Jinja2 templates, one local stylesheet, no script) served by the
task server at ``/``, signed in with the same accounts, throttling and audit as the API."""

from medannot.server.web.pages import install_dashboard

__all__ = ["install_dashboard"]
