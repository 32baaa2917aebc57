"""nixl.logging -- the package's loggers (NIXL's get_logger).

get_logger(name) returns the logger "nixl.<name>"; the "nixl" logger writes
to stdout at INFO with NIXL's line format, and NIXL_LOG_LEVEL (DEBUG, INFO,
WARNING, ERROR; any case) in the environment sets its level. The native
layer's own lines (nixl.h's logger) go to stderr, at the level the same
variable sets there."""

import logging as _logging
import os
import sys

_configured = False
_FORMAT = "%(asctime)s NIXL %(levelname)-7s %(filename)s:%(lineno)d %(message)s"


def _level_from_env():
    v = os.environ.get("NIXL_LOG_LEVEL")
    if not v:
        return None
    name = v.strip().upper()
    if name == "WARN":
        name = "WARNING"
    level = _logging.getLevelName(name)
    return level if isinstance(level, int) else False


def setup_logging():
    """Configures the "nixl" logger once (stdout, NIXL's format, INFO or
    NIXL_LOG_LEVEL)."""
    global _configured
    if _configured:
        return
    _configured = True
    root = _logging.getLogger("nixl")
    if not root.handlers:
        h = _logging.StreamHandler(sys.stdout)
        h.setFormatter(_logging.Formatter(_FORMAT))
        root.addHandler(h)
    root.propagate = False
    level = _level_from_env()
    root.setLevel(_logging.INFO if not level else level)
    if level is False:
        root.warning("NIXL_LOG_LEVEL=%s is not a log level (DEBUG, INFO, WARNING, ERROR)",
                     os.environ.get("NIXL_LOG_LEVEL"))


def get_logger(name: str) -> _logging.Logger:
    setup_logging()
    short = name.split(".")[-1].lstrip("_") if name.startswith("nixl.") else name.lstrip("_")
    return _logging.getLogger("nixl." + short)
