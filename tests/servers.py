"""Real storage servers on 127.0.0.1 for the tests: moto (S3), Azurite, the GCS emulator, SFTP.

Each class is a context manager that starts its server on a free port and stops it on exit; the
session-scoped fixtures at the bottom wrap them. Clients built here always get explicit endpoints
and credentials, so no cloud SDK ever looks for a metadata server off the machine.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import asyncssh
import pytest

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient
    from google.cloud.storage import Client as GCSClient
    from botocore.client import BaseClient

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
AZURITE_BIN = ROOT / ".tools/azurite/node_modules/.bin/azurite-blob"


def free_port() -> int:
    """A port nothing listens on right now (another process may take it before it is used)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until an HTTP GET of `path` gets any response (http.client ignores *_PROXY variables)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.05)
        finally:
            conn.close()
    raise TimeoutError(f"{proc.args[0]} did not answer on {HOST}:{port}")


class _Managed:
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Subprocess(_Managed):
    """A server run as a child process logging to a file in its own temp dir; stopped with SIGTERM."""

    probe_path = "/"

    def __init__(self) -> None:
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix=f"{type(self).__name__.lower()}-"))
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """Variables the server starts with, beside this process's."""
        return {}

    def start(self) -> None:
        for attempt in range(3):  # the free port may be taken between probing and binding
            self.port = free_port()
            with open(self.dir / "server.log", "ab") as log:
                self._proc = subprocess.Popen(
                    self.command(), cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, **self.environment()},
                )
            try:
                wait_http(self.port, self.probe_path, self._proc)
                return
            except RuntimeError:
                if attempt == 2:
                    raise RuntimeError((self.dir / "server.log").read_text()[-2000:]) from None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


FAKESNOW = "fakesnow"
FAKESNOW_SPEC = ["fakesnow[server]==0.12.1", "--with", "snowflake-connector-python<4"]
"""Snowflake's emulator, as an isolated uv tool: it serves the login flow of connector 4.x (ours) but
imports a module of the 3.x connector, which our cryptography's cffi rules out of our environment."""


def fakesnow_bin() -> str:
    """fakesnow's command, installed as a uv tool when missing (`scripts/bootstrap --dev` does it too)."""
    tools = subprocess.run(["uv", "tool", "dir", "--bin"], capture_output=True, text=True).stdout.strip()
    found = shutil.which(FAKESNOW) or shutil.which(FAKESNOW, path=tools)
    if found is None:
        subprocess.run(["uv", "tool", "install", "--quiet", *FAKESNOW_SPEC], check=True)
        found = shutil.which(FAKESNOW, path=tools)
    assert found, f"{FAKESNOW} is not installed: run `scripts/bootstrap --dev`"
    return found


class SnowflakeServer(_Subprocess):
    """fakesnow (`fakesnow -s`): Snowflake's REST API over HTTP, every database in memory."""

    account, user, password = "fakesnow", "loader", "any"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        return [fakesnow_bin(), "-s", "--host", HOST, "-p", str(self.port)]

    def connect(self, **kwargs: Any) -> Any:
        """A connector session of our own (connector 4.x, the service's)."""
        import snowflake.connector

        return snowflake.connector.connect(user=self.user, password=self.password, account=self.account, host=HOST,
                                           port=self.port, protocol="http", **kwargs)

    def make_schema(self, database: str, schema: str) -> str:
        """DATABASE.SCHEMA, created (empty) for one test."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {database}.{schema}")
        return f"{database}.{schema}"


BQEMULATOR = ["bqemulator==1.3.0", "--with", "numpy"]
"""BigQuery's emulator (1.3.0 is the last for Python 3.11) as an isolated uv tool: its pins are its own."""


