"""The controller config (controller.yaml): Easegress's FaaSController keys plus ours.

A missing key takes the default documented in README.rst; a partial section keeps the
defaults of its other keys; relative paths are taken from the file's folder, except
``dataDir``'s (see ``_data_dir``).

Everything the node writes defaults under one data folder, ``dataDir``: ``etcd/``,
``nats/``, ``admin-tokens``, ``secrets.key`` and the process provider's folders. So a
config folder may be read-only (``/etc/faastwist`` under systemd's
``ProtectSystem=strict``), and removing the data folder removes all state. Each of the
older keys (``etcd.dataDir``, ``process.dataDir``, ``queue.dataDir``,
``secrets.keyFile``, ``admin.auth.tokensFile``) still wins when set.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Any

import attrs
import yaml

from faastwist.util.fields import FieldError, FieldReader
from faastwist.util.users import UidRange, UserError, resolve_identity
from faastwist.model.spec import check_name, SpecError


class ConfigError(FieldError):
    """The controller config is invalid; twistd prints one line and exits non-zero."""


NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def default_node_id() -> str:
    """The host name, trimmed to what a node id may hold (stable across restarts)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:63].lstrip("._-")
    return host or "node"


@attrs.frozen
class HTTPServerConfig:
    port: int = 10083
    address: str = "0.0.0.0"
    keep_alive: bool = True
    keep_alive_timeout: float = 60.0
    header_timeout: float = 10.0       # a request head must arrive within this (408)
    body_idle_timeout: float = 30.0    # a request body that stalls this long is cut
    https: bool = False
    cert_file: str = ""
    key_file: str = ""
    max_connections: int = 10240
    max_body_size: int = 128 * 2**20
    shutdown_timeout: float = 30.0
    #: on SIGTERM, /readyz is 503 this long before the gate stops accepting, so that a
    #: load balancer's health checks take the node out first
    drain_delay: float = 5.0
    access_log: bool = True
    workers: int = 1                   # gate processes on the port (SO_REUSEPORT)


@attrs.frozen
class KnativeConfig:
    network_layer_url: str = "http://127.0.0.1"
    host_suffix: str = "example.com"
    namespace: str = "default"
    timeout: float = 2.0
    kubeconfig: str = ""


@attrs.frozen
class KubernetesConfig:
    """``kubernetes``: functions as Function objects (faastwist/kube/)."""

    functions: str = "off"          # off | watch
    namespace: str = "default"      # "": every namespace
    kubeconfig: str = ""            # "": knative.kubeconfig, else in-cluster config
    timeout: float = 2.0
    finalizer_timeout: float = 300.0
    openfaas: bool = True           # also openfaas.com/v1 Functions, when installed

    @property
    def watch(self) -> bool:
        return self.functions == "watch"


@attrs.frozen
class EtcdConfig:
    endpoints: tuple[str, ...] = ()
    data_dir: str = "./data/etcd"
    prefix: str = "/faas"
    timeout: float = 5.0
    lease_ttl: float = 10.0

    @property
    def embedded(self) -> bool:
        return not self.endpoints


@attrs.frozen
class ProcessConfig:
    idle_timeout: float = 300.0
    cold_start_timeout: float = 30.0
    data_dir: str = "./data"
    user: str = ""        # empty: nobody when the node runs as root, else the node's user
    group: str = ""
    config_dir: str = ""  # the folder of controller.yaml (files there may be staged)
    #: a uid per function from this range (a root node with no ``user`` set)
    uid_range: str = "200000-265535"
    disk_limit: int = 128 * 2**20    # bytes of a replica's HOME and of its /tmp (tmpfs)
    pids_limit: int = 512            # processes and threads of one function (per uid)
    network: str = "host"            # host | none (sandbox.Network)


ANONYMOUS = ("none", "read", "admin")


@attrs.frozen
class AuthConfig:
    """admin.auth: who may call the admin API (README "Security")."""

    tokens_file: str = "./data/admin-tokens"
    basic_user_file: str = ""
    basic_password_file: str = ""
    anonymous: str = "none"
    metrics_open: bool = False


@attrs.frozen
class AdminConfig:
    port: int = 2381
    address: str = "127.0.0.1"
    max_body_size: int = 2**20
    auth: AuthConfig = AuthConfig()
    allow_insecure: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    https: bool = False
    cert_file: str = ""
    key_file: str = ""

    @property
    def scheme(self) -> str:
        return "https" if self.https else "http"


