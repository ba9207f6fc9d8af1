"""Real remote stores for tests: PostgreSQL, an S3 API server (moto) and an `mlflow server` in front
of them, each a real process on 127.0.0.1 (a free port), ended when its context manager exits.
A plain module (no pytest): test files and benchmarks import it by name; the thin fixtures are in
conftest.py.

    from stores import postgres, s3_server, mlflow_server

    with postgres() as pg:                      # PostgreSQL 15 (Debian's `postgresql` package)
        uri = pg.create_database("sweep")       # 'postgresql+psycopg2://postgres@127.0.0.1:PORT/sweep'
        pg.stop(); pg.start()                   # a restart (same port, same data): "the database went away"
    with s3_server() as s3:                     # moto's server mode
        s3.create_bucket("ray")
        s3.env                                  # AWS_* and MLFLOW_S3_ENDPOINT_URL for a process that uses it
        s3.storage_uri("ray", "results")        # 's3://ray/results' (found through s3.env's AWS_ENDPOINT_URL)
        s3.keys("ray", "results/")              # every object key under a prefix
    with mlflow_server(folder, backend=uri, artifacts=f"s3://ray/mlartifacts", env=s3.env) as url:
        ...                                     # 'http://127.0.0.1:PORT'; backend default: sqlite in `folder`

PostgreSQL refuses to run as root: as root, initdb and postgres run as the `postgres` user (the
Debian package creates it) in a temporary folder that user owns; otherwise as the current user.
Authentication is `trust` on loopback only. Install: `apt-get install postgresql` (the README's test
command does) and the extras `'.[postgres,s3]'` plus `moto[server]` (the `test` extra has them)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from support import free_port

# Dummy credentials: moto accepts any; set so that no real ones from the environment are used.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_SESSION_TOKEN": "testing", "AWS_EC2_METADATA_DISABLED": "true"}


def postgres_bin() -> str:
    """The folder of PostgreSQL's server programs (initdb, postgres): PG_BIN, else Debian's newest."""
    if os.environ.get("PG_BIN"):
        return os.environ["PG_BIN"]
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: apt-get install -y postgresql (the README's test command)")
    return os.path.dirname(found[-1])


def _stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal a process started with start_new_session=True (its whole group), SIGKILL after `timeout`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _wait_until(ready, proc: subprocess.Popen, log: Path, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None or time.time() > deadline:
            _stop_group(proc, signal.SIGKILL)
            raise RuntimeError(f"{what} did not start: " + log.read_text(errors="replace")[-2000:])
        time.sleep(0.3)


class Postgres:
    """A PostgreSQL server of its own (data folder, port). `uri(db)` / `create_database(name)` give
    SQLAlchemy URIs for MLflow; `stop()` is a fast shutdown (open connections are cut, as when the
    database host restarts), `start()` starts it again on the same port with the same data."""

    def __init__(self):
        self.bin = postgres_bin()
        self.user = "postgres" if os.geteuid() == 0 else None  # initdb and postgres refuse root
        self.folder = tempfile.mkdtemp(prefix="pg-", dir="/tmp")  # short: the socket path is limited
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self.data, self.log = os.path.join(self.folder, "data"), Path(self.folder) / "server.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        subprocess.run([f"{self.bin}/initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                        "--no-sync"], user=self.user, check=True, capture_output=True, cwd=self.folder)

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [f"{self.bin}/postgres", "-D", self.data, "-k", self.folder, "-h", "127.0.0.1", "-p", str(self.port),
                 "-c", "fsync=off", "-c", "max_connections=200"],
                user=self.user, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_until(self._ready, self.proc, self.log, "PostgreSQL")

    def _ready(self) -> bool:
        return subprocess.run([f"{self.bin}/pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-q"]).returncode == 0

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients' connections are closed, the data is kept."""
        if self.proc is not None:
            _stop_group(self.proc, signal.SIGINT)

    def uri(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its URI."""
        self.sql(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one SQL statement through psql; its unaligned output."""
        return subprocess.run([f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
                               "-At", "-c", statement], check=True, capture_output=True, text=True).stdout

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def postgres():
    """A started PostgreSQL (a `Postgres`), stopped and deleted afterwards."""
    pg = Postgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.close()


class S3Server:
    """moto's S3 API server. `env`: what a process needs to reach it (dummy AWS credentials,
    AWS_ENDPOINT_URL for boto3 and pyarrow, hence Ray's storage, MLFLOW_S3_ENDPOINT_URL for MLflow)."""

    def __init__(self, folder: str):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {**AWS_ENV, "AWS_ENDPOINT_URL": self.endpoint, "MLFLOW_S3_ENDPOINT_URL": self.endpoint}
        self.log = Path(folder) / "moto.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **self.env})
        _wait_until(self._ready, self.proc, self.log, "moto's S3 server")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2):
                return True
        except OSError:
            return False

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=AWS_ENV["AWS_DEFAULT_REGION"],
                            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in `bucket` under `prefix`."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    @staticmethod
    def storage_uri(bucket: str, path: str = "") -> str:
        """A storage path for Ray and pyarrow (the endpoint comes from `env`'s AWS_ENDPOINT_URL)."""
        return f"s3://{bucket}/{path}".rstrip("/")

    def close(self) -> None:
        _stop_group(self.proc)


@contextlib.contextmanager
def s3_server(folder: str | None = None):
    """A started moto S3 server (an `S3Server`), stopped afterwards (its data is in memory)."""
    own = folder is None
    folder = folder or tempfile.mkdtemp(prefix="moto-")
    server = S3Server(folder)
    try:
        yield server
    finally:
        server.close()
        if own:
            shutil.rmtree(folder, ignore_errors=True)


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1, in its own process group (it starts children), its log in
    `folder`/server.log. backend: its --backend-store-uri (default: sqlite in `folder`); artifacts:
    its --artifacts-destination (default: a folder in `folder`; s3://... needs `env`). `kill()`
    SIGKILLs the whole group (a server that dies), `start()` brings it back on the same port and
    store, `stop()` ends it."""

    def __init__(self, folder, port: int | None = None, backend: str | None = None, artifacts: str | None = None,
                 env: dict | None = None):
        self.folder, self.port = Path(folder), port or free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.url, self.db = f"http://127.0.0.1:{self.port}", self.folder / "server.db"
        self.backend, self.artifacts, self.env = backend or f"sqlite:///{self.db}", artifacts, env or {}
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = self.folder / "server.log"
        with open(log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--backend-store-uri", self.backend,
                 "--artifacts-destination", self.artifacts or str(self.folder / "artifacts"), "--workers", "1"],
                cwd=self.folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env})

        def ready() -> bool:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        _wait_until(ready, self.proc, log, "mlflow server")

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):  # its children too, even if it has ended
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, timeout=20)


@contextlib.contextmanager
def mlflow_server(folder, backend: str | None = None, artifacts: str | None = None, env: dict | None = None):
    """A MlflowServer for the block: its URL."""
    server = MlflowServer(folder, backend=backend, artifacts=artifacts, env=env)
    try:
        yield server.url
    finally:
        server.stop()
