"""Checks of the places a command writes to or connects to, made before it writes or connects:
the MLflow tracking store, the storage folder, an earlier run to resume, the Ray cluster's address
and what this machine can hold. Each check returns None (fine) or one line saying what is wrong
and what is allowed; `check_sweep` runs them all for a sweep, before Ray starts and before any
MLflow run exists, so bad input costs seconds and leaves nothing behind.

Also how URIs are shown (`show_uri`) and printed commands are written (`command_line`); the
masking itself is `schema.mask`, through which every URI shown or stored goes. MLflow reads MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or
MLFLOW_TRACKING_TOKEN), the recommended way to give a tracking server credentials; a password in
the URI works too, but is masked wherever the tool shows or stores the URI and left out of the
commands it prints.

Torch-, Ray- and MLflow-free at import: each check imports what it needs, when it runs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import socket
import sys
import tempfile
import urllib.parse

from orchestrator.config import ConfigError, SweepSpec
from orchestrator.schema import CREDENTIALS, Resources, cut, mask, show

CONNECT_TIMEOUT_S = 3.0  # a TCP connect to a Ray head or a database; an HTTP probe gets 5 s

# ---------------------------------------------------------------------------------------------
# Credentials


def command_line(*args: str) -> str:
    """A command to copy and paste, each argument shell-quoted. A URI's user:password@ is left
    out, with a note: MLflow's client (requests) sends a URI's own credentials in preference to
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, so a masked password would fail."""
    line = " ".join(shlex.quote(CREDENTIALS.sub(r"\g<scheme>", a)) for a in args)
    if any(mask(a) != a for a in args):
        line += "  # credentials left out: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    return line


def masked_sweep_text(path: str) -> str:
    """The sweep file's text with every URI password masked: what is uploaded as the sweep's
    artefact (a password in tracking.uri must not land in the store it unlocks)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return mask(f.read())


# ---------------------------------------------------------------------------------------------
# The MLflow tracking store

DATABASES = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # MLflow's SQLAlchemy stores besides sqlite
# The URI form and driver that work with the SQLAlchemy MLflow pins, per database (SQLAlchemy 2.1's
# default postgresql driver is psycopg 3: psycopg2-binary serves only a postgresql+psycopg2:// URI).
DRIVERS = {"postgresql": "postgresql+psycopg2://... with pip install 'orchestrate[postgres]' (psycopg2-binary)",
           "mysql": "mysql+pymysql://... with pip install pymysql",
           "mssql": "mssql+pyodbc://... with pip install pyodbc"}
SQLITE_HEADER = b"SQLite format 3\x00"
ALLOWED_STORES = "http(s)://HOST[:PORT], sqlite:///FILE, postgresql+psycopg2://, mysql+pymysql://, mssql://"


def check_tracking(uri: str, *, existing: bool = False, timeout_s: float = 5.0) -> str | None:
    """None if `uri` names a tracking store MLflow can use from here, else why not (its password
    masked). `existing`: the store must already be there (readers — compare, evaluate, ui — never
    create one: a sqlite store that does not exist would be created empty)."""
    shown = show_uri(uri)
    scheme, sep, rest = uri.partition("://")
    base = scheme.lower().split("+")[0] if sep else "file"
    if base in ("http", "https"):
        return _check_http(uri, shown, timeout_s)
    if base == "sqlite":
        return _check_sqlite(rest, shown, existing)
    if base in DATABASES:
        return _check_database(uri, shown)
    if base == "file":
        return _check_file_store(rest if sep else uri, shown, existing)
    if base in ("databricks", "databricks-uc", "uc") or _store_plugin(base):
        return None  # resolved by MLflow's own configuration (profiles, plugins)
    return f"{shown}: {show(scheme)} is not a tracking store MLflow knows; allowed: {ALLOWED_STORES}"


def show_uri(uri: str) -> str:
    """A URI as a message or a printed line shows it: password masked, cut like any value."""
    text = mask(uri)
    return text if len(text) <= 200 and text.isprintable() else show(text)


