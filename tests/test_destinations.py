"""Remote destinations end to end: exports through the API to real servers on 127.0.0.1 (moto S3,
Azurite, the GCS emulator, an asyncssh SFTP server, a webhook receiver made here), read back with
each service's official client and compared byte for byte with a download export of the same request."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import io
import json
import socket
import threading
import time
import zlib
from typing import Any

import asyncssh
import pyarrow.parquet as pq
import pytest
from conftest import with_demo_events
from faults import Drop, FaultyProxy, Respond, when
from helpers import decompress
from servers import HookServer
from service import Service, cli, create_key, wait_for

from analytics_export import export

WINDOW = {"start_date": "2026-08-01", "end_date": "2026-11-01"}
EVENTS = 20_000


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory, gcs_server):
    data = with_demo_events(tmp_path_factory.mktemp("dest"), EVENTS)
    env = {"ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]', "STORAGE_EMULATOR_HOST": gcs_server.endpoint,
           "ANALYTICS_EXPORT_EXPORT__UPLOAD_RETRIES": "2", "ANALYTICS_EXPORT_EXPORT__UPLOAD_BACKOFF_SECONDS": "0.05",
           "ANALYTICS_EXPORT_EXPORT__MAX_ATTEMPTS": "1", "ANALYTICS_EXPORT_EXPORT__MAX_CONCURRENT_EXPORTS": "50"}
    return make_service(data, 2, env)


@pytest.fixture(scope="module")
def client(service):
    with service.client(service.key) as c:
        yield c


def connect(client, name: str, type: str, **secrets: str) -> str:
    response = client.post("/api/connections", json={"name": name, "type": type, "secrets": secrets})
    assert response.status_code in (201, 409), response.text
    return name


def run(client, destination: dict, status: str = "completed", **request) -> dict:
    body = {**WINDOW, "format": "json_lines", **request, "destination": destination}
    created = client.post("/api/exports", json=body)
    assert created.status_code == 202, created.text
    if status == "failed":
        deadline = time.monotonic() + 60
        while (view := client.get(f"/api/exports/{created.json()['id']}").json())["status"] != "failed":
            assert view["status"] != "completed" and time.monotonic() < deadline, view
            time.sleep(0.05)
        return view
    return wait_for(client, created.json()["id"], status)


def rows_of(data: bytes, compression: str | None = None) -> list[bytes]:
    """A text export's lines without their separators, sorted: two exports of the same query hold the
    same rows, in whichever order the engine's parallel scan gave them. Parquet: its rows, read by pyarrow."""
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        return sorted(repr(sorted(row.items())).encode() for row in pq.read_table(io.BytesIO(data)).to_pylist())
    return sorted(line.rstrip(b",") for line in decompress(data, compression).splitlines())


def downloaded(client, **request) -> bytes:
    view = run(client, {"type": "download"}, **request)
    return client.get(view["result"]["download_url"]).content


def s3_connection(client, s3) -> str:
    return connect(client, "s3", "s3", access_key_id=s3.access_key, secret_access_key=s3.secret_key)


