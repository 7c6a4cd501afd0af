"""`rlt-prep serve`: tokenization as an HTTP service (see rlt/serve)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from rlt.cli._app import _bad_input_exits, app
from rlt.serve._config import TOKEN_ENV, ServeConfig


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="address to bind; any but 127.0.0.1/localhost needs --token")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8000,
    allow_root: Annotated[
        str | None, typer.Option(help="folder whose files requests may name by path= (default: no path requests)")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar=TOKEN_ENV, help="bearer token every request but /healthz must carry", show_default=False),
    ] = None,
    max_body_mb: Annotated[float, typer.Option(help="largest upload in MiB; larger ones get 413")] = 512,
    ray_address: Annotated[
        str | None, typer.Option(help="existing Ray cluster (default: $RAY_ADDRESS, else an embedded local Ray)")
    ] = None,
    replicas: Annotated[
        int | None, typer.Option(help="tokenizer replicas, one decoder each (default: one per GPU, or one)")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="concurrent requests decoded together on a replica")] = 8,
) -> None:
    """Serves POST /v1/tokenize (a video's bytes, or path= under --allow-root, in; its clips' tokens
    as an Arrow IPC stream out), GET /v1/status, /healthz and /metrics, until SIGINT or SIGTERM."""
    from rlt.serve import serve

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with _bad_input_exits():
        config = ServeConfig(
            host=host,
            port=port,
            allow_root=allow_root,
            token=token,
            max_body_mb=max_body_mb,
            ray_address=ray_address,
            replicas=replicas,
            max_batch_size=max_batch_size,
        )
        serve(config)
