"""The `rlt-prep` command line: thin commands over the stages."""

from rlt.cli._app import app

__all__ = ["app"]
