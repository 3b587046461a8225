"""One log style for every program: ``setup_logging(level)`` on the root logger.

Lines read ``2026-12-03 07:10:00,123 INFO    pool.jobs: new block template: …`` on stderr.
A program with a live terminal view passes its own ``handler`` (the worker's rich console),
which keeps its own layout and takes only the level.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

MARK = "_matmine_handler"
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(
    level: str | int, *, stream: TextIO | None = None, handler: logging.Handler | None = None
) -> logging.Handler:
    """Log at ``level`` (a name such as ``"info"`` or a number) through one handler: to
    ``stream`` (default stderr) in :data:`LOG_FORMAT`, or through ``handler`` as given.
    Replaces the handler an earlier call installed (calling it again reconfigures) and
    leaves others alone (a test runner's capture); returns the handler."""
    if handler is None:
        handler = logging.StreamHandler(sys.stderr if stream is None else stream)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    setattr(handler, MARK, True)
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, MARK, False)] + [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
