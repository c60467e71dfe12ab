"""Security headers on every response: no caching of API answers (tokens, lease tokens, patient images), no MIME
sniffing, no framing; a Content-Security-Policy on the offline API docs that allows only their own scripts."""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)
ALWAYS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
          (b"referrer-policy", b"no-referrer")]
NO_STORE = (b"cache-control", b"no-store")


def docs_policy(html: bytes) -> bytes:
    """The CSP for a docs page: scripts from this server plus the page's own inline scripts (by their sha256),
    nothing from elsewhere. Swagger UI and ReDoc set inline styles and ReDoc starts a worker from a blob."""
    scripts = " ".join(["'self'", *(f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'"
                                    for body in _INLINE_SCRIPT.findall(html))])
    return (f"default-src 'none'; script-src {scripts}; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
            "worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'").encode()


class SecurityHeaders:
    """Pure ASGI middleware (no buffering except the small docs pages, so file downloads still stream)."""

    def __init__(self, app: ASGIApp, api_prefix: str = "/api/") -> None:
        self.app, self.api_prefix = app, api_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        extra = list(ALWAYS) + ([NO_STORE] if path.startswith(self.api_prefix) else [])
        if path in DOCS_PATHS:
            await self._docs(scope, receive, send, extra)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in extra}
                message["headers"] = [h for h in message.get("headers", []) if h[0].lower() not in names] + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _docs(self, scope: Scope, receive: Receive, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        start: Message = {}
        body = bytearray()

        async def collect(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                headers = [h for h in start.get("headers", []) if h[0].lower() != b"content-length"]
                headers += extra + [(b"content-security-policy", docs_policy(bytes(body))),
                                    (b"content-length", str(len(body)).encode())]
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": bytes(body)})

        await self.app(scope, receive, collect)