@attrs.frozen
class SecretsConfig:
    #: the node key that encrypts OpenFaaS secrets in etcd (created 0600 on first start)
    key_file: str = "./data/secrets.key"


@attrs.frozen
class StoreConfig:
    """The function store's catalogue, served at /system/store (OpenFaaS store format):
    ``url`` (fetched) or ``file``; neither: the shipped catalogue."""

    url: str = ""
    file: str = ""


@attrs.frozen
class QueueConfig:
    """Asynchronous invocations on NATS JetStream (see README, "Asynchronous invocations")."""

    enabled: bool = True
    nats_urls: tuple[str, ...] = ()
    data_dir: str = "./data/nats"
    max_age: float = 24 * 3600.0
    max_body_size: int = 2**20
    max_attempts: int = 5
    concurrency: int = 8
    callback_concurrency: int = 32
    callback_timeout: float = 10.0
    callback_allow: tuple[str, ...] = ()
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    status_ttl: float = 24 * 3600.0
    timeout: float = 5.0
    max_bytes: int = 2**30
    max_queued: int = 1000
    ack_wait: float = 5.0
    monitor_port: int = 0

    @property
    def embedded(self) -> bool:
        return not self.nats_urls


#: ``dataDir``'s default: ``data`` in the node's working directory (``make run``'s is the
#: repository; the systemd unit's is its StateDirectory, /var/lib/faastwist)
DATA_DIR = "./data"


@attrs.frozen
class ControllerConfig:
    name: str = "faascontroller"
    kind: str = "FaaSController"
    node_id: str = attrs.field(factory=lambda: default_node_id())
    provider: str = "knative"
    sync_interval: float = 10.0
    http_server: HTTPServerConfig = HTTPServerConfig()
    knative: KnativeConfig = KnativeConfig()
    etcd: EtcdConfig = EtcdConfig()
    process: ProcessConfig = ProcessConfig()
    admin: AdminConfig = AdminConfig()
    secrets: SecretsConfig = SecretsConfig()
    queue: QueueConfig = QueueConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    store: StoreConfig = StoreConfig()
    #: the folder every data path defaults under (absolute once read from a file)
    data_dir: str = DATA_DIR

    @classmethod
    def from_dict(cls, data: object, base_dir: Path | None = None) -> "ControllerConfig":
        base = base_dir or Path.cwd()
        reader = FieldReader(data, "", ConfigError)
        data_dir = _data_dir(reader)
        name = reader.string("name", "faascontroller")
        try:
            check_name(name)
        except SpecError as exc:
            raise ConfigError("name", exc.problem) from None
        kind = reader.string("kind", "FaaSController")
        if kind != "FaaSController":
            raise reader.fail("kind", f"must be FaaSController, got {kind!r}")
        node_id = reader.string("nodeId", "") or default_node_id()
        if not NODE_ID.fullmatch(node_id):
            raise reader.fail("nodeId", f"must be 1-63 letters, digits, '.', '_' or '-', "
                                        f"got {node_id!r}")
        config = cls(
            name=name,
            kind=kind,
            node_id=node_id,
            # checked against providers/registry.py where a node is built (kind_of)
            provider=reader.string("provider", "knative"),
            sync_interval=reader.duration("syncInterval", 10.0, minimum=0.1),
            http_server=reader.section("httpServer", lambda r: _read_http(r, base)),
            knative=reader.section("knative", lambda r: _read_knative(r, base)),
            etcd=reader.section("etcd", lambda r: _read_etcd(r, base, data_dir)),
            process=reader.section("process", lambda r: _read_process(r, base, data_dir)),
            admin=reader.section("admin", lambda r: _read_admin(r, base, data_dir)),
            secrets=reader.section("secrets", lambda r: SecretsConfig(
                key_file=_data_path(r, "keyFile", base, data_dir / "secrets.key", "file"))),
            queue=reader.section("queue", lambda r: _read_queue(r, base, data_dir)),
            kubernetes=reader.section("kubernetes", lambda r: _read_kubernetes(r, base)),
            store=reader.section("store", lambda r: _read_store(r, base)),
            data_dir=str(data_dir),
        )
        reader.finish()
        check_anonymous(config)
        return config


def _path(value: str, base: Path) -> str:
    if not value:
        return value
    expanded = Path(os.path.expanduser(value))
    return str(expanded if expanded.is_absolute() else (base / expanded).resolve())