def _check_http(uri: str, shown: str, timeout_s: float) -> str | None:
    import urllib.error
    import urllib.request

    parts = urllib.parse.urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        return f"{shown}: the port is not a number in 1..65535"
    if not parts.hostname:
        return f"{shown}: no host; allowed: {ALLOWED_STORES}"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host + (f":{port}" if port else "")
    health = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    request = urllib.request.Request(health, headers=_auth_headers(parts))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return None if answer.status == 200 else f"{shown}/health answered HTTP {answer.status}"
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return (f"{shown} refused the credentials (HTTP {e.code}); give them as MLFLOW_TRACKING_USERNAME "
                    f"and MLFLOW_TRACKING_PASSWORD")
        return f"{shown}/health answered HTTP {e.code}"
    except Exception as e:  # noqa: BLE001 - any other failure means unreachable
        return f"{shown} is unreachable ({cut(mask(str(getattr(e, 'reason', e))))})"


def _auth_headers(parts: urllib.parse.SplitResult) -> dict[str, str]:
    """The credentials MLflow's client would send: the URI's user:password, else
    MLFLOW_TRACKING_USERNAME/PASSWORD, else MLFLOW_TRACKING_TOKEN (urllib sends none by itself)."""
    if parts.username is not None:
        user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")
    elif os.environ.get("MLFLOW_TRACKING_USERNAME") is not None:
        user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    else:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _check_sqlite(rest: str, shown: str, existing: bool) -> str | None:
    # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db; sqlite:// is in memory.
    path = (rest[1:] if rest.startswith("/") else rest).split("?")[0]
    if path in ("", ":memory:"):
        return f"{shown}: an in-memory store forgets everything when the process ends; allowed: sqlite:///FILE"
    if os.path.isdir(path):
        return f"{shown}: {path} is a folder, not a sqlite file"
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                head = f.read(len(SQLITE_HEADER))
        except OSError as e:
            return f"{shown}: {path} cannot be read ({e.strerror})"
        if head and head != SQLITE_HEADER:  # an empty file is a new database to sqlite
            return f"{shown}: {path} is not a sqlite database"
        return None
    if existing:
        return (f"no MLflow store at {path} ({shown}); run `orchestrate sweep FILE` here first, or give "
                f"--tracking-uri / MLFLOW_TRACKING_URI")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"{shown}: folder {folder} does not exist"
    return _unwritable(folder, shown)


