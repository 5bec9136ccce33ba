"""`ddlm serve`: a local web page that shows generation step by step (server.py, static/)."""

from .server import App, make_server

__all__ = ["App", "make_server"]
