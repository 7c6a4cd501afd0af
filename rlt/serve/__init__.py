"""`rlt-prep serve`: tokenization as an HTTP service on Ray Serve, and its Python client."""

from rlt.serve._client import Client, ServeError
from rlt.serve._config import OPTIONS, TOKEN_ENV, ServeConfig
from rlt.serve._server import Server, serve, start
from rlt.serve._wire import from_arrow_stream, to_arrow_stream

__all__ = [
    "OPTIONS",
    "TOKEN_ENV",
    "Client",
    "ServeConfig",
    "ServeError",
    "Server",
    "from_arrow_stream",
    "serve",
    "start",
    "to_arrow_stream",
]
