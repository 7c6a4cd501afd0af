"""The `rlt-prep` command line: thin commands over the stages."""

from rlt.cli import _serve  # noqa: F401  (registers `rlt-prep serve` on the app)
from rlt.cli._app import app

__all__ = ["app"]
