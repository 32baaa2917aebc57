"""nixl._api -- NIXL's `nixl_agent` over nixl.h.

The names, arguments and behaviour follow NIXL's Python API (1.x), so code
written for NIXL (vLLM's NixlConnector, SGLang, Dynamo) runs unchanged:

    from nixl._api import nixl_agent, nixl_agent_config

Backends: "UCX" (nixl_ucx.h) and "VERBS" (nixl_verbs.h, raw verbs). Errors
from the native layer are the typed exceptions of nixl._bindings (all
RuntimeError subclasses); bad descriptor input is logged and gives None, as
NIXL does. Every method may be called from any thread.
"""

import enum
import pickle

from . import _bindings as nixlBind
from .logging import get_logger

logger = get_logger(__name__)

DEFAULT_COMM_PORT = nixlBind.DEFAULT_COMM_PORT

# handles are the native layer's objects: they behave as ints and release
# themselves when dropped (NIXL 0.6+'s handle classes have the same role)
nixl_xfer_handle = nixlBind.nixlHandle
nixl_prepped_dlist_handle = nixlBind.nixlHandle


class nixl_thread_sync_t(enum.Enum):
    """NIXL's thread-synchronisation modes. nixl.h always serialises calls on
    an agent with its own lock, so every mode is thread-safe here."""

    NIXL_THREAD_SYNC_NONE = nixlBind.NIXL_THREAD_SYNC_NONE
    NIXL_THREAD_SYNC_STRICT = nixlBind.NIXL_THREAD_SYNC_STRICT
    NIXL_THREAD_SYNC_RW = nixlBind.NIXL_THREAD_SYNC_RW
    NIXL_THREAD_SYNC_DEFAULT = nixlBind.NIXL_THREAD_SYNC_DEFAULT


class nixl_agent_config:
    """Configuration of a nixl_agent (NIXL's arguments and attribute names).

    listen_port=0 picks a free port; the agent's `listen_port` attribute and
    a log line say which. num_threads is accepted and not used (nixl.h's
    backends size themselves; see the backends' params)."""

    def __init__(
        self,
        enable_prog_thread: bool = True,
        enable_listen_thread: bool = False,
        listen_port: int = DEFAULT_COMM_PORT,
        capture_telemetry: bool = False,
        num_threads: int = 0,
        backends: list = ["UCX"],  # noqa: B006 (NIXL's signature)
        sync_mode=None,
    ):
        if sync_mode is not None and not isinstance(sync_mode, nixl_thread_sync_t):
            raise TypeError("sync_mode must be a nixl_thread_sync_t")
        self.backends = list(backends)
        self.enable_pthread = enable_prog_thread
        self.enable_listen = enable_listen_thread
        self.port = listen_port
        self.capture_telemetry = capture_telemetry
        self.num_threads = num_threads
        self.sync_mode = sync_mode


def _name_str(name):
    return name.decode() if isinstance(name, (bytes, bytearray)) else name


