"""The bridge's HTTP server (aiohttp): file streaming and web seeding, the demo page, later the API."""

from .app import HttpServer, make_app, start_http_server
from .stream import StreamOptions, file_url_path

__all__ = ["HttpServer", "StreamOptions", "file_url_path", "make_app", "start_http_server"]
