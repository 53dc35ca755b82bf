"""`POST /api/destinations/test` against every destination server the suite starts, through a real
service: one right and two wrong settings each. A right one passes every step and leaves nothing
behind; a wrong one names the step that failed and says why, without a secret in its words."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncssh
import psycopg
import pytest
from servers import HookServer, free_port

from service import cli

pytestmark = pytest.mark.server

CLOSED = f"127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory, gcs_server, bigquery_server):
    env = {"ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]', "STORAGE_EMULATOR_HOST": gcs_server.endpoint,
           "BIGQUERY_EMULATOR_HOST": bigquery_server.endpoint}
    return make_service(tmp_path_factory.mktemp("probe"), 1, env, projects=("default", "other"))


@pytest.fixture(scope="module")
def client(service):
    with service.client(service.keys["default"]) as c:
        yield c


def connect(client, name: str, type: str, **secrets: str) -> str:
    response = client.post("/api/connections", json={"name": name, "type": type, "secrets": secrets})
    assert response.status_code in (201, 409), response.text
    return name


def tried(client, destination: dict) -> dict:
    response = client.post("/api/destinations/test", json={"destination": destination}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def passes(client, destination: dict, *steps: str) -> dict:
    result = tried(client, destination)
    assert result["ok"], result
    assert result["failed_step"] is None and result["error"] is None
    names = [s["name"] for s in result["steps"]]
    assert names[:3] == ["address", "credentials", "connect"], names
    assert names[3:] == list(steps), names
    return result


def fails(client, destination: dict, step: str, *words: str, secrets: tuple[str, ...] = ()) -> dict:
    result = tried(client, destination)
    assert not result["ok"], result
    assert result["failed_step"] == step, result
    assert result["steps"][-1] == {**result["steps"][-1], "name": step, "ok": False}
    for word in words:
        assert word.lower() in result["error"].lower(), result["error"]
    for secret in secrets:
        assert secret not in json.dumps(result)
    return result


FILES = ("write", "read back", "delete")


# ------------------------------------------------------------------ files


def test_download_folder(client, service):
    result = passes(client, {"type": "download"}, *FILES)
    assert str(service.data) not in json.dumps(result)  # the server's paths stay hidden
    assert not list(service.data.glob("exports/**/.analytics-export-test-*"))


def test_s3(client, s3_server):
    bucket = s3_server.make_bucket(f"probe-{uuid.uuid4().hex[:8]}")
    conn = connect(client, "s3", "s3", access_key_id=s3_server.access_key, secret_access_key=s3_server.secret_key)
    s3 = {"type": "s3", "bucket": bucket, "endpoint_url": s3_server.endpoint, "connection": conn, "prefix": "in/"}
    result = passes(client, s3, *FILES)
    assert f"s3://{bucket}/in/.analytics-export-test-" in result["steps"][3]["detail"]
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # nothing left
    fails(client, {**s3, "bucket": "no-such-bucket"}, "write", "does not exist", "create the bucket")
    fails(client, {**s3, "endpoint_url": "http://10.1.2.3:9000"}, "address", "10.1.2.3", "not public")


def test_gcs(client, gcs_server):
    bucket = gcs_server.make_bucket(f"probe-{uuid.uuid4().hex[:8]}")
    passes(client, {"type": "gcs", "bucket": bucket, "prefix": "p"}, *FILES)
    assert list(gcs_server.client().list_blobs(bucket)) == []
    fails(client, {"type": "gcs", "bucket": "no-such-bucket"}, "write", "does not exist")
    fails(client, {"type": "gcs", "bucket": bucket, "connection": "nope"}, "credentials", "no connection 'nope'")


def test_azure(client, azurite):
    container = azurite.make_container(f"probe-{uuid.uuid4().hex[:8]}")
    conn = connect(client, "az", "azure", account_name=azurite.account_name, account_key=azurite.account_key)
    az = {"type": "azure", "container": container, "account_url": azurite.account_url, "connection": conn}
    passes(client, az, *FILES)
    with azurite.client() as blobs:
        assert list(blobs.get_container_client(container).list_blobs()) == []
    fails(client, {**az, "container": "no-such-container"}, "write", "does not exist")
    wrong_key = "A" * 86 + "=="
    connect(client, "az-wrong", "azure", account_name=azurite.account_name, account_key=wrong_key)
    fails(client, {**az, "connection": "az-wrong"}, "write", "refused", "credentials", secrets=(wrong_key,))


def test_sftp(client, sftp_server):
    conn = connect(client, "sftp", "sftp", password=sftp_server.password, known_hosts=sftp_server.known_hosts_line)
    sftp = {"type": "sftp", "host": sftp_server.host, "port": sftp_server.port, "username": sftp_server.username,
            "path": "drop", "connection": conn}
    passes(client, sftp, *FILES)
    assert not list((sftp_server.root / "drop").glob(".analytics-export-test-*"))
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()[1]
    other = sftp_server.known_hosts_line.rsplit(" ", 1)[0] + " " + stranger
    connect(client, "sftp-other-key", "sftp", password=sftp_server.password, known_hosts=other)
    fails(client, {**sftp, "connection": "sftp-other-key"}, "connect", "host key", "known_hosts")
    connect(client, "sftp-bad-password", "sftp", password="not-the-password", known_hosts=sftp_server.known_hosts_line)
    fails(client, {**sftp, "connection": "sftp-bad-password"}, "connect", "refused the login",
          secrets=("not-the-password",))


class Receiver(HookServer):
    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        super().__init__()
        self.status, self.delay = status, delay
        self.got: list[tuple[Any, bytes]] = []

    def respond(self, headers: Any, body: bytes) -> tuple[int, dict[str, str]]:
        time.sleep(self.delay)
        self.got.append((headers, body))
        return self.status, {}


def test_webhook_gets_one_signed_request_marked_as_a_test(client):
    receiver = Receiver()
    connect(client, "hook", "webhook", signing_secret="s3cret-signing", authorization="Bearer tok3n-abc")
    hook = {"type": "webhook", "url": receiver.url, "connection": "hook", "headers": {"X-Team": "growth"}}
    result = passes(client, hook, "send")
    assert "signed" in result["steps"][3]["detail"] and "HTTP 200" in result["steps"][3]["detail"]
    [(headers, body)] = receiver.got
    assert headers["X-Destination-Test"] == "true" and headers["X-Team"] == "growth"
    assert headers["Authorization"] == "Bearer tok3n-abc"
    mac = hmac.new(b"s3cret-signing", f"{headers['X-Signature-Timestamp']}.".encode() + body, hashlib.sha256)
    assert headers["X-Signature"] == f"sha256={mac.hexdigest()}"
    assert json.loads(body)["test"] is True

    refusing = Receiver(401)
    fails(client, {**hook, "url": refusing.url}, "send", "HTTP 401", "authorization",
          secrets=("s3cret-signing", "tok3n-abc"))
    fails(client, {**hook, "url": f"http://{CLOSED}/hook"}, "send", "cannot send", "ConnectError")


# ------------------------------------------------------------------ tables


def test_postgres_table(client, pg_url):
    url = pg_url.replace("+psycopg", "")
    table = {"type": "postgres", "url": url, "table": "events"}
    result = passes(client, table, "login", "table")
    assert "does not exist yet" in result["steps"][4]["detail"]
    with psycopg.connect(url) as conn:  # the test rolled back: no table, no temporary one
        assert conn.execute("SELECT to_regclass('events')").fetchone()[0] is None
        conn.execute("CREATE TABLE events (uuid uuid, inserted_at timestamptz)")
        role = f"probe_{uuid.uuid4().hex[:8]}"
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON events TO {role}")
    result = passes(client, table, "login", "table")
    assert "exists" in result["steps"][4]["detail"]
    fails(client, {**table, "url": url.rsplit("/", 1)[0] + "/no_such_database"}, "login", "no_such_database")
    fails(client, {**table, "url": url.replace("postgres@", f"{role}@")}, "table", "lacks INSERT and DELETE", "GRANT")


def test_clickhouse_table(client, service):
    result = passes(client, {"type": "clickhouse", "url": "chdb:probe", "table": "events"}, "login", "table")
    assert "staging table created" in result["steps"][4]["detail"]
    fails(client, {"type": "clickhouse", "url": f"clickhouse://{CLOSED}/default", "table": "events"}, "login",
          "cannot reach")
    fails(client, {"type": "clickhouse", "url": "clickhouse://10.9.8.7:8123/default", "table": "events"}, "address",
          "not public")


def test_delta_table(client, s3_server):
    passes(client, {"type": "delta", "uri": "probe/events"}, *FILES, "table")
    bucket = s3_server.make_bucket(f"probe-{uuid.uuid4().hex[:8]}")
    conn = connect(client, "lake", "delta", access_key_id=s3_server.access_key,
                   secret_access_key=s3_server.secret_key)
    on_s3 = {"type": "delta", "uri": f"s3://{bucket}/events", "endpoint_url": s3_server.endpoint, "connection": conn}
    passes(client, on_s3, *FILES, "table")
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    fails(client, {**on_s3, "uri": "s3://no-such-bucket/events"}, "write", "does not exist")
    fails(client, {**on_s3, "connection": None}, "connect", "needs a connection")


def test_iceberg_table(client, pg_url, s3_server):
    result = passes(client, {"type": "iceberg", "table": "analytics.events", "warehouse": "probe"}, "catalog",
                    "table", *FILES)
    assert "does not exist yet" in result["steps"][4]["detail"]
    fails(client, {"type": "iceberg", "table": "analytics.events", "warehouse": "probe",
                   "catalog_url": f"postgresql://postgres@{CLOSED}/catalog"}, "connect", "connection refused")
    connect(client, "ice", "iceberg", access_key_id=s3_server.access_key, secret_access_key=s3_server.secret_key)
    fails(client, {"type": "iceberg", "table": "analytics.events", "warehouse": "s3://no-such-bucket/lake",
                   "catalog_url": pg_url.replace("+psycopg", ""), "endpoint_url": s3_server.endpoint,
                   "connection": "ice"}, "write", "does not exist")


def test_snowflake_table(client, snowflake_server):
    schema = snowflake_server.make_schema("PROBE", f"S{uuid.uuid4().hex[:8]}")
    conn = connect(client, "snow", "snowflake", password=snowflake_server.password)
    snow = {"type": "snowflake", "account": snowflake_server.account, "user": snowflake_server.user,
            "url": snowflake_server.url, "table": f"{schema}.EVENTS", "connection": conn}
    result = passes(client, snow, "login", "table")
    assert "does not exist yet" in result["steps"][4]["detail"]
    with snowflake_server.connect() as sf, sf.cursor() as cur:
        cur.execute(f"SHOW TABLES IN SCHEMA {schema}")
        assert cur.fetchall() == []  # the load table it made is dropped
    connect(client, "snow-key", "snowflake", private_key="-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----")
    fails(client, {**snow, "connection": "snow-key"}, "connect", "not a PEM private key", secrets=("not a key",))
    fails(client, {**snow, "url": "http://10.20.30.40:8080"}, "address", "not public")


def test_bigquery_table(client, bigquery_server):
    dataset = bigquery_server.make_dataset(f"probe_{uuid.uuid4().hex[:8]}")
    bq = {"type": "bigquery", "project": bigquery_server.project, "table": f"{dataset}.events"}
    passes(client, bq, "dataset", "table")
    fails(client, {**bq, "table": "no_such_dataset.events"}, "dataset", "no_such_dataset")
    fails(client, {**bq, "connection": "nope"}, "credentials", "no connection 'nope'")


# ------------------------------------------------------------------ brokers


def test_nats_subject(client, nats_url, jet):
    nats = {"type": "nats", "url": nats_url, "subject": jet.subject, "stream": jet.stream}
    result = passes(client, nats, "broker")
    assert jet.stream in result["steps"][3]["detail"]
    assert jet.info().state.messages == 0  # looked up, nothing sent
    fails(client, {"type": "nats", "url": nats_url, "subject": f"nobody.takes.{uuid.uuid4().hex[:8]}"}, "broker",
          "no JetStream stream takes the subject")
    fails(client, {**nats, "url": f"nats://{CLOSED}"}, "broker", "cannot connect")


def test_rabbitmq_queue(client, rabbitmq_url, queue):
    rabbit = {"type": "rabbitmq", "url": rabbitmq_url, "queue": queue.name}
    passes(client, rabbit, "broker")
    assert queue.consume(0) == []
    connect(client, "rabbit-wrong", "rabbitmq", username="guest", password="not-guest-pw")
    fails(client, {**rabbit, "connection": "rabbit-wrong"}, "broker", "refused the login",
          secrets=("not-guest-pw",))
    fails(client, {**rabbit, "url": f"amqp://{CLOSED}/"}, "broker", "cannot connect")


# ------------------------------------------------------------------ the route itself


def test_connections_of_another_project_are_not_found(service, client):
    connect(client, "only-default", "webhook", signing_secret="default-only")
    with service.client(service.keys["other"]) as other:
        response = other.post("/api/destinations/test", json={"destination": {
            "type": "webhook", "url": Receiver().url, "connection": "only-default"}})
    assert response.status_code == 200 and response.json()["failed_step"] == "credentials"


@pytest.mark.parametrize("body, words", [
    ({"destination": {"type": "ftp", "host": "x"}}, "ftp"),
    ({"destination": {"type": "s3"}}, "bucket"),
    ({"destination": {"type": "webhook", "url": "http://x/"}, "nope": 1}, "nope"),
    ({}, "destination"),
])
def test_bad_settings_are_422(client, body, words):
    response = client.post("/api/destinations/test", json=body)
    assert response.status_code == 422, response.text
    assert words in response.text


def test_at_most_four_tests_run_at_once(client):
    slow = Receiver(delay=2.0)
    hook = {"destination": {"type": "webhook", "url": slow.url}}
    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(lambda _: client.post("/api/destinations/test", json=hook).status_code, range(6)))
    assert statuses.count(200) >= 4 and set(statuses) <= {200, 429}, statuses
    assert 429 in statuses, statuses


def test_the_cli_tests_a_destination(tmp_path, s3_server):
    bucket = s3_server.make_bucket(f"probe-{uuid.uuid4().hex[:8]}")
    s3 = {"type": "s3", "bucket": bucket, "endpoint_url": s3_server.endpoint}
    env = {"ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]', "ANALYTICS_EXPORT_SERVER_CREDENTIALS": "true",
           "AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}
    assert cli(tmp_path, "destinations", "test", "--to", json.dumps(s3), env=env) == "s3 destination works"
    with pytest.raises(AssertionError, match="step 'write' failed: s3://no-such-bucket does not exist"):
        cli(tmp_path, "destinations", "test", "--to", json.dumps({**s3, "bucket": "no-such-bucket"}), env=env)