def _check_database(uri: str, shown: str) -> str | None:
    from sqlalchemy.engine import make_url  # an MLflow dependency: what MLflow's store itself uses

    try:
        url = make_url(uri)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's ArgumentError, ValueError for a bad port ...
        return f"{shown}: not a database URL ({cut(mask(str(e)))})"
    try:
        dialect = url.get_dialect()
        (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()  # SQLAlchemy 2 / 1.4
    except ImportError as e:
        return (f"{shown}: its driver is not installed ({cut(str(e))}); use "
                f"{DRIVERS[url.get_backend_name()]}, or sqlite:///FILE")
    except Exception as e:  # noqa: BLE001 - NoSuchModuleError: an unknown +driver
        return f"{shown}: {show(url.drivername)} is not a driver SQLAlchemy knows ({cut(str(e))})"
    if url.host:
        return _unreachable(url.host, url.port or DATABASES[url.get_backend_name()], shown)
    return None


def _check_file_store(path: str, shown: str, existing: bool) -> str | None:
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        return (f"{shown}: MLflow 3 keeps its file-system store in maintenance mode and refuses it; allowed: "
                f"{ALLOWED_STORES} (or set MLFLOW_ALLOW_FILE_STORE=true)")
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{shown}: {path} is a file, not a file store's folder"
    if existing and not os.path.isdir(path):
        return f"no MLflow store at {path} ({shown})"
    return None


def _store_plugin(scheme: str) -> bool:
    from importlib.metadata import entry_points

    return any(e.name == scheme for e in entry_points(group="mlflow.tracking_store"))


# ---------------------------------------------------------------------------------------------
# Storage (checkpoints, Tune's state, our state file)

# pyarrow.fs.FileSystem.from_uri's remote file systems: Ray's storage and storage.py both open
# the path through it. Not contacted here (a bucket is reached by every node, with their credentials).
REMOTE_STORAGE = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def check_storage(path: str) -> str | None:
    """None if checkpoints can be written under `path`, else why not. A local folder need not
    exist, but the nearest folder above it that does must be a folder this process can write in."""
    scheme, sep, rest = path.partition("://")
    if sep and scheme.lower() != "file":
        if scheme.lower() in REMOTE_STORAGE:
            return None
        return (f"{show_uri(path)}: {show(scheme)} is not a storage Ray can write; allowed: a local folder, "
                f"file://, " + ", ".join(f"{s}://" for s in REMOTE_STORAGE))
    local = os.path.abspath(os.path.expanduser(rest if sep else path))
    return check_folder(local, local)


def check_folder(path: str, shown: str) -> str | None:
    """None if this process can write in the local folder `path`, or make it: the nearest folder
    above it that exists must be a folder it can write in."""
    above = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        return f"{shown}: {above} is a file, not a folder"
    return _unwritable(above, shown)


def _unwritable(folder: str, shown: str) -> str | None:
    """None if this process can create things in `folder` (tried, and undone: os.access says yes
    to root on a read-only mount or a pseudo file system)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".orchestrate-probe-", dir=folder))
    except OSError as e:
        return f"{shown}: cannot write in {folder} ({e.strerror})"
    return None


def resumable(spec: SweepSpec) -> str:
    """The experiment folder of the sweep's latest run, for --resume; ConfigError if there is
    none or its state file cannot be read."""
    from orchestrator import storage

    try:
        name = storage.find_resumable(spec.storage_path, spec.name)
    except (ValueError, TypeError, AttributeError) as e:  # a state file that is not a JSON mapping
        where = _bad_state_file(spec.storage_path) or f"a {storage.STATE_FILE} under {spec.storage_path}"
        raise ConfigError(spec.file, "--resume", f"{where} is corrupt ({cut(str(e))}); move that folder away "
                                                 f"or start the sweep afresh without --resume") from None
    if name is None:
        raise ConfigError(spec.file, "--resume",
                          f"no earlier run of {show(spec.name)} under {show_uri(spec.storage_path)}")
    meta = storage.read_state(spec.storage_path, name)
    if not isinstance(meta, dict) or not isinstance(meta.get("parent_run_id"), str):
        raise ConfigError(spec.file, "--resume", f"{spec.storage_path}/{name}/{storage.STATE_FILE} names no "
                                                 f"MLflow parent run (parent_run_id); start the sweep afresh")
    if problem := storage.unreadable_tune_state(spec.storage_path, name):
        raise ConfigError(spec.file, "--resume", f"{problem}; this sweep cannot be continued: start it afresh "
                                                 f"without --resume")
    return name


def _bad_state_file(storage_path: str) -> str | None:
    """The first state file under the storage path that is not a JSON mapping (for the message only)."""
    from orchestrator import storage

    fs, root = storage.storage_fs(storage_path)
    import pyarrow.fs

    for entry in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)):
        path = f"{entry.path}/{storage.STATE_FILE}"
        try:
            with fs.open_input_stream(path) as f:
                if not isinstance(json.loads(f.read().decode()), (dict, type(None))):
                    return path
        except (FileNotFoundError, OSError):
            continue
        except ValueError:
            return path
    return None


# ---------------------------------------------------------------------------------------------
# The Ray cluster

RAY_GCS_PORT, RAY_CLIENT_PORT = 6379, 10001
ALLOWED_ADDRESSES = (f"HOST:PORT of a running Ray head (its GCS port, {RAY_GCS_PORT} by default), "
                     f"ray://HOST[:PORT] (Ray Client, port {RAY_CLIENT_PORT}), auto, local")


def check_address(address: str) -> str | None:
    """None if a Ray cluster answers at `address` (as ray.init takes it), else why not: a TCP
    connect with a short timeout, because ray.init retries a dead address for over a minute,
    printing C++ warnings and ignoring SIGTERM."""
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address  # how ray.init resolves it
        except ImportError:  # moved in another Ray: ray.init says it then
            return None
        try:
            resolved = canonicalize_bootstrap_address("auto")
        except ConnectionError:
            resolved = None
        except Exception as e:  # noqa: BLE001 - a malformed address file
            return f"auto: {cut(str(e))}"
        if resolved is None:
            return ("auto: no running Ray cluster found on this machine; start one (`ray start --head`) "
                    "or give HOST:PORT")
        return check_address(resolved)
    client = address.startswith("ray://")
    host, port = _host_port(address[len("ray://"):] if client else address, RAY_CLIENT_PORT if client else None)
    if host is None:
        return f"{show(address)} is not a Ray address; allowed: {ALLOWED_ADDRESSES}"
    if not 1 <= port <= 65535:
        return f"{show(address)}: port {port} is not in 1..65535"
    return _unreachable(host, port, cut(address, 80))


def _host_port(text: str, default_port: int | None) -> tuple[str | None, int]:
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,6}))?", text)
    if not match or (match[2] is None and default_port is None):
        return None, 0
    return match[1].strip("[]"), int(match[2]) if match[2] else default_port


def _unreachable(host: str, port: int, shown: str) -> str | None:
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except socket.timeout:
        return f"{shown}: no answer from {host}:{port} within {CONNECT_TIMEOUT_S:g} s"
    except OSError as e:
        return f"{shown}: cannot connect to {host}:{port} ({cut(e.strerror or str(e))})"
    return None


def check_local_capacity(resources: Resources) -> tuple[str, str] | None:
    """None if one trial fits the local Ray cluster a sweep would start on this machine, else
    (key, why not). Counted the way Ray will count: its CPU count (cgroup limits included), and
    the GPUs torch can use."""
    need = resources.per_trial()
    cpus = local_cpus()
    if need["CPU"] > cpus + 1e-9:
        driver = "" if resources.in_process else f" + {resources.driver_cpus:g} driver CPU"
        key = "resources.num_workers" if resources.num_workers > 1 else "resources.cpus_per_worker"
        return key, (f"{resources.num_workers} workers x {resources.cpus_per_worker:g} CPU{driver} = {need['CPU']:g} "
                     f"CPUs, but this machine has {cpus:g} (a local Ray cluster; join a bigger one with --address)")
    gpus = local_gpus() if resources.use_gpu else None
    if gpus is not None and need["GPU"] > gpus + 1e-9:
        key = "resources.num_workers" if resources.num_workers > 1 else "resources.gpus_per_worker"
        return key, (f"{resources.num_workers} workers x {resources.gpus_per_worker:g} GPU = {need['GPU']:g} GPUs, "
                     f"but this machine has {gpus} (use_gpu: false trains on CPUs)")
    if resources.placement_strategy == "STRICT_SPREAD" and resources.num_workers > 1:
        return "resources.placement_strategy", (f"STRICT_SPREAD puts each of the {resources.num_workers} workers on "
                                                f"its own node, but a local cluster has 1 node")
    return None


def local_cpus() -> float:
    try:
        from ray._private.utils import get_num_cpus  # what a local ray.init() will give its node
    except ImportError:
        return float(os.cpu_count() or 1)
    return get_num_cpus(override_docker_cpu_warning=True)


def local_gpus() -> int | None:
    """GPUs a trial could train on, or None when that cannot be known cheaply. torch is already
    imported by the time a sweep is checked (the arch registry needs it), and its count honours
    CUDA_VISIBLE_DEVICES; without torch, the NVIDIA driver's /proc entries."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.cuda.device_count()
    try:
        found = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return found if visible is None else min(found, len([d for d in visible.split(",") if d.strip()]))


# ---------------------------------------------------------------------------------------------
# A sweep's places, all at once


def check_sweep(spec: SweepSpec, *, address: str | None, resume: bool) -> tuple[str | None, str | None]:
    """Everything about where a sweep would run, checked before Ray starts and before any MLflow
    run is created: ConfigError naming the key for the first problem, else (the experiment folder
    to resume or None, the Ray address to join or None to start a local cluster)."""
    key = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":  # ray.init's word for "start one here"
        address = None
    reason = check_storage(spec.storage_path)
    if reason:
        raise ConfigError(spec.file, "storage", reason)
    if address is None:
        problem = check_local_capacity(spec.resources)
        if problem:
            raise ConfigError(spec.file, *problem)
    restore_name = resumable(spec) if resume else None
    reason = check_tracking(spec.tracking_uri)
    if reason:
        raise ConfigError(spec.file, "tracking.uri", reason)
    if address is not None:
        reason = check_address(address)
        if reason:
            raise ConfigError(spec.file, key, reason)
    return restore_name, address
