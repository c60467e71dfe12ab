"""ASGI entry point for ``uvicorn medannot.server.asgi:app``; settings come from the environment.

Each server process also runs the results-archive sender (``MEDANNOT_ARCHIVE_INTERVAL`` seconds between rounds,
default 15; 0 turns it off): final SEG/SR files queued for a project's PACS are sent from here.
"""

import os

from medannot.server.app import create_app
from medannot.server.archive import ArchiveWorker
from medannot.server.config import resolve_settings

app = create_app(resolve_settings())
_interval = float(os.environ.get("MEDANNOT_ARCHIVE_INTERVAL", "15") or 0)
archive_worker = ArchiveWorker(app.state.factory, app.state.store, _interval).start() if _interval > 0 else None