def pending_uploads(s3, bucket: str) -> list:
    return s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def keys(s3, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


# -- S3 -------------------------------------------------------------------------------------------

def test_s3_object_matches_the_download(client, s3_server):
    bucket = s3_server.make_bucket("exports-same")
    request = {"format": "csv", "compression": "zstd", "properties": ["plan", "price"]}
    destination = {"type": "s3", "bucket": bucket, "endpoint_url": s3_server.endpoint, "region": "us-east-1",
                   "connection": s3_connection(client, s3_server), "prefix": "team/",
                   "path_template": "year={year}/month={month}/day={day}", "server_side_encryption": "AES256"}
    view = run(client, destination, **request)
    key = f"team/year=2026/month=08/day=01/export_{view['id']}_20260801_to_20261101.csv.zst"
    assert view["result"]["destination_path"] == f"s3://{bucket}/{key}"
    assert view["result"]["download_url"] is None and view["result"]["expires_at"] is None
    got = s3_server.client().get_object(Bucket=bucket, Key=key)
    assert got["ServerSideEncryption"] == "AES256"
    body = got["Body"].read()
    assert rows_of(body, request.get("compression")) == rows_of(downloaded(client, **request), request.get("compression"))
    assert decompress(body, "zstd").startswith(b"event,distinct_id,timestamp,plan,price\r\n")
    assert keys(s3_server, bucket) == [key] and not pending_uploads(s3_server, bucket)


def test_s3_split_parts_and_manifest(client, s3_server):
    bucket = s3_server.make_bucket("exports-split")
    destination = {"type": "s3", "bucket": bucket, "endpoint_url": s3_server.endpoint,
                   "connection": s3_connection(client, s3_server), "max_events_per_file": 6_000}
    view = run(client, destination, format="parquet")
    manifest_key = view["result"]["destination_path"].removeprefix(f"s3://{bucket}/")
    assert manifest_key.endswith(".manifest.json")
    manifest = json.loads(s3_server.client().get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    total = view["result"]["total_events"]
    assert manifest["total_events"] == total > 6_000
    assert [f["events"] for f in manifest["files"]] == [6_000] * (total // 6_000) + ([total % 6_000] if total % 6_000 else [])
    rows = 0
    for n, entry in enumerate(manifest["files"], start=1):
        assert entry["name"].endswith(f".part-{n:05d}.parquet")
        data = s3_server.client().get_object(Bucket=bucket, Key=entry["uri"].removeprefix(f"s3://{bucket}/"))["Body"].read()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
        rows += pq.read_table(io.BytesIO(data)).num_rows  # every part is a whole Parquet file
    assert rows == total and sorted(keys(s3_server, bucket)) == sorted(
        [manifest_key] + [f["uri"].removeprefix(f"s3://{bucket}/") for f in manifest["files"]])


def test_s3_split_by_size(client, s3_server):
    bucket = s3_server.make_bucket("exports-size")
    destination = {"type": "s3", "bucket": bucket, "endpoint_url": s3_server.endpoint,
                   "connection": s3_connection(client, s3_server), "max_file_size_mb": 1}
    view = run(client, destination)
    manifest = json.loads(s3_server.client().get_object(
        Bucket=bucket, Key=view["result"]["destination_path"].removeprefix(f"s3://{bucket}/"))["Body"].read())
    sizes = [f["bytes"] for f in manifest["files"]]
    assert len(sizes) > 3 and max(sizes) <= 1.1 * (1 << 20) and sum(sizes) == view["result"]["file_size"]


def test_s3_retries_a_failed_part_and_a_dropped_connection(client, s3_server):
    bucket = s3_server.make_bucket("exports-flaky")
    # the part upload's connection is dropped once, and the completion (2nd POST) answers 500 once
    faults = lambda m, p, n: Drop() if (m, n) == ("PUT", 1) else Respond(500) if (m, n) == ("POST", 2) else None  # noqa: E731
    with FaultyProxy(s3_server.endpoint, faults) as proxy:
        destination = {"type": "s3", "bucket": bucket, "endpoint_url": proxy.url,
                       "connection": s3_connection(client, s3_server)}
        view = run(client, destination, format="json")
        statuses = [(m, status) for m, _, status in proxy.log]
        assert ("PUT", None) in statuses and ("POST", 500) in statuses
    key = view["result"]["destination_path"].removeprefix(f"s3://{bucket}/")
    assert rows_of(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()) == rows_of(
        downloaded(client, format="json"))
    assert not pending_uploads(s3_server, bucket)


def test_s3_persistent_failure_leaves_nothing(client, s3_server):
    bucket = s3_server.make_bucket("exports-broken")
    # part 1 of the export completes; every upload of part 2 answers 503: part 1 must be taken back
    with FaultyProxy(s3_server.endpoint, when("PUT", "part-00002", Respond(503), nth=range(1, 99))) as proxy:
        destination = {"type": "s3", "bucket": bucket, "endpoint_url": proxy.url,
                       "connection": s3_connection(client, s3_server), "max_events_per_file": 8_000}
        view = run(client, destination, status="failed", format="json")
    assert "failed after retries" in view["result"]["error"]
    assert keys(s3_server, bucket) == [] and not pending_uploads(s3_server, bucket)


def test_s3_permanent_errors_say_what_to_fix(client, s3_server):
    destination = {"type": "s3", "bucket": "no-such-bucket", "endpoint_url": s3_server.endpoint,
                   "connection": s3_connection(client, s3_server)}
    view = run(client, destination, status="failed")
    assert "does not exist" in view["result"]["error"]
    bad = connect(client, "s3-bad", "s3", access_key_id="AKIAWRONG", secret_access_key="wrong-secret-value")
    bucket = s3_server.make_bucket("exports-denied")
    with FaultyProxy(s3_server.endpoint, when("PUT", "", Respond(403), nth=range(1, 99))) as proxy:
        view = run(client, {"type": "s3", "bucket": bucket, "endpoint_url": proxy.url, "connection": bad},
                   status="failed")
    assert "check the connection's credentials" in view["result"]["error"]


# -- Azure, GCS, SFTP -----------------------------------------------------------------------------

def test_azure_blob_matches_the_download(client, azurite):
    container = azurite.make_container("exports")
    conn = connect(client, "az", "azure", account_name=azurite.account_name, account_key=azurite.account_key)
    request = {"format": "json", "compression": "gzip", "events": ["$pageview"]}
    view = run(client, {"type": "azure", "container": container, "account_url": azurite.account_url,
                        "connection": conn, "prefix": "raw"}, **request)
    name = f"raw/export_{view['id']}_20260801_to_20261101.json.gz"
    assert view["result"]["destination_path"] == f"az://{container}/{name}"
    with azurite.client() as service:
        blob = service.get_blob_client(container, name)
        assert rows_of(blob.download_blob().readall(), "gzip") == rows_of(downloaded(client, **request), "gzip")
        assert [b.name for b in service.get_container_client(container).list_blobs()] == [name]


def test_azure_failure_leaves_no_blob(client, azurite):
    container = azurite.make_container("exports-broken")
    conn = connect(client, "az", "azure", account_name=azurite.account_name, account_key=azurite.account_key)
    url = azurite.account_url
    with FaultyProxy(url, when("PUT", "comp=blocklist", Respond(500), nth=range(1, 99))) as proxy:
        view = run(client, {"type": "azure", "container": container, "connection": conn,
                            "account_url": proxy.url}, status="failed")
    assert view["result"]["error"]
    with azurite.client() as service:
        assert list(service.get_container_client(container).list_blobs()) == []


def test_gcs_object_matches_the_download(client, gcs_server):
    bucket = gcs_server.make_bucket("exports-gcs")
    request = {"format": "parquet", "compression": "zstd"}  # Avro is not comparable: its sync marker is random
    view = run(client, {"type": "gcs", "bucket": bucket, "prefix": "pq"}, **request)
    name = f"pq/export_{view['id']}_20260801_to_20261101.parquet"
    assert view["result"]["destination_path"] == f"gs://{bucket}/{name}"
    assert rows_of(gcs_server.client().bucket(bucket).blob(name).download_as_bytes(), request.get("compression")) == \
        rows_of(downloaded(client, **request), request.get("compression"))


def test_gcs_retries_a_failed_chunk_and_leaves_nothing_when_it_keeps_failing(client, gcs_server):
    bucket = gcs_server.make_bucket("exports-gcs-flaky")
    # the 2nd request, the first chunk PUT of the resumable session, answers 503 once
    with FaultyProxy(gcs_server.endpoint, when("PUT", "/upload/", Respond(503), nth={1})) as proxy:
        view = run(client, {"type": "gcs", "bucket": bucket, "endpoint_url": proxy.url}, format="json")
        assert ("PUT", 503) in [(m, status) for m, _, status in proxy.log]
    name = view["result"]["destination_path"].removeprefix(f"gs://{bucket}/")
    assert rows_of(gcs_server.client().bucket(bucket).blob(name).download_as_bytes()) == rows_of(
        downloaded(client, format="json"))
    with FaultyProxy(gcs_server.endpoint, when("PUT", "/upload/", Respond(500), nth=range(1, 99))) as proxy:
        view = run(client, {"type": "gcs", "bucket": bucket, "endpoint_url": proxy.url, "prefix": "broken"},
                   status="failed", format="json")
    assert "failed" in view["result"]["error"]
    assert [b.name for b in gcs_server.client().list_blobs(bucket)] == [name]


def test_gcs_service_account_connection(client, gcs_server):
    """The connection's service account signs a JWT, trades it for a token at its token_uri (a server
    made here), and the upload carries that token."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    grants: list[bytes] = []

    class TokenHandler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            grants.append(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps({"access_token": "token-from-test", "expires_in": 3600, "token_type": "Bearer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    tokens = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenHandler)
    threading.Thread(target=tokens.serve_forever, daemon=True).start()
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    account = {"type": "service_account", "project_id": "test", "private_key_id": "k1", "private_key": pem,
               "client_email": "exporter@test.iam.gserviceaccount.com", "client_id": "1",
               "token_uri": f"http://127.0.0.1:{tokens.server_address[1]}/token"}
    conn = connect(client, "gcs-sa", "gcs", service_account_json=json.dumps(account))
    bucket = gcs_server.make_bucket("exports-sa")
    with FaultyProxy(gcs_server.endpoint) as proxy:
        view = run(client, {"type": "gcs", "bucket": bucket, "connection": conn, "endpoint_url": proxy.url})
    tokens.shutdown()
    assert grants and b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" in grants[0]
    name = view["result"]["destination_path"].removeprefix(f"gs://{bucket}/")
    assert rows_of(gcs_server.client().bucket(bucket).blob(name).download_as_bytes()) == rows_of(downloaded(client))
    assert pem.splitlines()[1] not in json.dumps(client.get("/api/connections").json())


def test_azure_retries_a_failed_block(client, azurite):
    container = azurite.make_container("exports-flaky")
    conn = connect(client, "az", "azure", account_name=azurite.account_name, account_key=azurite.account_key)
    with FaultyProxy(azurite.account_url, when("PUT", "comp=block", Respond(500), nth={1})) as proxy:
        view = run(client, {"type": "azure", "container": container, "connection": conn,
                            "account_url": proxy.url}, format="csv")
        assert ("PUT", 500) in [(m, status) for m, _, status in proxy.log]
    name = view["result"]["destination_path"].removeprefix(f"az://{container}/")
    with azurite.client() as service:
        assert rows_of(service.get_blob_client(container, name).download_blob().readall()) == rows_of(
            downloaded(client, format="csv"))


def test_sftp_file_matches_the_download(client, sftp_server):
    conn = connect(client, "sftp-key", "sftp", private_key=sftp_server.client_key_pem,
                   known_hosts=sftp_server.known_hosts_line)
    request = {"format": "json_lines", "compression": "zstd"}
    view = run(client, {"type": "sftp", "host": sftp_server.host, "port": sftp_server.port, "connection": conn,
                        "username": sftp_server.username, "path": "/drop", "path_template": "{format}"}, **request)
    path = sftp_server.root / "drop" / "json_lines" / f"export_{view['id']}_20260801_to_20261101.jsonl.zst"
    assert rows_of(path.read_bytes(), request.get("compression")) == rows_of(downloaded(client, **request),
                                                                             request.get("compression"))
    assert not list(sftp_server.root.rglob("*.partial"))


def test_sftp_refuses_an_unknown_host_key_and_a_bad_password(client, sftp_server):
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()
    wrong = connect(client, "sftp-wrong-host", "sftp", password=sftp_server.password,
                    known_hosts=f"[{sftp_server.host}]:{sftp_server.port} {other[0]} {other[1]}")
    destination = {"type": "sftp", "host": sftp_server.host, "port": sftp_server.port,
                   "username": sftp_server.username, "path": "/refused"}
    assert "host key" in run(client, {**destination, "connection": wrong}, status="failed")["result"]["error"]
    bad = connect(client, "sftp-bad-password", "sftp", password="not-the-password",
                  known_hosts=sftp_server.known_hosts_line)
    error = run(client, {**destination, "connection": bad}, status="failed")["result"]["error"]
    assert "refused the login" in error and "not-the-password" not in error
    assert not (sftp_server.root / "refused").exists() or not list((sftp_server.root / "refused").iterdir())


class CutProxy:
    """A TCP relay that cuts every connection once `limit` bytes went from the client to the server."""

    def __init__(self, port: int, limit: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target, self.limit, self.cuts = port, limit, 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, self.limit), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, None), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                sent += len(data)
                if limit is not None and sent > limit:
                    self.cuts += 1
                    break
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()


def test_sftp_dropped_connection_fails_without_a_final_file(client, sftp_server):
    cut = CutProxy(sftp_server.port, 1 << 20)
    conn = connect(client, "sftp-cut", "sftp", password=sftp_server.password,
                   known_hosts=f"[127.0.0.1]:{cut.port} {sftp_server.known_hosts_line.split(' ', 1)[1]}")
    try:
        view = run(client, {"type": "sftp", "host": "127.0.0.1", "port": cut.port, "connection": conn,
                            "username": sftp_server.username, "path": "/cut"}, status="failed")
    finally:
        cut.close()
    assert cut.cuts and "connection" in view["result"]["error"]
    assert not [p for p in (sftp_server.root / "cut").iterdir() if not p.name.endswith(".partial")]


# -- webhook --------------------------------------------------------------------------------------

class Receiver(HookServer):
    """Records each POST (headers, body); fails the first `fail` requests with 503 + Retry-After."""

    def __init__(self, fail: int = 0) -> None:
        self.requests: list[tuple[dict, bytes]] = []
        self.fail = fail
        super().__init__()

    def respond(self, headers: Any, body: bytes) -> tuple[int, dict[str, str]]:
        if self.fail > 0:
            self.fail -= 1
            return 503, {"Retry-After": "0"}
        self.requests.append((dict(headers), body))
        return 204, {}


def verify(secret: bytes, headers: dict, body: bytes) -> bool:
    """What a receiver does: HMAC-SHA256 over `timestamp.` + body, compared in constant time."""
    expected = hmac.new(secret, headers["X-Signature-Timestamp"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Signature"], f"sha256={expected}")


def test_webhook_batches_are_signed_valid_documents(client):
    receiver = Receiver(fail=1)
    conn = connect(client, "hook", "webhook", signing_secret="hook-secret", authorization="Bearer hook-token")
    request = {"format": "json", "events": ["$pageview"]}
    view = run(client, {"type": "webhook", "url": receiver.url, "connection": conn, "batch_max_events": 2_000,
                        "headers": {"X-Team": "growth"}}, **request)
    receiver.shutdown()
    total = view["result"]["total_events"]
    count = -(-total // 2_000)
    assert len(receiver.requests) == count > 1 and view["result"]["destination_path"] == receiver.url
    events = []
    for index, (headers, body) in enumerate(receiver.requests, start=1):
        assert headers["X-Batch-Index"] == str(index) and headers["X-Batch-Count"] == str(count)
        assert headers["X-Export-Id"] == view["id"] and headers["X-Team"] == "growth"
        assert headers["Authorization"] == "Bearer hook-token" and headers["Content-Type"] == "application/json"
        assert verify(b"hook-secret", headers, body) and not verify(b"other", headers, body)
        events += json.loads(body)  # each batch is a whole JSON document
    assert json.dumps(events).encode() == json.dumps(json.loads(downloaded(client, **request))).encode()


def test_webhook_compressed_body_carries_content_encoding(client):
    receiver = Receiver()
    view = run(client, {"type": "webhook", "url": receiver.url}, compression="gzip")
    receiver.shutdown()
    (headers, body), = receiver.requests
    assert headers["Content-Encoding"] == "gzip" and headers["Content-Type"] == "application/x-ndjson"
    assert "X-Signature" not in headers
    stream = zlib.decompressobj(31)  # a receiver decodes Content-Encoding in one pass: one gzip member
    assert len(stream.decompress(body).splitlines()) == view["result"]["total_events"]
    assert stream.eof and stream.unused_data == b""


BAD_HEADERS = [
    ({"X-Name": "café"}, "non-ASCII character at position 3"),
    ({"X-Soh": "a\u0001b"}, "control character U+0001"),
    ({"X-Nul": "a\u0000b"}, "text may not hold NUL"),
    ({"X-Tab-Ok": "a\tb", "X-Lf": "a\nb"}, "header 'X-Lf'"),
    ({"X Space": "x"}, "RFC 9110 token"),
    ({"X-Long": "x" * 8193}, "at most 8192"),
    ({f"X-H{i}": "v" for i in range(51)}, "at most 50"),
    ({f"X-H{i}": "v" * 8000 for i in range(2)}, "at most 12288"),
    ({"X-Dup": "1", "x-dup": "2"}, "given twice"),
    ({"X-Stream-Id": "1"}, "set by analytics-export"),
]


@pytest.mark.parametrize("headers, message", BAD_HEADERS, ids=[m for _, m in BAD_HEADERS])
def test_bad_webhook_headers_are_422_when_created(client, headers, message):
    """Exports and schedules: the header and the rule it breaks, before anything is stored."""
    destination = {"type": "webhook", "url": "http://127.0.0.1:9/hook", "headers": headers}
    for path, body in (("/api/exports", {**WINDOW, "destination": destination}),
                       ("/api/schedules", {"name": "h", "schedule": "0 2 * * *", "destination": destination})):
        response = client.post(path, json=body)
        assert response.status_code == 422 and message in response.json()["detail"], (path, response.text)
        assert "headers" in response.json()["detail"]


def test_a_bad_connection_authorization_is_422_without_echoing_it(client):
    for value, message in (("Bearer séc", "non-ASCII"), ("Bearer a\r\nX-Evil: 1", "U+000D")):
        response = client.post("/api/connections", json={"name": "bad-auth", "type": "webhook",
                                                           "secrets": {"authorization": value}})
        assert response.status_code == 422 and message in response.json()["detail"], response.text
        assert "secrets.authorization" in response.json()["detail"] and "Bearer" not in response.text


def test_an_export_stored_with_a_bad_header_fails_once_saying_why(service, client):
    """Rows saved before the header rules existed still list, and fail at once with the rule,
    instead of a UnicodeEncodeError ("internal error") or a NUL retried as a transient failure."""
    from analytics_export.checks import STORED
    from analytics_export.models import ExportRequest
    from analytics_export.store.jobs import JobStore

    receiver = Receiver()
    jobs = JobStore.for_data_dir(service.data)
    ids = {}
    try:
        for name, value in (("X-Name", "café"), ("X-Nul", "a\u0000b")):
            request = ExportRequest.model_validate({**WINDOW, "destination": {
                "type": "webhook", "url": receiver.url, "headers": {name: value}}}, context=STORED)
            ids[name] = jobs.create("default", request, 100).id
    finally:
        jobs.engine.dispose()
    assert client.get("/api/exports?limit=1000").status_code == 200
    for name, export_id in ids.items():
        deadline = time.monotonic() + 60
        while (view := client.get(f"/api/exports/{export_id}").json())["status"] != "failed":
            assert time.monotonic() < deadline, view
            time.sleep(0.05)
        error = view["result"]["error"]
        assert f"header {name!r}" in error and "attempts" not in error and "internal error" not in error, error
    receiver.shutdown()
    assert receiver.requests == []


def test_webhook_permanent_error_fails_fast(client):
    with FaultyProxy("http://127.0.0.1:9", when("POST", "/", Respond(404), nth=range(1, 99))) as proxy:
        view = run(client, {"type": "webhook", "url": f"{proxy.url}/hook"}, status="failed")
    assert "answered HTTP 404" in view["result"]["error"] and "check the webhook url" in view["result"]["error"]
    assert len(proxy.log) == 1


# -- security -------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://10.1.2.3/hook",
                                 "http://192.168.0.1/hook", "http://[::1]/hook", "http://0.0.0.0/hook"])
def test_webhook_ssrf_targets_are_refused(client, url):
    response = client.post("/api/exports", json={**WINDOW, "destination": {"type": "webhook", "url": url}})
    assert response.status_code == 422 and "ANALYTICS_EXPORT_DESTINATION_ALLOW" in response.json()["detail"]


@pytest.mark.parametrize("url", ["http://224.0.0.1/hook", "http://[64:ff9b::7f00:1]/hook", "http://[2002:7f00:1::]/hook",
                                 "http://[::ffff:10.0.0.1]/hook", "http://2130706433/hook", "http://0x7f.1/hook",
                                 "http://017700000001/hook", "http://[fe80::1%25lo]/hook"])
def test_multicast_embedded_and_shorthand_addresses_are_refused(client, url):
    """Multicast, IPv6 forms carrying a loopback or private IPv4 (NAT64, 6to4, mapped), numeric
    shorthands of 127.0.0.1 (the allow-list names 127.0.0.1 in its usual form only) and zone ids."""
    response = client.post("/api/exports", json={**WINDOW, "destination": {"type": "webhook", "url": url}})
    assert response.status_code == 422, response.text
    assert "destination host" in response.json()["detail"]


@pytest.mark.server
def test_loopback_is_refused_without_an_allow_list(tmp_path):
    svc = Service(tmp_path)
    try:
        with svc.client(create_key(tmp_path, "p")) as c:
            for destination in ({"type": "webhook", "url": "http://127.0.0.1:8080/hook"},
                                {"type": "webhook", "url": "http://localhost:8080/hook"},
                                {"type": "s3", "bucket": "bkt", "endpoint_url": "http://localhost:9000"},
                                {"type": "sftp", "host": "127.0.0.1", "username": "u"}):
                response = c.post("/api/exports", json={**WINDOW, "destination": destination})
                assert response.status_code == 422, (destination, response.text)
                assert "loopback" in response.json()["detail"]
    finally:
        svc.close()


def test_connections_never_show_secrets(client, service, s3_server):
    secret = "very-secret-value-123"
    created = client.post("/api/connections", json={"name": "shown", "type": "s3", "secrets": {
        "access_key_id": "AKIASHOWN", "secret_access_key": secret}})
    assert created.status_code == 201 and secret not in created.text
    assert created.json()["fields"] == ["access_key_id", "secret_access_key"]
    assert secret not in client.get("/api/connections").text
    dup = client.post("/api/connections", json={"name": "shown", "type": "s3", "secrets": {
        "access_key_id": "x", "secret_access_key": "y"}})
    assert dup.status_code == 409
    bad = client.post("/api/connections", json={"name": "x", "type": "s3", "secrets": {"password": "p"}})
    assert bad.status_code == 422 and "not a s3 field" in bad.json()["detail"] and "p\"" not in bad.text
    view = run(client, {"type": "s3", "bucket": "no-such-bucket", "endpoint_url": s3_server.endpoint,
                        "connection": "shown"}, status="failed")
    assert secret not in json.dumps(view) and secret not in client.get("/api/exports?limit=1000").text
    missing = client.post("/api/exports", json={**WINDOW, "destination": {"type": "s3", "bucket": "bkt",
                                                                         "connection": "nope"}})
    assert missing.status_code == 422 and "POST /api/connections" in missing.json()["detail"]
    wrong_type = client.post("/api/exports", json={**WINDOW, "destination": {"type": "gcs", "bucket": "bkt",
                                                                            "connection": "shown"}})
    assert wrong_type.status_code == 422 and "is a s3 connection" in wrong_type.json()["detail"]
    assert client.delete("/api/connections/shown").status_code == 204
    assert client.delete("/api/connections/shown").status_code == 404


def test_no_secret_reaches_the_logs(client, service, s3_server, sftp_server, azurite):
    """Runs last in this module: every secret any test above stored is absent from the service's log."""
    logs = service.logs()
    assert "claimed" in logs  # the log is the service's, and it is not empty
    for secret in (s3_server.secret_key, azurite.account_key, sftp_server.client_key_pem.splitlines()[1],
                   "hook-secret", "hook-token", "very-secret-value-123", "not-the-password", "wrong-secret-value"):
        assert secret not in logs


@pytest.mark.server
def test_cli_and_library_deliver_remotely(s3_server, sftp_server, demo_settings):
    bucket = s3_server.make_bucket("exports-cli")
    to = json.dumps({"type": "s3", "bucket": bucket, "endpoint_url": s3_server.endpoint, "prefix": "cli"})
    env = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
           "AWS_REGION": s3_server.region}  # credentials from the environment, as the AWS tools take them
    summary = json.loads(cli(demo_settings.data_dir, "export", "-f", "csv", "--start", "2026-10-01",
                             "--end", "2026-11-01", "--to", to, env=env))
    key = summary["path"].removeprefix(f"s3://{bucket}/")
    assert key.startswith("cli/export_") and key.endswith(".csv")
    body = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body.count(b"\r\n") == summary["total_events"] + 1 > 1
    result = export(settings=demo_settings, start_date="2026-10-01", end_date="2026-11-01", format="json_lines",
                    destination={"type": "sftp", "host": sftp_server.host, "port": sftp_server.port,
                                 "username": sftp_server.username, "path": "lib"},
                    secrets={"password": sftp_server.password, "known_hosts": sftp_server.known_hosts_line})
    assert result.destination_path.startswith(f"sftp://{sftp_server.host}:{sftp_server.port}/~/lib/")
    lines = (sftp_server.root / "lib" / result.destination_path.rsplit("/", 1)[1]).read_bytes().splitlines()
    assert len(lines) == result.total_events == summary["total_events"]


def test_tenants_cannot_borrow_server_credentials_or_smuggle_hosts(client, azurite):
    for destination, expected in (
            ({"type": "s3", "bucket": "lake"}, "needs a connection"),
            ({"type": "azure", "container": "lake", "account_url": azurite.account_url}, "needs a connection"),
            ({"type": "s3", "bucket": "127.0.0.1:9/x?", "connection": "s3"}, "destination.s3.bucket"),
            ({"type": "s3", "bucket": "lake", "region": "x@127.0.0.1:9/", "connection": "s3"}, "destination.s3.region")):
        response = client.post("/api/exports", json={**WINDOW, "destination": destination})
        assert response.status_code == 422 and expected in response.json()["detail"], (destination, response.text)
    smuggled = client.post("/api/connections", json={"name": "az-bad", "type": "azure", "secrets": {
        "account_name": "127.0.0.1:9/x?", "account_key": "a2V5"}})
    assert smuggled.status_code == 422 and "account_name" in smuggled.json()["detail"]


def test_a_failed_rerun_of_a_split_export_leaves_no_stale_manifest(s3_server, demo_settings):
    """Re-running a split export (a forced backfill, a lost lease) first removes its manifest: no
    manifest ever vouches for parts being rewritten, and a failed re-run leaves no half export."""
    from analytics_export import Settings
    from analytics_export.errors import Upload
    from analytics_export.models import ExportRequest

    bucket = s3_server.make_bucket("exports-rerun")
    secrets = {"access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key}
    destination = {"type": "s3", "bucket": bucket, "endpoint_url": s3_server.endpoint, "max_events_per_file": 4_000}
    request = ExportRequest(start_date="2026-10-01", end_date="2026-11-01", destination=destination)
    settings = Settings(data_dir=demo_settings.data_dir, export={"upload_retries": 0})
    export(request, settings=settings, secrets=secrets)
    assert any(k.endswith(".manifest.json") for k in keys(s3_server, bucket))
    with FaultyProxy(s3_server.endpoint, when("PUT", "part-00002", Respond(503), nth=range(1, 99))) as proxy:
        again = request.model_copy(update={"destination": request.destination.model_copy(
            update={"endpoint_url": proxy.url})})
        with pytest.raises(Upload):
            export(again, settings=settings, secrets=secrets)
    assert not any(k.endswith(".manifest.json") for k in keys(s3_server, bucket))
    assert not pending_uploads(s3_server, bucket)


def test_webhooks_connect_to_the_address_the_guard_checked():
    """The request goes to an address resolved and checked once (no second DNS answer can redirect
    it), with the original name as Host header and TLS server name."""
    import socket

    from analytics_export.destinations.webhook_client import pin

    resolved = {info[4][0] for info in socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)}
    for scheme in ("http", "https"):
        url, host, extensions = pin(f"{scheme}://localhost:8443/in?x=1", ["localhost"])
        address = url.split("://")[1].rsplit(":", 1)[0].strip("[]")
        assert address in resolved and url.endswith(":8443/in?x=1") and host == "localhost:8443"
        assert extensions == ({"sni_hostname": "localhost"} if scheme == "https" else {})
    with pytest.raises(Exception, match="loopback"):
        pin("http://localhost:8443/in", [])