def _data_dir(reader: FieldReader) -> Path:
    """``dataDir``, absolute. A relative one is taken from the working directory, not
    from the file's folder: its default ``./data`` must mean the same written out or
    left out, and the file's folder is the wrong place for state (``/etc/faastwist`` is
    read-only under the shipped unit, whose working directory is its StateDirectory)."""
    value = reader.string("dataDir", DATA_DIR)
    if not value.strip():
        raise reader.fail("dataDir", "must be a folder path (default ./data)")
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (Path.cwd() / path).resolve()


def _data_path(reader: FieldReader, key: str, base: Path, default: Path,
               kind: str = "folder") -> str:
    """A data path key: set, it is taken from the file's folder as before; unset, it
    lies under ``dataDir``. An explicitly empty value is an error naming the key."""
    value = reader.string(key, None)
    if value is None:
        return str(default)
    if not value.strip():
        raise reader.fail(key, f"must be a {kind} path (leave it out for {default})")
    return _path(value, base)


def _read_http(reader: FieldReader, base: Path) -> HTTPServerConfig:
    if reader.boolean("http3", False):
        raise reader.fail("http3", "is not supported: Twisted has no HTTP/3; set it to false "
                                   "(HTTP/2 is offered over TLS when the h2 package is installed)")
    reader.string("certBase64", "")  # Easegress keys, accepted for compatibility
    reader.string("keyBase64", "")
    config = HTTPServerConfig(
        port=reader.integer("port", 10083, 1, 65535),
        address=reader.string("address", "0.0.0.0"),
        keep_alive=reader.boolean("keepAlive", True),
        keep_alive_timeout=reader.duration("keepAliveTimeout", 60.0),
        header_timeout=reader.duration("headerTimeout", 10.0, minimum=0.001),
        body_idle_timeout=reader.duration("bodyIdleTimeout", 30.0, minimum=0.001),
        https=reader.boolean("https", False),
        cert_file=_path(reader.string("certFile", ""), base),
        key_file=_path(reader.string("keyFile", ""), base),
        max_connections=reader.integer("maxConnections", 10240, 1, 1_000_000),
        max_body_size=reader.size("maxBodySize", 128 * 2**20),
        shutdown_timeout=reader.duration("shutdownTimeout", 30.0),
        drain_delay=reader.duration("drainDelay", 5.0),
        access_log=reader.boolean("accessLog", True),
        workers=_read_workers(reader),
    )
    if config.https:
        _check_tls_files(reader, config.cert_file, config.key_file)
    return config


MAX_WORKERS = 64


def _read_workers(reader: FieldReader) -> int:
    """httpServer.workers: 1..64, or ``auto`` (one per core, capped at 64)."""
    value = reader.raw("workers", 1)
    if value == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise reader.fail("workers", f"must be an integer 1-{MAX_WORKERS} or auto, got {value!r}")
    return value


def _read_knative(reader: FieldReader, base: Path) -> KnativeConfig:
    url = reader.string("networkLayerURL", "http://127.0.0.1").rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise reader.fail("networkLayerURL", f"must be an http:// or https:// URL, got {url!r}")
    namespace = reader.string("namespace", "default")
    try:
        check_name(namespace)
    except SpecError as exc:
        raise reader.fail("namespace", exc.problem) from None
    return KnativeConfig(
        network_layer_url=url,
        host_suffix=reader.string("hostSuffix", "example.com").strip("."),
        namespace=namespace,
        timeout=reader.duration("timeout", 2.0, minimum=0.001),
        kubeconfig=_path(reader.string("kubeconfig", ""), base),
    )


def _read_kubernetes(reader: FieldReader, base: Path) -> KubernetesConfig:
    namespace = reader.string("namespace", "default")
    if namespace:
        try:
            check_name(namespace)
        except SpecError as exc:
            raise reader.fail("namespace", exc.problem) from None
    return KubernetesConfig(
        functions=reader.choice("functions", ("off", "watch"), "off"),
        namespace=namespace,
        kubeconfig=_path(reader.string("kubeconfig", ""), base),
        timeout=reader.duration("timeout", 2.0, minimum=0.001),
        finalizer_timeout=reader.duration("finalizerTimeout", 300.0, minimum=1.0),
        openfaas=reader.boolean("openfaas", True),
    )