class nixl_agent:
    """One agent: backends, registered memory, peers, transfers and
    notifications. `name`, `backends` (name -> handle), `notifs` (sender ->
    list of bytes, filled by update_notifs) as in NIXL."""

    def __init__(self, agent_name: str, nixl_conf: nixl_agent_config = None, instantiate_all: bool = False):
        if nixl_conf is not None and instantiate_all:
            logger.warning("Ignoring instantiate_all: a config was given, its backends list applies")
            instantiate_all = False
        if nixl_conf is None:
            nixl_conf = nixl_agent_config()
        agent_name = _name_str(agent_name)
        cfg = nixlBind.nixlAgentConfig(
            bool(nixl_conf.enable_pthread),
            bool(nixl_conf.enable_listen),
            int(nixl_conf.port) if nixl_conf.enable_listen else 0,
            (nixl_conf.sync_mode.value if nixl_conf.sync_mode is not None
             else nixlBind.NIXL_THREAD_SYNC_DEFAULT),
            capture_telemetry=bool(nixl_conf.capture_telemetry),
        )
        self.agent = nixlBind.nixlAgent(agent_name, cfg)
        self.name = agent_name
        self.notifs = {}
        self.backends = {}
        self.backend_mems = {}
        self.backend_options = {}
        self.plugin_list = self.agent.getAvailPlugins()
        if not self.plugin_list:
            logger.error("No plugins available for NIXL, cannot start transfers!")
            raise RuntimeError("No plugins available for NIXL, cannot start transfers!")
        self.plugin_b_options = {}
        self.plugin_mem_types = {}
        for p in self.plugin_list:
            opts, mems = self.agent.getPluginParams(p)
            self.plugin_b_options[p] = opts
            self.plugin_mem_types[p] = [nixlBind_mem_name(m) for m in mems]
        self.nixl_mems = {
            "DRAM": nixlBind.DRAM_SEG,
            "VRAM": nixlBind.VRAM_SEG,
            "FILE": nixlBind.FILE_SEG,
            "BLOCK": nixlBind.BLK_SEG,
            "BLK": nixlBind.BLK_SEG,
            "OBJ": nixlBind.OBJ_SEG,
            "cpu": nixlBind.DRAM_SEG,
            "cuda": nixlBind.VRAM_SEG,
        }
        self.nixl_ops = {"WRITE": nixlBind.NIXL_WRITE, "READ": nixlBind.NIXL_READ}
        self.listen_port = self.agent.getListenPort()
        if nixl_conf.enable_listen:
            logger.info("NIXL agent %s serves its metadata on port %d", agent_name, self.listen_port)

        wanted = self.plugin_list if instantiate_all else nixl_conf.backends
        for b in wanted:
            if b not in self.plugin_list:
                logger.warning("Skipping backend registration %s due to the missing plugin.", b)
                continue
            try:
                self.create_backend(b)
            except RuntimeError as e:
                # a backend that cannot start (no RDMA device for VERBS...) is
                # skipped, as NIXL skips a plugin that fails to load
                logger.warning("Skipping backend %s: it could not start (%s)", b, e)
        logger.info("Initialized NIXL agent: %s", agent_name)

    # -- plugins and backends -------------------------------------------------

    def get_plugin_list(self) -> list:
        return list(self.plugin_list)

    def get_plugin_mem_types(self, backend: str) -> list:
        if backend in self.plugin_mem_types:
            return list(self.plugin_mem_types[backend])
        logger.warning("Plugin %s is not available to get its supported mem types.", backend)
        return []

    def get_plugin_params(self, backend: str) -> dict:
        if backend in self.plugin_b_options:
            return dict(self.plugin_b_options[backend])
        logger.warning("Plugin %s is not available to get its parameters.", backend)
        return {}

    def get_backend_mem_types(self, backend: str) -> list:
        if backend in self.backend_mems:
            return list(self.backend_mems[backend])
        logger.warning("Backend %s not instantiated to get its supported mem types.", backend)
        return []

    def get_backend_params(self, backend: str) -> dict:
        if backend in self.backend_options:
            return dict(self.backend_options[backend])
        logger.warning("Backend %s not instantiated to get its parameters.", backend)
        return {}

    def create_backend(self, backend: str, initParams: dict = {}):  # noqa: B006 (NIXL's signature)
        """Creates a backend ("UCX" or "VERBS") with string params. Without an
        auth token, notifications are taken on their sender's word (NIXL's
        behaviour) unless initParams sets notif_unverified=drop."""
        handle = self.agent.createBackend(backend, dict(initParams))
        self.backends[backend] = handle
        opts, mems = self.agent.getBackendParams(handle)
        self.backend_options[backend] = opts
        self.backend_mems[backend] = [nixlBind_mem_name(m) for m in mems]

    def _backend_handles(self, backends):
        if not backends:
            return []
        if isinstance(backends, str):
            backends = [backends]
        return [self.backends[b] for b in backends]

    # -- descriptors ----------------------------------------------------------

    def _mem_type(self, mem_type):
        if mem_type is None:
            return None
        if isinstance(mem_type, int):
            return mem_type
        return self.nixl_mems[mem_type]

    def _tensor_descs(self, descs):
        """(mem_type, [(addr, len, dev)]) of a tensor or list of tensors, or
        None with an error log."""
        tensors = [descs] if _is_tensor(descs) else descs
        first = tensors[0]
        rows = []
        for t in tensors:
            if t.device != first.device:
                logger.error("Tensors of one descriptor list must be on one device (%s and %s)",
                             first.device, t.device)
                return None
            if not t.is_contiguous():
                logger.error("A tensor of a descriptor list must be contiguous")
                return None
            dev = t.get_device()
            rows.append((t.data_ptr(), t.numel() * t.element_size(), dev if dev >= 0 else 0))
        mem = "DRAM" if first.get_device() < 0 else "VRAM"
        return mem, rows

    def _descs(self, descs, mem_type, reg):
        """Descriptor list of the right class from any input NIXL accepts."""
        cls = nixlBind.nixlRegDList if reg else nixlBind.nixlXferDList
        other = nixlBind.nixlXferDList if reg else nixlBind.nixlRegDList
        what = "registration" if reg else "transfer"
        if isinstance(descs, cls):
            return descs
        if isinstance(descs, other):
            logger.error("A %s is not a %s descriptor list", type(descs).__name__, what)
            return None
        try:
            mem = self._mem_type(mem_type)
        except KeyError:
            logger.error("Unknown memory type %r (DRAM, VRAM, FILE, BLOCK, OBJ, cpu, cuda)", mem_type)
            return None
        if _is_ndarray(descs):
            if descs.ndim != 2 or descs.shape[1] != 3:
                logger.error("A descriptor array must be N x 3 (addr, len, dev_id), not %s", descs.shape)
                return None
            if mem is None:
                logger.error("Please specify a mem type when not using a tensor")
                return None
            return self._call_or_log(cls, mem, descs)
        if _is_tensor(descs) or (isinstance(descs, (list, tuple)) and descs and _is_tensor(descs[0])):
            got = self._tensor_descs(descs)
            if got is None:
                return None
            mem_name, rows = got
            return self._call_or_log(cls, self.nixl_mems[mem_name], rows)
        if isinstance(descs, (list, tuple)):
            if not descs:
                if mem is None:
                    logger.error("Please specify a mem type when not using a tensor")
                    return None
                return cls(mem)
            if not isinstance(descs[0], tuple):
                logger.error("A %s descriptor list is a list of tuples, an N x 3 array or tensors", what)
                return None
            want = (3, 4) if reg else (3,)
            if len(descs[0]) not in want:
                logger.error("A %s descriptor is (addr, len, dev_id%s)", what, ", meta" if reg else "")
                return None
            if mem is None:
                logger.error("Please specify a mem type when not using a tensor")
                return None
            return self._call_or_log(cls, mem, list(descs))
        logger.error("Unsupported type of %s descriptors: %s", what, type(descs).__name__)
        return None

    @staticmethod
    def _call_or_log(cls, mem, rows):
        try:
            return cls(mem, rows)
        except nixlBind.nixlInvalidParamError as e:
            logger.error("Bad descriptors: %s", e)
            return None

    def get_xfer_descs(self, descs, mem_type: str = None):
        """nixlXferDList from a list of (addr, len, dev) tuples, an N x 3
        integer numpy array (one copy), a tensor, a list of tensors, or a
        nixlXferDList (returned as is). None (and an error log) on bad input."""
        return self._descs(descs, mem_type, reg=False)

    def get_reg_descs(self, descs, mem_type: str = None):
        """nixlRegDList: as get_xfer_descs, tuples may carry a fourth field
        (meta, str or bytes)."""
        return self._descs(descs, mem_type, reg=True)

    def get_remote_descs(self, descs, mem_type: str = None):
        """A peer's descriptors, as a nixlRemoteDList."""
        got = self._descs(descs, mem_type, reg=False)
        if got is None:
            return None
        return nixlBind.nixlRemoteDList(got.getType(), got)

    def get_serialized_descs(self, descs) -> bytes:
        return pickle.dumps(descs)

    def deserialize_descs(self, serialized_descs: bytes):
        return pickle.loads(serialized_descs)

    # -- memory -----------------------------------------------------------------

    def register_memory(self, reg_list, mem_type: str = None, backends: list = []):  # noqa: B006
        reg_descs = self.get_reg_descs(reg_list, mem_type)
        if reg_descs is None:
            raise TypeError("register_memory: the descriptors could not be converted (see the log)")
        self.agent.registerMem(reg_descs, self._backend_handles(backends))
        return reg_descs

    def deregister_memory(self, dereg_list, backends: list = []):  # noqa: B006
        dereg = self.get_reg_descs(dereg_list) if not isinstance(dereg_list, nixlBind.nixlRegDList) else dereg_list
        if dereg is None:
            raise TypeError("deregister_memory: the descriptors could not be converted (see the log)")
        self.agent.deregisterMem(dereg, self._backend_handles(backends))

    def query_memory(self, reg_list, backend: str, mem_type: str = None):
        """For each descriptor of a FILE (or BLK) list: the registered file's
        {"size", "mode", "mtime", "readable", "writable", "direct"}, or None
        when the backend does not hold it. Only "POSIX" answers (others:
        nixlNotSupportedError)."""
        if backend not in self.backends:
            raise ValueError("Backend %s not instantiated (available: %s)" % (backend, list(self.backends)))
        descs = self.get_reg_descs(reg_list, mem_type)
        if descs is None:
            return None
        return self.agent.queryMem(descs, self.backends[backend])

    # -- connections and metadata --------------------------------------------------

    def make_connection(self, remote_agent: str, backends: list = []):  # noqa: B006
        self.agent.makeConnection(remote_agent, self._backend_handles(backends))

    def get_agent_metadata(self) -> bytes:
        return self.agent.getLocalMD()

    def get_partial_agent_metadata(self, descs, inc_conn_info: bool = False, backends: list = []) -> bytes:  # noqa: B006
        return self.agent.getLocalPartialMD(self._partial(descs), inc_conn_info, self._backend_handles(backends))

    def _partial(self, descs):
        if descs is None:
            return nixlBind.nixlRegDList(nixlBind.DRAM_SEG)
        return descs

    def add_remote_agent(self, metadata: bytes) -> bytes:
        """Loads a peer's metadata; returns its name as bytes (as NIXL does)."""
        return self.agent.loadRemoteMD(metadata)

    def remove_remote_agent(self, agent: str):
        self.agent.invalidateRemoteMD(agent)

    def send_local_metadata(self, ip_addr: str = "", port: int = DEFAULT_COMM_PORT):
        self.agent.sendLocalMD(ip_addr, port)

    def send_partial_agent_metadata(self, descs, inc_conn_info: bool = False, backends: list = [],  # noqa: B006
                                    ip_addr: str = "", port: int = DEFAULT_COMM_PORT, label: str = ""):
        self.agent.sendLocalPartialMD(self._partial(descs), inc_conn_info, self._backend_handles(backends),
                                      ip_addr, port, label)

    def fetch_remote_metadata(self, remote_agent: str, ip_addr: str = "", port: int = DEFAULT_COMM_PORT,
                              label: str = ""):
        self.agent.fetchRemoteMD(remote_agent, ip_addr, port, label)

    def invalidate_local_metadata(self, ip_addr: str = "", port: int = DEFAULT_COMM_PORT):
        self.agent.invalidateLocalMD(ip_addr, port)

    def check_remote_metadata(self, remote_agent: str, descs=None) -> bool:
        if descs is not None and not isinstance(descs, (nixlBind.nixlXferDList, nixlBind.nixlRegDList)):
            logger.error("check_remote_metadata: descs must be a nixlXferDList (get_xfer_descs makes one)")
            return False
        return self.agent.checkRemoteMD(remote_agent, descs) == nixlBind.NIXL_SUCCESS

    # -- transfers ------------------------------------------------------------------

    def prep_xfer_dlist(self, agent_name, xfer_list, mem_type: str = None, backends: list = []):  # noqa: B006
        """Prepares a descriptor list once for many requests. agent_name
        "NIXL_INIT_AGENT" (or "") prepares the local side; a peer's name its
        side. Returns a handle, or None (and an error log) on bad descriptors."""
        descs = self.get_xfer_descs(xfer_list, mem_type)
        if descs is None:
            return None
        name = _name_str(agent_name)
        if name == "NIXL_INIT_AGENT":
            name = ""
        return self.agent.prepXferDlist(name, descs, self._backend_handles(backends))

    def prep_xfer_dlist_strided(self, agent_name, mem_type: str, base: int, length: int, stride: int, count: int,
                                dev_id: int = 0, backends: list = []):  # noqa: B006
        """nixl.h's own (not in NIXL): prepares count blocks of `length`
        bytes every `stride` bytes from `base` (one region) without a
        descriptor each, for make_prepped_xfer by block index like any
        prepared list. A KV cache of 1.4 M blocks costs one entry."""
        name = _name_str(agent_name)
        if name == "NIXL_INIT_AGENT":
            name = ""
        return self.agent.prepXferDlistStrided(name, self._mem_type(mem_type), base, length, stride, count, dev_id,
                                               self._backend_handles(backends))

    def make_prepped_xfer(self, operation: str, local_xfer_side, local_indices, remote_xfer_side, remote_indices,
                          notif_msg: bytes = b"", backends: list = [], skip_desc_merge: bool = False):  # noqa: B006
        """A request from two prepared lists by indices (lists of ints or 1-D
        integer numpy arrays)."""
        op = self.nixl_ops[operation]
        return self.agent.makeXferReq(op, local_xfer_side, local_indices, remote_xfer_side, remote_indices,
                                      notif_msg, self._backend_handles(backends), skip_desc_merge)

    def initialize_xfer(self, operation: str, local_descs, remote_descs, remote_agent, notif_msg: bytes = b"",
                        backends: list = []):  # noqa: B006
        op = self.nixl_ops[operation]
        return self.agent.createXferReq(op, local_descs, remote_descs, remote_agent, notif_msg,
                                        self._backend_handles(backends))

    def estimate_xfer_cost(self, req_handle):
        """(duration_us, err_margin_us, method): method is "ANALYTICAL_BACKEND"
        when the backend estimated it."""
        duration, margin, _ = self.agent.estimateXferCost(req_handle)
        return duration, margin, "ANALYTICAL_BACKEND"

    def transfer(self, handle, notif_msg: bytes = b"") -> str:
        """Posts the request: "DONE" when it finished inline, "PROC" while in
        flight. A post that fails raises the typed exception."""
        status = self.agent.postXferReq(handle, notif_msg if notif_msg else None)
        return "DONE" if status == nixlBind.NIXL_SUCCESS else "PROC"

    def check_xfer_state(self, handle) -> str:
        """ "DONE", "PROC", or "ERR" for a request that failed (logged)."""
        try:
            status = self.agent.getXferStatus(handle)
        except nixlBind.nixlInvalidParamError:
            raise
        except RuntimeError as e:
            logger.error("Transfer failed: %s", e)
            return "ERR"
        if status == nixlBind.NIXL_SUCCESS:
            return "DONE"
        return "PROC"

    def get_xfer_telemetry(self, handle):
        """nixlXferTelemetry of the last completed post; nixlNoTelemetryError
        unless capture_telemetry (or NIXL_TELEMETRY_ENABLE=y) is set."""
        return self.agent.getXferTelemetry(handle)

    def query_xfer_backend(self, handle) -> str:
        be = self.agent.queryXferBackend(handle)
        for name, h in self.backends.items():
            if h == be:
                return name
        return self.agent.getBackendName(be)

    def release_xfer_handle(self, handle):
        """Releases a request; again is a no-op. One still in flight is
        aborted where the backend can, else kept and released once it ends."""
        self.agent.releaseXferReq(handle)

    def release_dlist_handle(self, handle):
        self.agent.releasedDlistH(handle)

    # -- notifications --------------------------------------------------------------

    def get_new_notifs(self, backends: list = []) -> dict:  # noqa: B006
        """{sender name: [messages as bytes]} received since the last call."""
        return self.agent.getNotifs({}, self._backend_handles(backends))

    def update_notifs(self, backends: list = []) -> dict:  # noqa: B006
        """Appends new notifications to self.notifs and returns it."""
        return self.agent.getNotifs(self.notifs, self._backend_handles(backends))

    def check_remote_xfer_done(self, remote_agent_name, lookup_tag: bytes, backends: list = [],  # noqa: B006
                               tag_is_prefix: bool = True) -> bool:
        """Whether a notification from the peer starting with (or, with
        tag_is_prefix=False, containing) lookup_tag arrived; consumes it."""
        self.update_notifs(backends)
        name = _name_str(remote_agent_name)
        if isinstance(lookup_tag, str):
            lookup_tag = lookup_tag.encode()
        msgs = self.notifs.get(name, [])
        for i, msg in enumerate(msgs):
            if (msg.startswith(lookup_tag) if tag_is_prefix else lookup_tag in msg):
                del msgs[i]
                return True
        return False

    def send_notif(self, remote_agent_name, notif_msg: bytes, backend: str = None):
        """Sends a notification. While the peer has not drained what it already
        holds, flow control holds this one back: send_notif drives progress and
        retries for up to 30 s, then raises nixlBackendError (nothing sent)."""
        self.agent.genNotif(remote_agent_name, notif_msg, self._backend_handles([backend] if backend else []))


def nixlBind_mem_name(m: int) -> str:
    return {
        nixlBind.DRAM_SEG: "DRAM",
        nixlBind.VRAM_SEG: "VRAM",
        nixlBind.BLK_SEG: "BLOCK",
        nixlBind.OBJ_SEG: "OBJ",
        nixlBind.FILE_SEG: "FILE",
    }.get(m, str(m))


def _is_ndarray(x) -> bool:
    t = type(x)
    return t.__module__ == "numpy" and t.__name__ == "ndarray"


def _is_tensor(x) -> bool:
    t = type(x)
    return t.__module__.startswith("torch") and hasattr(x, "data_ptr") and hasattr(x, "element_size")
