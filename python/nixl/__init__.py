"""nixl -- NIXL's Python API over nixl.h (a header-only C library).

    from nixl._api import nixl_agent, nixl_agent_config
    from nixl import nixl_agent          # the same

Backends: "UCX" (nixl_ucx.h) and "VERBS" (nixl_verbs.h). See the README's
Python section for what differs from NIXL."""

from . import _bindings, _utils, logging  # noqa: F401
from . import _api  # noqa: F401
from ._api import (  # noqa: F401
    DEFAULT_COMM_PORT,
    nixl_agent,
    nixl_agent_config,
    nixl_prepped_dlist_handle,
    nixl_thread_sync_t,
    nixl_xfer_handle,
)
from ._bindings import *  # noqa: F401,F403
from ._utils import ba_buf, free_passthru, malloc_passthru, verify_transfer  # noqa: F401

__all__ = [
    "nixl_agent",
    "nixl_agent_config",
    "nixl_thread_sync_t",
    "nixl_xfer_handle",
    "nixl_prepped_dlist_handle",
    "DEFAULT_COMM_PORT",
]
