"""``orch console``: a local web page where deployments are watched, not read.

``model`` keeps one timeline per deployment, fed by the status topic (live) and the
records bucket (history); ``readers`` is everything read through the official clients
(and the one upload); ``views`` turns timelines into bars and words; ``server`` serves the
pages (templates and static files are package data beside it).
"""

from __future__ import annotations

from typing import Any

from orch.console.model import Store
from orch.console.readers import Watcher
from orch.console.server import DEFAULT_PORT, Console, serve

__all__ = ["DEFAULT_PORT", "Console", "Running", "start"]


class Running:
    """A console serving in this process: its address, and how to stop it (the watcher's
    subscription on the status topic is deleted)."""

    def __init__(self, server: Any, watcher: Watcher, host: str) -> None:
        self.server = server
        self.watcher = watcher
        self.host = host

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.server.server_port}/"

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.watcher.stop()


def start(
    clients: Any, settings: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT, **options: Any
) -> Running:
    """Bind the server and start watching (the server answers once ``serve_forever`` runs)."""
    store = Store()
    server = serve(Console(settings, clients, store, host=host), host, port)
    watcher = Watcher(clients, settings, store, **options).start()
    return Running(server, watcher, host)