def _read_etcd(reader: FieldReader, base: Path, data_dir: Path) -> EtcdConfig:
    endpoints = reader.string_list("endpoints", ())
    for endpoint in endpoints:
        if not endpoint.startswith(("http://", "https://")):
            raise reader.fail("endpoints", f"must be http:// or https:// URLs, got {endpoint!r}")
    prefix = reader.string("prefix", "/faas").rstrip("/")
    if not prefix.startswith("/"):
        raise reader.fail("prefix", f"must start with '/', got {prefix!r}")
    return EtcdConfig(
        endpoints=tuple(e.rstrip("/") for e in endpoints),
        data_dir=_data_path(reader, "dataDir", base, data_dir / "etcd"),
        prefix=prefix,
        timeout=reader.duration("timeout", 5.0, minimum=0.001),
        lease_ttl=reader.duration("leaseTTL", 10.0, minimum=1.0),
    )


def _read_process(reader: FieldReader, base: Path, data_dir: Path) -> ProcessConfig:
    config = ProcessConfig(
        idle_timeout=reader.duration("idleTimeout", 300.0),
        cold_start_timeout=reader.duration("coldStartTimeout", 30.0, minimum=0.001),
        data_dir=_data_path(reader, "dataDir", base, data_dir),
        user=reader.string("user", ""),
        group=reader.string("group", ""),
        config_dir=str(base.resolve()),
        uid_range=reader.string("uidRange", "200000-265535"),
        disk_limit=reader.size("diskLimit", 128 * 2**20),
        pids_limit=reader.integer("pidsLimit", 512, low=16),
        network=reader.choice("network", ("host", "none"), "host"),
    )
    if config.disk_limit < 2**20:
        raise reader.fail("diskLimit", f"must be at least 1Mi, got {config.disk_limit}")
    try:
        resolve_identity(config.user, config.group)
        UidRange.parse(config.uid_range)
    except UserError as exc:
        raise reader.fail(exc.key, exc.problem) from None
    return config


def is_loopback(address: str) -> bool:
    """True for an address only this machine can reach (``localhost`` included)."""
    if address.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_tls_files(reader: FieldReader, cert_file: str, key_file: str) -> None:
    for key, value in (("certFile", cert_file), ("keyFile", key_file)):
        if not value:
            raise reader.fail(key, "is required when https is true")
        if not os.path.isfile(value):
            raise reader.fail(key, f"no such file: {value}")


def _read_basic(reader: FieldReader, base: Path) -> tuple[str, str]:
    if not reader.data:
        return "", ""
    files = []
    for key in ("userFile", "passwordFile"):
        path = _path(reader.string(key, ""), base)
        if not path:
            raise reader.fail(key, "is required when basicAuth is set")
        if not os.path.isfile(path):
            raise reader.fail(key, f"no such file: {path}")
        files.append(path)
    return files[0], files[1]


def _read_auth(reader: FieldReader, base: Path, data_dir: Path) -> AuthConfig:
    tokens_file = _data_path(reader, "tokensFile", base, data_dir / "admin-tokens", "file")
    user_file, password_file = reader.section("basicAuth", lambda r: _read_basic(r, base))
    return AuthConfig(
        tokens_file=tokens_file,
        basic_user_file=user_file,
        basic_password_file=password_file,
        anonymous=reader.choice("anonymous", ANONYMOUS, "none"),
        metrics_open=reader.boolean("metricsOpen", False),
    )


def _read_admin(reader: FieldReader, base: Path, data_dir: Path) -> AdminConfig:
    config = AdminConfig(
        port=reader.integer("port", 2381, 1, 65535),
        address=reader.string("address", "127.0.0.1"),
        max_body_size=reader.size("maxBodySize", 2**20),
        auth=reader.section("auth", lambda r: _read_auth(r, base, data_dir)),
        allow_insecure=reader.boolean("allowInsecure", False),
        allowed_hosts=reader.string_list("allowedHosts", ()),
        allowed_origins=reader.string_list("allowedOrigins", ()),
        https=reader.boolean("https", False),
        cert_file=_path(reader.string("certFile", ""), base),
        key_file=_path(reader.string("keyFile", ""), base),
    )
    for origin in config.allowed_origins:
        if not origin.startswith(("http://", "https://")) or origin.count("/") > 3 \
                or origin.rstrip("/").count("/") != 2:
            raise reader.fail("allowedOrigins", f"must be origins like https://ops.example:8443 "
                                                f"(scheme, host, optional port), got {origin!r}")
    if config.https:
        _check_tls_files(reader, config.cert_file, config.key_file)
    return config


