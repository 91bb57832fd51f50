"""controller.yaml: defaults, partial sections, relative paths, errors naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest

from faastwist.config import ConfigError, ControllerConfig, load_config
from tests.support.covered import coverage_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    """dataDir's default is ``./data`` in the working directory: here the test's folder,
    which is also the config folder most tests pass (so defaults land in tmp_path/data)."""
    monkeypatch.chdir(tmp_path)


def test_empty_document_gives_every_default(tmp_path):
    config = ControllerConfig.from_dict(None, tmp_path)
    assert config.name == "faascontroller" and config.provider == "knative"
    assert config.sync_interval == 10.0
    assert config.http_server.port == 10083 and config.http_server.keep_alive_timeout == 60.0
    assert config.http_server.max_connections == 10240
    assert config.knative.namespace == "default" and config.knative.timeout == 2.0
    assert config.etcd.embedded and config.etcd.prefix == "/faas"
    assert config.etcd.data_dir == str(tmp_path / "data" / "etcd")
    assert config.process.idle_timeout == 300.0 and config.process.cold_start_timeout == 30.0
    assert (config.admin.address, config.admin.port) == ("127.0.0.1", 2381)
    assert config.admin.max_body_size == 2**20


def test_partial_section_keeps_other_defaults(tmp_path):
    config = ControllerConfig.from_dict(
        {"httpServer": {"port": 8080}, "knative": {"hostSuffix": "fn.local"},
         "syncInterval": "1m30s"}, tmp_path)
    assert config.http_server.port == 8080 and config.http_server.keep_alive
    assert config.knative.host_suffix == "fn.local" and config.knative.namespace == "default"
    assert config.sync_interval == 90.0


def test_easegress_controller_document_is_accepted(tmp_path):
    config = ControllerConfig.from_dict({
        "name": "faascontroller", "kind": "FaaSController", "provider": "knative",
        "syncInterval": "10s",
        "httpServer": {"http3": False, "port": 10083, "keepAlive": True,
                       "keepAliveTimeout": "60s", "https": False, "certBase64": None,
                       "keyBase64": None, "maxConnections": 10240},
        "knative": {"networkLayerURL": "http://10.109.159.129", "hostSuffix": "example.com"},
    }, tmp_path)
    assert config.knative.network_layer_url == "http://10.109.159.129"


@pytest.mark.parametrize("data, message", [
    ({"httpServer": {"port": 0}}, "httpServer.port: must be 1-65535, got 0"),
    ({"httpServer": {"http3": True}}, "httpServer.http3: is not supported"),
    ({"httpServer": {"https": True}}, "httpServer.certFile: is required when https is true"),
    ({"httpServer": {"keepAliveTimeout": "1 minute"}}, "httpServer.keepAliveTimeout: expected"),
    ({"kind": "Pipeline"}, "kind: must be FaaSController"),
    ({"name": "Bad_Name"}, "name: must be a DNS-1123 label"),
    ({"syncInterval": "0s"}, "syncInterval: must be at least 0.1s"),
    ({"knative": {"networkLayerURL": "10.0.0.1"}}, "knative.networkLayerURL: must be an http"),
    ({"knative": {"timout": "2s"}}, "knative.timout: unknown field"),
    ({"etcd": {"endpoints": "http://x"}}, "etcd.endpoints: must be a list"),
    ({"etcd": {"endpoints": ["127.0.0.1:2379"]}}, "etcd.endpoints: must be http"),
    ({"etcd": {"prefix": "faas"}}, "etcd.prefix: must start with '/'"),
    ({"admin": {"maxBodySize": "lots"}}, "admin.maxBodySize: expected a Kubernetes quantity"),
    ({"httpServer": []}, "httpServer: must be a mapping"),
    ({"extra": 1}, "extra: unknown field"),
])
def test_errors_name_the_key(tmp_path, data, message):
    with pytest.raises(ConfigError) as info:
        ControllerConfig.from_dict(data, tmp_path)
    assert str(info.value).startswith(message)


def test_relative_paths_are_taken_from_the_files_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("etcd: {dataDir: ./state}\nknative: {kubeconfig: ../kube.yaml}\n")
    config = load_config(path)
    assert config.etcd.data_dir == str(tmp_path / "sub" / "state")
    assert config.knative.kubeconfig == str(tmp_path / "kube.yaml")


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert (info.value.path, str(info.value)) == (
        "--config", f"--config: cannot read {tmp_path / 'missing.yaml'}: No such file or directory")
    bad = tmp_path / "bad.yaml"
    bad.write_text("httpServer: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    # no key to name: the message is the file's problem alone
    assert info.value.path == ""
    assert str(info.value).startswith(f"{bad} is not valid YAML: while parsing a flow node")


def test_shipped_configs_are_valid():
    for path in sorted((ROOT / "conf").glob("controller*.yaml")):
        load_config(path)


@pytest.mark.process
def test_twistd_exits_non_zero_with_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("httpServer: {port: 0}\n")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "twistd"), "-n", "faasgate", "--config", str(bad)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
             **coverage_env()})
    assert result.returncode != 0
    assert result.stderr.strip() == "faasgate: config error: httpServer.port: must be 1-65535, got 0"


def test_an_unknown_provider_is_a_config_error_naming_the_key(tmp_path):
    """The provider registry checks the name where a node is built (twistd's options):
    one line naming the key, exit non-zero."""
    from faastwist.tap import Options

    bad = tmp_path / "c.yaml"
    bad.write_text("provider: lambda\n")
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--config", str(bad)])
    assert str(info.value) == ("faasgate: config error: provider: must be one of knative, "
                               "process, got 'lambda'")


def test_node_id_and_lease_ttl() -> None:
    import socket

    config = ControllerConfig.from_dict({"nodeId": "gate-1", "etcd": {"leaseTTL": "4s"}})
    assert config.node_id == "gate-1" and config.etcd.lease_ttl == 4.0
    default = ControllerConfig.from_dict({})
    assert default.etcd.lease_ttl == 10.0
    assert default.node_id and default.node_id[0].isalnum()
    assert default.node_id.split("-")[0] in socket.gethostname() or default.node_id == "node"
    with pytest.raises(ConfigError, match="nodeId"):
        ControllerConfig.from_dict({"nodeId": "a/b"})
    with pytest.raises(ConfigError, match="leaseTTL"):
        ControllerConfig.from_dict({"etcd": {"leaseTTL": "100ms"}})


def test_admin_auth_defaults_and_paths(tmp_path):
    config = ControllerConfig.from_dict(None, tmp_path)
    auth = config.admin.auth
    assert auth.tokens_file == str(tmp_path / "data" / "admin-tokens")
    assert (auth.anonymous, auth.metrics_open, auth.basic_user_file) == ("none", False, "")
    assert not config.admin.allow_insecure and not config.admin.https
    (tmp_path / "u").write_text("admin")
    (tmp_path / "p").write_text("pw")
    config = ControllerConfig.from_dict({"httpServer": {"address": "127.0.0.1"},
                                         "admin": {"auth": {
        "tokensFile": "secrets/t", "anonymous": "read", "metricsOpen": True,
        "basicAuth": {"userFile": "u", "passwordFile": "p"}},
        "allowedHosts": ["ops.example"], "allowedOrigins": ["https://ops.example"]}}, tmp_path)
    auth = config.admin.auth
    assert auth.tokens_file == str(tmp_path / "secrets" / "t")
    assert auth.basic_password_file == str(tmp_path / "p") and auth.metrics_open
    assert config.admin.allowed_hosts == ("ops.example",)


@pytest.mark.parametrize("admin, message", [
    ({"auth": {"anonymous": "root"}}, "admin.auth.anonymous: must be one of none, read, admin"),
    ({"auth": {"basicAuth": {"userFile": "nope"}}}, "admin.auth.basicAuth.userFile: no such file"),
    ({"address": "0.0.0.0", "auth": {"anonymous": "admin"}},
     "admin.auth.anonymous: admin on the non-loopback admin.address '0.0.0.0'"),
    ({"auth": {"anonymous": "admin"}},
     "admin.auth.anonymous: admin on the non-loopback httpServer.address '0.0.0.0' (the "
     "gate relays /system/* to the admin API)"),
    ({"auth": {"anonymous": "read"}},
     "admin.auth.anonymous: read on the non-loopback httpServer.address '0.0.0.0'"),
    ({"https": True}, "admin.certFile: is required when https is true"),
    ({"allowedOrigins": ["ops.example"]}, "admin.allowedOrigins: must be origins"),
    ({"auth": {"tokenFile": "x"}}, "admin.auth.tokenFile: unknown field"),
])
def test_admin_auth_errors_name_the_key(tmp_path, admin, message):
    with pytest.raises(ConfigError) as caught:
        ControllerConfig.from_dict({"admin": admin}, tmp_path)
    assert str(caught.value).startswith(message)


LOOPBACK_GATE = {"address": "127.0.0.1"}


def test_anonymous_admin_needs_allow_insecure_off_loopback(tmp_path):
    assert ControllerConfig.from_dict(
        {"httpServer": LOOPBACK_GATE,
         "admin": {"address": "::1", "auth": {"anonymous": "admin"}}}, tmp_path)
    config = ControllerConfig.from_dict(
        {"admin": {"address": "0.0.0.0", "allowInsecure": True,
                   "auth": {"anonymous": "admin"}}}, tmp_path)
    assert config.admin.allow_insecure


@pytest.mark.parametrize("role", ["read", "admin"])
@pytest.mark.parametrize("gate, admin, refused", [
    ("127.0.0.1", "127.0.0.1", None),
    ("::1", "localhost", None),
    ("0.0.0.0", "127.0.0.1", "httpServer.address '0.0.0.0' (the gate relays /system/* to "
                             "the admin API)"),
    ("10.1.2.3", "127.0.0.1", "httpServer.address '10.1.2.3' (the gate relays /system/* to "
                              "the admin API)"),
    ("127.0.0.1", "0.0.0.0", "admin.address '0.0.0.0'"),
])
def test_anonymous_access_is_judged_by_the_gate_that_relays_system_too(
        tmp_path, role, gate, admin, refused):
    """The gate relays /system/* to the admin API: anonymous access through a gate that
    listens beyond loopback is as open as an admin port there."""
    data = {"httpServer": {"address": gate},
            "admin": {"address": admin, "auth": {"anonymous": role}}}
    if refused is None:
        assert ControllerConfig.from_dict(data, tmp_path).admin.auth.anonymous == role
    else:
        with pytest.raises(ConfigError) as caught:
            ControllerConfig.from_dict(data, tmp_path)
        what = {"admin": "run commands on this machine",
                "read": "read every function's spec, environment and logs"}[role]
        assert str(caught.value) == (
            f"admin.auth.anonymous: {role} on the non-loopback {refused} lets anyone who "
            f"reaches that port {what}; use tokens, or set admin.allowInsecure: true if "
            f"you mean it")
        data["admin"]["allowInsecure"] = True
        assert ControllerConfig.from_dict(data, tmp_path).admin.allow_insecure
    data["admin"]["auth"]["anonymous"] = "none"
    assert ControllerConfig.from_dict(data, tmp_path).admin.auth.anonymous == "none"


@pytest.mark.process
def test_twistd_refuses_anonymous_admin_on_the_network(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("admin: {address: 0.0.0.0, auth: {anonymous: admin}}\n")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "twistd"), "-n", "faasgate", "--config", str(bad)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
             **coverage_env()})
    assert result.returncode != 0
    assert result.stderr.startswith("faasgate: config error: admin.auth.anonymous: admin on "
                                    "the non-loopback")
    assert "admin.allowInsecure: true" in result.stderr


@pytest.mark.process
def test_twistd_refuses_anonymous_read_through_a_gate_on_the_network(tmp_path):
    """The issue's case: the admin port on loopback, the gate (which relays /system/*)
    on its default 0.0.0.0."""
    bad = tmp_path / "c.yaml"
    bad.write_text("admin: {address: 127.0.0.1, auth: {anonymous: read}}\n")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "twistd"), "-n", "faasgate", "--config", str(bad)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **coverage_env()})
    assert result.returncode != 0
    assert result.stderr.startswith(
        "faasgate: config error: admin.auth.anonymous: read on the non-loopback "
        "httpServer.address '0.0.0.0' (the gate relays /system/* to the admin API)")
    assert not (tmp_path / "data").exists()   # refused before anything started


def test_queue_defaults_and_overrides(tmp_path):
    queue = ControllerConfig.from_dict({}, tmp_path).queue
    assert queue.enabled and queue.embedded and queue.nats_urls == ()
    assert queue.data_dir == str(tmp_path / "data" / "nats")
    assert (queue.max_age, queue.max_body_size, queue.max_attempts, queue.concurrency) == (
        86400.0, 2**20, 5, 8)
    assert (queue.max_bytes, queue.max_queued, queue.ack_wait, queue.monitor_port) == (
        2**30, 1000, 5.0, 0)
    queue = ControllerConfig.from_dict({"queue": {
        "natsURLs": ["nats://10.0.0.1:4222", "tls://n2:4222"], "maxAge": "1h",
        "maxBodySize": "4Mi", "maxAttempts": 3, "concurrency": 2,
        "callbackAllow": ["10.0.0.0/8", "2001:db8::1"], "backoffBase": "100ms",
        "maxBytes": "64Mi", "maxQueued": 20, "ackWait": "2s", "monitorPort": 8222}},
        tmp_path).queue
    assert (queue.max_bytes, queue.max_queued, queue.ack_wait, queue.monitor_port) == (
        64 * 2**20, 20, 2.0, 8222)
    assert queue.embedded is False
    assert queue.nats_urls == ("nats://10.0.0.1:4222", "tls://n2:4222")
    assert (queue.max_age, queue.max_body_size, queue.max_attempts, queue.concurrency,
            queue.backoff_base) == (3600.0, 4 * 2**20, 3, 2, 0.1)
    assert queue.callback_allow == ("10.0.0.0/8", "2001:db8::1")


@pytest.mark.parametrize("queue,message", [
    ({"natsURLs": ["http://x:4222"]}, "queue.natsURLs: must be nats:// or tls:// URLs"),
    ({"callbackAllow": ["lan"]}, "queue.callbackAllow: 'lan' is not an IP address"),
    ({"maxAttempts": 0}, "queue.maxAttempts"),
    ({"concurrency": -1}, "queue.concurrency"),
    ({"maxBodySize": "1Gi"}, "queue.maxBodySize: must be at most 64Mi"),
    ({"backoffBase": "10m", "backoffMax": "1m"}, "queue.backoffBase: must not exceed"),
    ({"maxAge": "0s"}, "queue.maxAge"),
    ({"maxBytes": "2Mi"}, "queue.maxBytes: must hold at least four calls of maxBodySize"),
    ({"maxQueued": 0}, "queue.maxQueued: must be 1-10000000"),
    ({"ackWait": "100ms"}, "queue.ackWait"),
    ({"monitorPort": 70000}, "queue.monitorPort: must be 0-65535"),
    ({"bogus": 1}, "queue.bogus: unknown field"),
])
def test_queue_errors_name_the_key(tmp_path, queue, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("*", r"\*")):
        ControllerConfig.from_dict({"queue": queue}, tmp_path)


def test_make_run_keeps_its_tokens_where_the_readme_tour_reads_them(monkeypatch):
    # README: TOKEN=$(cat data/admin-tokens.admin) from the repository root, where
    # `make run` starts the node; all of its state is under data/ (`make clean`)
    monkeypatch.chdir(ROOT)
    config = load_config(ROOT / "conf" / "controller.yaml")
    data = ROOT / "data"
    assert config.admin.auth.tokens_file == str(data / "admin-tokens")
    assert config.admin.auth.anonymous == "none"
    assert (config.data_dir, config.process.data_dir) == (str(data), str(data))
    assert (config.etcd.data_dir, config.queue.data_dir, config.secrets.key_file) == (
        str(data / "etcd"), str(data / "nats"), str(data / "secrets.key"))


def test_every_data_path_defaults_under_data_dir(tmp_path, monkeypatch):
    """One folder holds all state; a relative dataDir is taken from the working
    directory (not the config's folder, which may be read-only /etc/faastwist)."""
    conf, work = tmp_path / "etc", tmp_path / "work"
    conf.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    for text, data in (("", work / "data"), ("dataDir: ./data\n", work / "data"),
                       ("dataDir: state\n", work / "state"),
                       ("dataDir: /srv/ft/\n", Path("/srv/ft")),
                       (f"dataDir: {tmp_path}/abs\n", tmp_path / "abs")):
        (conf / "c.yaml").write_text(text)
        config = load_config(conf / "c.yaml")
        assert config.data_dir == str(data), text
        assert (config.etcd.data_dir, config.queue.data_dir, config.process.data_dir,
                config.secrets.key_file, config.admin.auth.tokens_file) == (
            str(data / "etcd"), str(data / "nats"), str(data),
            str(data / "secrets.key"), str(data / "admin-tokens")), text
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (conf / "c.yaml").write_text("dataDir: ~/ft\n")
    assert load_config(conf / "c.yaml").data_dir == str(tmp_path / "home" / "ft")


def test_each_data_path_key_still_wins_from_the_files_folder(tmp_path, monkeypatch):
    """The older keys keep working when set: relative to the config file, as before."""
    conf = tmp_path / "etc"
    conf.mkdir()
    monkeypatch.chdir(tmp_path)
    (conf / "c.yaml").write_text(
        "dataDir: /var/lib/ft\n"
        "etcd: {dataDir: e}\nqueue: {dataDir: ../n}\nprocess: {dataDir: /srv/p}\n"
        "secrets: {keyFile: k/s.key}\nadmin: {auth: {tokensFile: t}}\n")
    config = load_config(conf / "c.yaml")
    assert config.data_dir == "/var/lib/ft"
    assert (config.etcd.data_dir, config.queue.data_dir, config.process.data_dir,
            config.secrets.key_file, config.admin.auth.tokens_file) == (
        str(conf / "e"), str(tmp_path / "n"), "/srv/p", str(conf / "k" / "s.key"),
        str(conf / "t"))


@pytest.mark.parametrize("data, message", [
    ({"dataDir": ""}, "dataDir: must be a folder path"),
    ({"dataDir": "  "}, "dataDir: must be a folder path"),
    ({"dataDir": 7}, "dataDir: must be a string"),
    ({"etcd": {"dataDir": ""}}, "etcd.dataDir: must be a folder path (leave it out for "),
    ({"queue": {"dataDir": ""}}, "queue.dataDir: must be a folder path"),
    ({"process": {"dataDir": ""}}, "process.dataDir: must be a folder path"),
    ({"secrets": {"keyFile": ""}}, "secrets.keyFile: must be a file path"),
    ({"admin": {"auth": {"tokensFile": ""}}}, "admin.auth.tokensFile: must be a file path"),
])
def test_data_path_errors_name_the_key(tmp_path, data, message):
    with pytest.raises(ConfigError) as info:
        ControllerConfig.from_dict(data, tmp_path)
    assert str(info.value).startswith(message)


def test_shipped_etc_config_keeps_all_state_in_var_lib(tmp_path, monkeypatch):
    """conf/etc/controller.yaml (for /etc/faastwist/) is valid and writes nothing beside
    itself: every data path under /var/lib/faastwist, wherever the node starts."""
    monkeypatch.chdir(tmp_path)
    config = load_config(ROOT / "conf" / "etc" / "controller.yaml")
    data = Path("/var/lib/faastwist")
    assert config.data_dir == str(data) and config.provider == "process"
    for path in (config.etcd.data_dir, config.queue.data_dir, config.process.data_dir,
                 config.secrets.key_file, config.admin.auth.tokens_file):
        assert Path(path) == data or data in Path(path).parents, path


def test_http_workers_default_auto_and_range(tmp_path, monkeypatch):
    assert ControllerConfig.from_dict(None, tmp_path).http_server.workers == 1
    read = lambda value: ControllerConfig.from_dict(
        {"httpServer": {"workers": value}}, tmp_path).http_server.workers
    assert read(2) == 2 and read(64) == 64
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert read("auto") == 6
    monkeypatch.setattr("os.cpu_count", lambda: 200)
    assert read("auto") == 64
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert read("auto") == 1


@pytest.mark.parametrize("value", [0, 65, -1, "two", "2", 1.5, True, [2]])
def test_http_workers_errors_name_the_key(tmp_path, value):
    with pytest.raises(ConfigError) as info:
        ControllerConfig.from_dict({"httpServer": {"workers": value}}, tmp_path)
    assert str(info.value).startswith("httpServer.workers: must be an integer 1-64 or auto")


def _documented_defaults(base: str, node_id: str, data: str) -> "ControllerConfig":
    """Every default README documents, written out (config folder ``base``, data folder
    ``data``)."""
    from faastwist.config import (AdminConfig, AuthConfig, EtcdConfig, HTTPServerConfig,
                                  KnativeConfig, ProcessConfig, QueueConfig, SecretsConfig,
                                  StoreConfig)

    return ControllerConfig(
        name="faascontroller", kind="FaaSController", node_id=node_id, provider="knative",
        sync_interval=10.0,
        http_server=HTTPServerConfig(
            port=10083, address="0.0.0.0", keep_alive=True, keep_alive_timeout=60.0,
            header_timeout=10.0, body_idle_timeout=30.0, https=False, cert_file="",
            key_file="", max_connections=10240, max_body_size=128 * 2**20,
            shutdown_timeout=30.0, access_log=True),
        knative=KnativeConfig(network_layer_url="http://127.0.0.1", host_suffix="example.com",
                              namespace="default", timeout=2.0, kubeconfig=""),
        etcd=EtcdConfig(endpoints=(), data_dir=f"{data}/etcd", prefix="/faas",
                        timeout=5.0, lease_ttl=10.0),
        process=ProcessConfig(idle_timeout=300.0, cold_start_timeout=30.0,
                              data_dir=data, user="", group="",
                              config_dir=base.rstrip("/") if base != "./" else ""),
        admin=AdminConfig(
            port=2381, address="127.0.0.1", max_body_size=2**20,
            auth=AuthConfig(tokens_file=f"{data}/admin-tokens", basic_user_file="",
                            basic_password_file="", anonymous="none", metrics_open=False),
            allow_insecure=False, allowed_hosts=(), allowed_origins=(), https=False,
            cert_file="", key_file=""),
        secrets=SecretsConfig(key_file=f"{data}/secrets.key"),
        queue=QueueConfig(
            enabled=True, nats_urls=(), data_dir=f"{data}/nats", max_age=86400.0,
            max_body_size=2**20, max_attempts=5, concurrency=8, callback_concurrency=32,
            callback_timeout=10.0, callback_allow=(), backoff_base=1.0, backoff_max=300.0,
            status_ttl=86400.0, timeout=5.0, max_bytes=2**30, max_queued=1000, ack_wait=5.0,
            monitor_port=0),
        store=StoreConfig(url="", file=""), data_dir=data)


def test_every_default_exactly_from_the_file_and_in_code(tmp_path):
    """An empty controller.yaml gives each documented default (data paths under the
    working directory's data/), and so does building the config in code (paths left
    relative)."""
    config = ControllerConfig.from_dict(None, tmp_path / "etc")
    assert config == _documented_defaults(f"{tmp_path}/etc/", config.node_id,
                                          f"{tmp_path}/data")
    built = ControllerConfig()
    assert built == _documented_defaults("./", built.node_id, "./data")


def test_every_key_is_read_from_its_own_name(tmp_path):
    """Each key set to a value that is not its default comes back exactly where it
    belongs (a misspelt key name in the reader would leave the default)."""
    from faastwist.config import (AdminConfig, AuthConfig, EtcdConfig, HTTPServerConfig,
                                  KnativeConfig, ProcessConfig, QueueConfig, SecretsConfig,
                                  StoreConfig)

    user = "nobody"   # a user functions may run as (never root), on any Debian
    data = {
        "name": "ctl2", "nodeId": "node-7", "dataDir": "d", "provider": "process", "syncInterval": "3s",
        "httpServer": {"port": 9001, "address": "127.0.0.2", "keepAlive": False,
                       "keepAliveTimeout": "7s", "headerTimeout": "3s",
                       "bodyIdleTimeout": "4s", "https": False, "certFile": "c.pem",
                       "keyFile": "k.pem", "maxConnections": 12, "maxBodySize": "2Ki",
                       "shutdownTimeout": "5s", "drainDelay": "2s", "accessLog": False},
        "knative": {"networkLayerURL": "https://kourier.local/", "hostSuffix": ".fn.local.",
                    "namespace": "team-a", "timeout": "3s", "kubeconfig": "kube.yaml"},
        "etcd": {"endpoints": ["http://10.0.0.1:2379/"], "dataDir": "e", "prefix": "/x/",
                 "timeout": "6s", "leaseTTL": "7s"},
        "process": {"idleTimeout": "8s", "coldStartTimeout": "9s", "dataDir": "p",
                    "user": user, "group": ""},
        "admin": {"port": 2400, "address": "127.0.0.3", "maxBodySize": "3Ki",
                  "auth": {"tokensFile": "t", "anonymous": "read", "metricsOpen": True},
                  "allowedHosts": ["ops.local"], "allowedOrigins": ["https://ops.local:8443"],
                  "https": False, "certFile": "ac.pem", "keyFile": "ak.pem"},
        "secrets": {"keyFile": "s.key"},
        "queue": {"enabled": False, "natsURLs": ["nats://10.0.0.2:4222"], "dataDir": "n",
                  "maxAge": "2h", "maxBodySize": "4Ki", "maxAttempts": 3, "concurrency": 2,
                  "callbackConcurrency": 4, "callbackTimeout": "2s",
                  "callbackAllow": ["10.0.0.0/8"], "backoffBase": "2s", "backoffMax": "1m",
                  "statusTTL": "1h", "timeout": "4s", "maxBytes": "5Mi", "maxQueued": 7,
                  "ackWait": "3s", "monitorPort": 8223},
        "store": {"file": "catalogue.json"},
    }
    base = f"{tmp_path}/"
    assert ControllerConfig.from_dict(data, tmp_path) == ControllerConfig(
        name="ctl2", kind="FaaSController", node_id="node-7", provider="process",
        sync_interval=3.0,
        http_server=HTTPServerConfig(
            port=9001, address="127.0.0.2", keep_alive=False, keep_alive_timeout=7.0,
            header_timeout=3.0, body_idle_timeout=4.0, https=False, cert_file=base + "c.pem",
            key_file=base + "k.pem", max_connections=12, max_body_size=2048,
            shutdown_timeout=5.0, drain_delay=2.0, access_log=False),
        knative=KnativeConfig(network_layer_url="https://kourier.local",
                              host_suffix="fn.local", namespace="team-a", timeout=3.0,
                              kubeconfig=base + "kube.yaml"),
        etcd=EtcdConfig(endpoints=("http://10.0.0.1:2379",), data_dir=base + "e",
                        prefix="/x", timeout=6.0, lease_ttl=7.0),
        process=ProcessConfig(idle_timeout=8.0, cold_start_timeout=9.0, data_dir=base + "p",
                              user=user, group="", config_dir=str(tmp_path.resolve())),
        admin=AdminConfig(
            port=2400, address="127.0.0.3", max_body_size=3072,
            auth=AuthConfig(tokens_file=base + "t", basic_user_file="",
                            basic_password_file="", anonymous="read", metrics_open=True),
            allow_insecure=False, allowed_hosts=("ops.local",),
            allowed_origins=("https://ops.local:8443",), https=False,
            cert_file=base + "ac.pem", key_file=base + "ak.pem"),
        secrets=SecretsConfig(key_file=base + "s.key"),
        queue=QueueConfig(
            enabled=False, nats_urls=("nats://10.0.0.2:4222",), data_dir=base + "n",
            max_age=7200.0, max_body_size=4096, max_attempts=3, concurrency=2,
            callback_concurrency=4, callback_timeout=2.0, callback_allow=("10.0.0.0/8",),
            backoff_base=2.0, backoff_max=60.0, status_ttl=3600.0, timeout=4.0,
            max_bytes=5 * 2**20, max_queued=7, ack_wait=3.0, monitor_port=8223),
        store=StoreConfig(url="", file=base + "catalogue.json"), data_dir=base + "d")
    url = "https://store.example/functions.json"
    assert ControllerConfig.from_dict({"store": {"url": url}}, tmp_path).store == StoreConfig(
        url=url, file="")


@pytest.mark.parametrize("store, message", [
    ({"url": "ftp://x/f.json"}, "store.url: must be an http:// or https:// URL"),
    ({"url": "https://x/f.json", "file": "f.json"},
     "store.file: give store.url or store.file, not both"),
    ({"path": "f.json"}, "store.path"),
])
def test_store_errors_name_the_key(tmp_path, store, message):
    with pytest.raises(ConfigError) as info:
        ControllerConfig.from_dict({"store": store}, tmp_path)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("section, key, lowest, highest", [
    ("httpServer", "port", 1, 65535), ("admin", "port", 1, 65535),
    ("httpServer", "maxConnections", 1, 1_000_000),
    ("httpServer", "headerTimeout", "1ms", None), ("httpServer", "bodyIdleTimeout", "1ms", None),
    ("knative", "timeout", "1ms", None), ("etcd", "timeout", "1ms", None),
    ("etcd", "leaseTTL", "1s", None), ("process", "coldStartTimeout", "1ms", None),
    ("queue", "maxAge", "1s", None), ("queue", "maxAttempts", 1, 100),
    ("queue", "concurrency", 1, 10000), ("queue", "callbackConcurrency", 1, 10000),
    ("queue", "callbackTimeout", "1ms", None), ("queue", "backoffBase", "1ms", None),
    ("queue", "statusTTL", "60s", None), ("queue", "timeout", "1ms", None),
    ("queue", "maxQueued", 1, 10_000_000), ("queue", "monitorPort", 0, 65535),
])
def test_the_bounds_themselves_are_accepted(tmp_path, section, key, lowest, highest):
    """README's ranges are inclusive; one step past either end is refused, naming it."""
    for value in (lowest, highest):
        if value is not None:
            ControllerConfig.from_dict({section: {key: value}}, tmp_path)
    below = lowest - 1 if isinstance(lowest, int) else "0.5ms" if lowest.endswith("ms") \
        else "59s" if lowest == "60s" else "0.5s"
    with pytest.raises(ConfigError, match=f"^{section}.{key}: "):
        ControllerConfig.from_dict({section: {key: below}}, tmp_path)
    if highest is not None:
        with pytest.raises(ConfigError, match=f"^{section}.{key}: "):
            ControllerConfig.from_dict({section: {key: highest + 1}}, tmp_path)


def test_the_default_node_id_is_the_host_name_made_valid(monkeypatch):
    from faastwist.config import default_node_id

    for host, node_id in (("--My Host!.example", "My-Host-.example"), ("Xhost", "Xhost"),
                          ("a" * 70, "a" * 63), ("...", "node"), ("", "node")):
        monkeypatch.setattr("socket.gethostname", lambda host=host: host)
        assert default_node_id() == node_id
        assert ControllerConfig().node_id == node_id


@pytest.mark.parametrize("address, loopback", [
    ("localhost", True), ("[LOCALHOST]", True), ("127.0.0.5", True), ("[::1]", True),
    ("0.0.0.0", False), ("10.1.2.3", False), ("nodehost", False),
    ("localhostX", False), ("X::1", False), ("127.0.0.1X", False),
])
def test_loopback_admin_addresses(tmp_path, address, loopback):
    """Anonymous admin is refused off loopback unless allowInsecure says so."""
    data = {"httpServer": LOOPBACK_GATE,
            "admin": {"address": address, "auth": {"anonymous": "admin"}}}
    if loopback:
        assert ControllerConfig.from_dict(data, tmp_path).admin.address == address
        return
    with pytest.raises(ConfigError) as info:
        ControllerConfig.from_dict(data, tmp_path)
    assert str(info.value) == (
        f"admin.auth.anonymous: admin on the non-loopback admin.address {address!r} lets "
        f"anyone who reaches that port run commands on this machine; use tokens, or set "
        f"admin.allowInsecure: true if you mean it")


def test_tls_and_basic_auth_files_must_exist_and_keep_their_roles(tmp_path):
    from faastwist.config import AdminConfig

    for name in ("c.pem", "k.pem", "user", "password"):
        (tmp_path / name).write_text("x")
    config = ControllerConfig.from_dict({
        "httpServer": {"https": True, "certFile": "c.pem", "keyFile": "k.pem"},
        "admin": {"https": True, "certFile": "c.pem", "keyFile": "k.pem",
                  "auth": {"basicAuth": {"userFile": "user", "passwordFile": "password"}}},
    }, tmp_path)
    assert config.admin.scheme == "https" and AdminConfig().scheme == "http"
    assert (config.admin.auth.basic_user_file, config.admin.auth.basic_password_file) == (
        str(tmp_path / "user"), str(tmp_path / "password"))
    for data, message in (
            ({"admin": {"https": True, "certFile": "c.pem", "keyFile": "gone.pem"}},
             f"admin.keyFile: no such file: {tmp_path / 'gone.pem'}"),
            ({"admin": {"auth": {"basicAuth": {"userFile": "user"}}}},
             "admin.auth.basicAuth.passwordFile: is required when basicAuth is set"),
            ({"admin": {"auth": {"basicAuth": {"userFile": "user", "passwordFile": "no"}}}},
             f"admin.auth.basicAuth.passwordFile: no such file: {tmp_path / 'no'}"),
            ({"admin": {"auth": {"tokensFile": ""}}},
             "admin.auth.tokensFile: must be a file path (leave it out for "
             f"{tmp_path / 'data' / 'admin-tokens'})"),
            ({"admin": {"allowedOrigins": ["https://ops.example:8443/x"]}},
             "admin.allowedOrigins: must be origins like https://ops.example:8443 (scheme, "
             "host, optional port), got 'https://ops.example:8443/x'"),
            ({"admin": {"allowedOrigins": ["ops.example"]}},
             "admin.allowedOrigins: must be origins like https://ops.example:8443 (scheme, "
             "host, optional port), got 'ops.example'")):
        with pytest.raises(ConfigError) as info:
            ControllerConfig.from_dict(data, tmp_path)
        assert str(info.value) == message
    assert ControllerConfig.from_dict(
        {"admin": {"allowedOrigins": ["http://ops.example/", "https://[::1]:8443"]}},
        tmp_path).admin.allowed_origins == ("http://ops.example/", "https://[::1]:8443")


@pytest.mark.parametrize("data, message", [
    ({"httpServer": {"http3": True}},
     "httpServer.http3: is not supported: Twisted has no HTTP/3; set it to false "
     "(HTTP/2 is offered over TLS when the h2 package is installed)"),
    ({"queue": {"natsURLs": ["http://x:4222"]}},
     "queue.natsURLs: must be nats:// or tls:// URLs, got 'http://x:4222'"),
    ({"queue": {"callbackAllow": ["10.0.0.0/8", "intranet"]}},
     "queue.callbackAllow: 'intranet' is not an IP address or CIDR network"),
    ({"queue": {"maxBodySize": "65Mi"}},
     "queue.maxBodySize: must be at most 64Mi (a queued call is one NATS message)"),
    ({"queue": {"backoffBase": "2m", "backoffMax": "1m"}},
     "queue.backoffBase: must not exceed backoffMax"),
    ({"queue": {"backoffBase": "1ms", "backoffMax": "0.5ms"}},
     "queue.backoffMax: must be at least 0.001s, got '0.5ms'"),
    ({"nodeId": "a/b"}, "nodeId: must be 1-63 letters, digits, '.', '_' or '-', got 'a/b'"),
    ({"nodeId": "n" * 64}, f"nodeId: must be 1-63 letters, digits, '.', '_' or '-', got {'n' * 64!r}"),
    ({"knative": {"namespace": "Team_A"}},
     "knative.namespace: must be a DNS-1123 label (lower-case letters, digits and '-', "
     "starting and ending with a letter or digit), got 'Team_A'"),
    ({"admin": {"allowedOrigins": ["ftp://ops.example"]}},
     "admin.allowedOrigins: must be origins like https://ops.example:8443 (scheme, host, "
     "optional port), got 'ftp://ops.example'"),
    ({"admin": {"allowedOrigins": ["https://ops.example//"]}},
     "admin.allowedOrigins: must be origins like https://ops.example:8443 (scheme, host, "
     "optional port), got 'https://ops.example//'"),
    ({"admin": {"allowedOrigins": ["https://ops.example/X"]}},
     "admin.allowedOrigins: must be origins like https://ops.example:8443 (scheme, host, "
     "optional port), got 'https://ops.example/X'"),
])
def test_more_errors_exactly(tmp_path, data, message):
    with pytest.raises(ConfigError) as info:
        ControllerConfig.from_dict(data, tmp_path)
    assert str(info.value) == message


def test_accepted_forms(tmp_path):
    """Only the characters the README names are trimmed (a trailing '/', the suffix's
    dots), whatever the value ends with."""
    config = ControllerConfig.from_dict({
        "knative": {"networkLayerURL": "http://gatewayX/", "hostSuffix": ".fnX."},
        "etcd": {"endpoints": ["http://etcdX/"]}}, tmp_path)
    assert config.knative.network_layer_url == "http://gatewayX"
    assert config.knative.host_suffix == "fnX"
    assert config.etcd.endpoints == ("http://etcdX",)
    # endpoints given: the node runs no etcd of its own (and none given: it does)
    assert config.etcd.embedded is False
    assert ControllerConfig.from_dict({}, tmp_path).etcd.embedded is True
    config = ControllerConfig.from_dict({
        "etcd": {"endpoints": ["https://10.0.0.1:2379/"], "prefix": "/tenantX/"},
        "queue": {"natsURLs": ["tls://10.0.0.2:4222"], "callbackAllow": [" 10.1.2.3/8 "],
                  "maxBodySize": "64Mi", "backoffBase": "1m", "backoffMax": "1m"},
    }, tmp_path)
    assert config.etcd.endpoints == ("https://10.0.0.1:2379",) and config.etcd.prefix == "/tenantX"
    assert config.queue.callback_allow == (" 10.1.2.3/8 ",)
    assert config.queue.max_body_size == 64 * 2**20
    # backoffMax's own minimum is the same 1 ms as backoffBase's (which must not exceed it)
    queue = ControllerConfig.from_dict(
        {"queue": {"backoffBase": "1ms", "backoffMax": "1ms"}}, tmp_path).queue
    assert (queue.backoff_base, queue.backoff_max) == (0.001, 0.001)


@pytest.mark.parametrize("process, message", [
    ({"uidRange": "9-5"}, "process.uidRange: must lie within 1000-4294967294"),
    ({"uidRange": "abc"}, "process.uidRange: must be FIRST-LAST"),
    ({"diskLimit": "512Ki"}, "process.diskLimit: must be at least 1Mi"),
    ({"pidsLimit": 8}, "process.pidsLimit: must be at least 16, got 8"),
    ({"network": "loopback"}, "process.network: must be one of host, none"),
])
def test_config_names_the_process_key(tmp_path: Path, process: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ControllerConfig.from_dict({"provider": "process", "process": process}, tmp_path)
    assert str(raised.value).startswith(message)


def test_config_defaults(tmp_path: Path) -> None:
    config = ControllerConfig.from_dict({"provider": "process"}, tmp_path).process
    assert (config.uid_range, config.disk_limit, config.pids_limit, config.network) == (
        "200000-265535", 128 * 2**20, 512, "host")


def test_kubernetes_section_defaults_paths_and_errors(tmp_path):
    config = ControllerConfig.from_dict(None, tmp_path)
    assert config.kubernetes.functions == "off" and not config.kubernetes.watch
    assert config.kubernetes.namespace == "default"
    assert config.kubernetes.finalizer_timeout == 300.0 and config.kubernetes.openfaas
    config = ControllerConfig.from_dict({"kubernetes": {
        "functions": "watch", "namespace": "", "kubeconfig": "kube/config",
        "finalizerTimeout": "90s", "openfaas": False}}, tmp_path)
    assert config.kubernetes.watch and config.kubernetes.namespace == ""
    assert config.kubernetes.kubeconfig == str(tmp_path / "kube" / "config")
    assert config.kubernetes.finalizer_timeout == 90.0 and not config.kubernetes.openfaas
    for section, key in (({"functions": "on"}, "kubernetes.functions"),
                         ({"namespace": "Not_A_Label"}, "kubernetes.namespace"),
                         ({"finalizerTimeout": "0s"}, "kubernetes.finalizerTimeout"),
                         ({"watch": True}, "kubernetes.watch")):
        with pytest.raises(ConfigError) as caught:
            ControllerConfig.from_dict({"kubernetes": section}, tmp_path)
        assert str(caught.value).startswith(key + ":"), caught.value


def test_kubernetes_watch_without_credentials_is_a_config_error_naming_the_key(tmp_path):
    from faastwist.kube.kubeapi import load_api_client

    with pytest.raises(ConfigError) as caught:
        load_api_client(str(tmp_path / "missing"))
    assert str(caught.value).startswith("kubernetes.kubeconfig: cannot load")