def tool_python(spec: list[str]) -> str:
    """The Python of the uv tool `spec[0]` names, installed when missing."""
    name = spec[0].split("==")[0].split("[")[0]
    folder = Path(subprocess.run(["uv", "tool", "dir"], capture_output=True, text=True, check=True).stdout.strip())
    python = folder / name / "bin" / "python"
    if not python.exists():
        subprocess.run(["uv", "tool", "install", "--quiet", "--python", "3.11", *spec], check=True)
    return str(python)


class BigQueryServer(_Subprocess):
    """bqemulator's REST API (tests/tools/bqemulator_start.py), every dataset in memory; its load jobs read
    `gs://BUCKET/NAME` from `gcs.files/BUCKET/NAME`, where the GCS emulator `gcs` keeps its objects."""

    probe_path = "/bigquery/v2/projects/analytics-export/datasets"
    project = "analytics-export"

    def __init__(self, gcs: DiskGCSServer) -> None:
        super().__init__()
        self.gcs = gcs

    def environment(self) -> dict[str, str]:
        return {"BQEMU_GCS_LOCAL_ROOT": str(self.gcs.files)}

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        return [tool_python(BQEMULATOR), str(ROOT / "tests/tools/bqemulator_start.py"), "start", "--rest-host", HOST,
                "--rest-port", str(self.port), "--grpc-host", HOST, "--grpc-port", "0", "--project", self.project,
                "--log-level", "warning"]

    def client(self) -> Any:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(project=self.project, credentials=AnonymousCredentials(),
                               client_options=ClientOptions(api_endpoint=self.endpoint))

    def make_dataset(self, name: str) -> str:
        client = self.client()
        try:
            client.create_dataset(name)
        finally:
            client.close()
        return name


class S3Server(_Managed):
    """moto's S3 in this process (its state is global: `mock_aws` in the same process shares it)."""

    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self._server.start()
        self.port = self._server.get_host_and_port()[1]

    def stop(self) -> None:
        self._server.stop()

    def client(self, endpoint: str | None = None, **config: Any) -> BaseClient:
        """A boto3 S3 client for `endpoint` (default: this server); `config` goes to botocore's Config."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


class AzuriteServer(_Subprocess):
    """Azurite's blob service (npm azurite, installed by scripts/azurite) with in-memory storage."""

    account_name = "devstoreaccount1"
    account_key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

    @property
    def account_url(self) -> str:
        return f"http://{HOST}:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={self.account_url};"
        )

    def command(self) -> list[str]:
        if not AZURITE_BIN.exists():
            raise RuntimeError(f"{AZURITE_BIN} is missing: run scripts/azurite")
        # No --location: Azurite refuses it with --inMemoryPersistence (its cwd is self.dir).
        flags = ["--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry", "--loose", "--silent"]
        return [str(AZURITE_BIN), "--blobHost", HOST, "--blobPort", str(self.port), *flags]

    def client(self, account_url: str | None = None, **kwargs: Any) -> BlobServiceClient:
        """A client for `account_url` (default: this server's) with the account's shared key.

        Pass e.g. `retry_policy=LinearRetry(backoff=0.1, random_jitter_range=0)` when retries are
        expected: the SDK's default ExponentialRetry waits 15 s before its first retry.
        """
        from azure.storage.blob import BlobServiceClient

        credential = {"account_name": self.account_name, "account_key": self.account_key}
        return BlobServiceClient(account_url or self.account_url, credential=credential, **kwargs)

    def make_container(self, name: str) -> str:
        with self.client() as service:
            service.create_container(name)
        return name


class GCSServer(_Subprocess):
    """gcp-storage-emulator, in memory. It serves one request at a time, HTTP/1.0 (no keep-alive).

    `client()` passes the endpoint explicitly. Code that builds its own google-cloud-storage client
    must get either `client_options={"api_endpoint": endpoint}` and `credentials=AnonymousCredentials()`,
    or the environment variable `STORAGE_EMULATOR_HOST=<endpoint>` (scheme included; the library then
    defaults to anonymous credentials). An explicit api_endpoint wins over the variable. With neither,
    google.auth looks for default credentials and probes the GCE metadata server.
    """

    probe_path = "/storage/v1/b?project=test"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        exe = Path(sys.executable).with_name("gcp-storage-emulator")
        return [str(exe), "start", "-H", HOST, "--port", str(self.port), "--in-memory", "-q"]

    def client(self, endpoint: str | None = None) -> GCSClient:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="test",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": endpoint or self.endpoint},
        )

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(name)
        return name