#: what an anonymous role gives whoever reaches a listener that serves the admin API
_ANONYMOUS_EXPOSURE = {"admin": "run commands on this machine",
                       "read": "read every function's spec, environment and logs"}


def check_anonymous(config: "ControllerConfig") -> None:
    """Anonymous access is judged by every listener that serves the admin API: the admin
    port, and the gate, which relays OpenFaaS's ``/system/*`` to it. Off loopback it
    needs ``admin.allowInsecure``."""
    role = config.admin.auth.anonymous
    if role == "none" or config.admin.allow_insecure:
        return
    for key, address in (("admin.address", config.admin.address),
                         ("httpServer.address", config.http_server.address)):
        if not is_loopback(address):
            relay = " (the gate relays /system/* to the admin API)" if key[0] == "h" else ""
            raise ConfigError(
                "admin.auth.anonymous",
                f"{role} on the non-loopback {key} {address!r}{relay} lets anyone who "
                f"reaches that port {_ANONYMOUS_EXPOSURE[role]}; use tokens, or set "
                f"admin.allowInsecure: true if you mean it")


def _read_store(reader: FieldReader, base: Path) -> StoreConfig:
    url = reader.string("url", "")
    file = reader.string("file", "")
    if url and not url.startswith(("http://", "https://")):
        raise reader.fail("url", f"must be an http:// or https:// URL, got {url!r}")
    if url and file:
        raise reader.fail("file", "give store.url or store.file, not both")
    return StoreConfig(url=url, file=_path(file, base) if file else "")


def _read_queue(reader: FieldReader, base: Path, data_dir: Path) -> QueueConfig:
    urls = reader.string_list("natsURLs", ())
    for url in urls:
        if not url.startswith(("nats://", "tls://")):
            raise reader.fail("natsURLs", f"must be nats:// or tls:// URLs, got {url!r}")
    allow = reader.string_list("callbackAllow", ())
    for network in allow:
        try:
            ipaddress.ip_network(network.strip(), strict=False)
        except ValueError:
            raise reader.fail("callbackAllow", f"{network!r} is not an IP address or CIDR "
                                               f"network") from None
    config = QueueConfig(
        enabled=reader.boolean("enabled", True),
        nats_urls=tuple(urls),
        data_dir=_data_path(reader, "dataDir", base, data_dir / "nats"),
        max_age=reader.duration("maxAge", 24 * 3600.0, minimum=1.0),
        max_body_size=reader.size("maxBodySize", 2**20),
        max_attempts=reader.integer("maxAttempts", 5, 1, 100),
        concurrency=reader.integer("concurrency", 8, 1, 10000),
        callback_concurrency=reader.integer("callbackConcurrency", 32, 1, 10000),
        callback_timeout=reader.duration("callbackTimeout", 10.0, minimum=0.001),
        callback_allow=tuple(allow),
        backoff_base=reader.duration("backoffBase", 1.0, minimum=0.001),
        backoff_max=reader.duration("backoffMax", 300.0, minimum=0.001),
        status_ttl=reader.duration("statusTTL", 24 * 3600.0, minimum=60.0),
        timeout=reader.duration("timeout", 5.0, minimum=0.001),
        max_bytes=reader.size("maxBytes", 2**30),
        max_queued=reader.integer("maxQueued", 1000, 1, 10_000_000),
        ack_wait=reader.duration("ackWait", 5.0, minimum=0.5),
        monitor_port=reader.integer("monitorPort", 0, 0, 65535),
    )
    if config.max_body_size > 64 * 2**20:
        raise reader.fail("maxBodySize", "must be at most 64Mi (a queued call is one NATS "
                                         "message)")
    if config.backoff_base > config.backoff_max:
        raise reader.fail("backoffBase", "must not exceed backoffMax")
    if config.max_bytes < 4 * (config.max_body_size + 128 * 1024):
        raise reader.fail("maxBytes", f"must hold at least four calls of maxBodySize "
                                      f"({4 * (config.max_body_size + 128 * 1024)} bytes), "
                                      f"got {config.max_bytes}")
    return config


def load_config(path: str | os.PathLike[str]) -> ControllerConfig:
    """Read and validate controller.yaml; every problem is a ConfigError naming the key."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {file}: {exc.strerror}") from None
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{file} is not valid YAML: {exc}") from None
    return ControllerConfig.from_dict(data, file.resolve().parent)