class DiskGCSServer(GCSServer):
    """gcp-storage-emulator keeping objects as files, `files/BUCKET/NAME` (for bqemulator to read)."""

    @property
    def files(self) -> Path:
        return self.dir / ".cloudstorage"

    def command(self) -> list[str]:
        return [str(Path(sys.executable).with_name("gcp-storage-emulator")), "start", "-H", HOST, "--port",
                str(self.port), "-q"]


class SFTPServer(_Managed):
    """An asyncssh SFTP server, chrooted to `root`, on its own event loop in a background thread.

    It accepts `username` with `password`, or with the key `client_key_pem` (OpenSSH format).
    """

    host = HOST
    username = "tester"
    password = "secret"

    def __init__(self, root: Path | None = None) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="sftp-")) if root is None else root
        self.port = 0
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key_pem = self.client_key.export_private_key("openssh").decode()
        self.authorized_keys = self.client_key.export_public_key("openssh").decode()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sftp-server", daemon=True)
        self._acceptor: asyncssh.SSHAcceptor | None = None

    @property
    def known_hosts_line(self) -> str:
        key = self.host_key.export_public_key("openssh").decode().split()
        return f"[{self.host}]:{self.port} {key[0]} {key[1]}"

    def start(self) -> None:
        self._thread.start()
        self._acceptor = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = self._acceptor.get_port()

    async def _listen(self) -> asyncssh.SSHAcceptor:
        username, password, chroot = self.username, self.password, os.fsencode(self.root)

        class Auth(asyncssh.SSHServer):
            def password_auth_supported(self) -> bool:
                return True

            def validate_password(self, user: str, given: str) -> bool:
                return user == username and given == password

        return await asyncssh.listen(
            self.host,
            0,
            server_factory=Auth,
            server_host_keys=[self.host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(self.authorized_keys),
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=chroot),
            allow_scp=False,
        )

    def stop(self) -> None:
        if self._acceptor is not None:
            acceptor = self._acceptor

            async def close() -> None:
                acceptor.close()
                await acceptor.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._acceptor = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def connect_options(self, **kwargs: Any) -> dict[str, Any]:
        """Keyword arguments for `asyncssh.connect` that trust only this server; key auth by default."""
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "known_hosts": asyncssh.import_known_hosts(self.known_hosts_line),
            "client_keys": [asyncssh.import_private_key(self.client_key_pem)],
            "agent_path": None,
            "config": [],
        }
        return options | kwargs


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteServer]:
    with AzuriteServer() as server:
        yield server


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSServer]:
    with GCSServer() as server:
        yield server


@pytest.fixture(scope="session")
def sftp_server() -> Iterator[SFTPServer]:
    with SFTPServer() as server:
        yield server


class HookServer(http.server.ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1 (HTTP/1.1, connections kept alive): each POST's headers (any
    case) and body go to `respond`, which answers it; subclasses say what a receiver does."""

    def __init__(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                status, headers = server.respond(self.headers, self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(status)
                for name, value in {**headers, "Content-Length": "0"}.items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__((HOST, 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def respond(self, headers: Any, body: bytes) -> tuple[int, dict[str, str]]:
        """The status and headers of the answer to a POST (`headers`: an email.message.Message)."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/hook"


@pytest.fixture(scope="session")
def snowflake_server() -> Iterator[SnowflakeServer]:
    with SnowflakeServer() as server:
        yield server


@pytest.fixture(scope="session")
def bigquery_server() -> Iterator[BigQueryServer]:
    with DiskGCSServer() as gcs, BigQueryServer(gcs) as server:
        yield server
