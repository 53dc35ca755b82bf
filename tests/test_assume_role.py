"""S3 credentials by role, against moto's STS, IAM and S3 with IAM enforcement on: the server's own
keys may only call sts:AssumeRole; the role's trust policy requires an external ID and its policy
allows writing the bucket. The assumed role's temporary credentials write a real export through the
API, read back whole; a wrong external ID fails at once with a message naming AssumeRole; the
credentials are assumed again before they expire; bad connections are 422s that echo no value."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from typing import Any

import obstore
import pytest
from obstore.store import S3Store
from servers import HOST, _Subprocess, free_port
from service import wait_for

from analytics_export.config import Settings
from analytics_export.connections import ConnectionCreate
from analytics_export.destinations.assume_role import RoleCredentials, check_usable
from analytics_export.destinations import Placement, destination_for
from analytics_export.destinations.specs import S3Destination
from analytics_export.errors import Invalid, Rejected, Upload
from analytics_export.models import ExportConfig

from conftest import with_demo_events

REGION = "us-east-1"
ACCOUNT = "123456789012"
BUCKET = "role-exports"
EXTERNAL_ID = "tenant-7f3a9c"
WINDOW = {"start_date": "2026-08-01", "end_date": "2026-11-01", "format": "json_lines"}
ALLOW = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


class IamMotoServer(_Subprocess):
    """moto's server (S3, STS and IAM on one port) in a process of its own, enforcing IAM after the first
    three requests (INITIAL_NO_AUTH_ACTION_COUNT: process-wide in moto, so not the suite's shared server);
    those three make an admin user whose keys set up everything else."""

    probe_path = "/moto-api/"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]

    def environment(self) -> dict[str, str]:
        return {"INITIAL_NO_AUTH_ACTION_COUNT": "3"}

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def client(self, service: str, keys: dict[str, str]) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key=keys["SecretAccessKey"],
                            aws_session_token=keys.get("SessionToken"), config=Config(s3={"addressing_style": "path"}))


@pytest.fixture(scope="module")
def aws():
    """The IAM world of docs/assume-role.md: `admin` keys, the `exporter` user's keys (sts:AssumeRole only)
    and the `writer` role's ARN."""
    with IamMotoServer() as server:
        iam = server.client("iam", {"AccessKeyId": "testing", "SecretAccessKey": "testing"})
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(ALLOW))
        admin = iam.create_access_key(UserName="admin")["AccessKey"]
        iam = server.client("iam", admin)
        server.client("s3", admin).create_bucket(Bucket=BUCKET)
        role_arn = f"arn:aws:iam::{ACCOUNT}:role/analytics-export-writer"
        iam.create_user(UserName="exporter")
        iam.put_user_policy(UserName="exporter", PolicyName="assume", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Resource": role_arn}]}))
        exporter = iam.create_access_key(UserName="exporter")["AccessKey"]
        iam.create_role(RoleName="analytics-export-writer", AssumeRolePolicyDocument=json.dumps(trust_policy()))
        iam.put_role_policy(RoleName="analytics-export-writer", PolicyName="write-exports",
                            PolicyDocument=json.dumps(permissions_policy()))
        denied = server.client("s3", exporter)
        with pytest.raises(Exception, match="AccessDenied"):  # the server's own keys cannot write: the role must
            denied.put_object(Bucket=BUCKET, Key="direct", Body=b"x")
        yield {"server": server, "admin": admin, "exporter": exporter, "role_arn": role_arn}


def trust_policy(external_id: str = EXTERNAL_ID) -> dict:
    """The role's trust policy, as docs/assume-role.md shows it."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/exporter"},
        "Action": "sts:AssumeRole", "Condition": {"StringEquals": {"sts:ExternalId": external_id}}}]}


def permissions_policy() -> dict:
    """The role's permissions policy, as docs/assume-role.md shows it, but for one resource: moto checks
    DeleteObjects (obstore's delete) as s3:DeleteObject on the bucket's ARN, AWS on each object's."""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
         "Resource": f"arn:aws:s3:::{BUCKET}/*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{BUCKET}"},
        {"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": f"arn:aws:s3:::{BUCKET}"}]}


def sts_env(aws) -> dict[str, str]:
    return {"ANALYTICS_EXPORT_STS_ENDPOINT_URL": aws["server"].endpoint,
            "ANALYTICS_EXPORT_STS_ACCESS_KEY_ID": aws["exporter"]["AccessKeyId"],
            "ANALYTICS_EXPORT_STS_SECRET_ACCESS_KEY": aws["exporter"]["SecretAccessKey"]}


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory, aws):
    data = with_demo_events(tmp_path_factory.mktemp("role"), 5_000)
    env = {**sts_env(aws), "ANALYTICS_EXPORT_DESTINATION_ALLOW": '["127.0.0.1"]',
           "ANALYTICS_EXPORT_EXPORT__UPLOAD_RETRIES": "1", "ANALYTICS_EXPORT_EXPORT__UPLOAD_BACKOFF_SECONDS": "0.05",
           "ANALYTICS_EXPORT_EXPORT__RETRY_BACKOFF_SECONDS": "0.05"}
    return make_service(data, 1, env)


@pytest.fixture(scope="module")
def client(service):
    with service.client(service.key) as c:
        yield c


def role_connection(client, name: str, aws, **extra: str) -> str:
    secrets = {"role_arn": aws["role_arn"], "external_id": EXTERNAL_ID, **extra}
    response = client.post("/api/connections", json={"name": name, "type": "s3", "secrets": secrets})
    assert response.status_code == 201, response.text
    assert EXTERNAL_ID not in response.text and aws["role_arn"] not in response.text
    return name


def s3_destination(aws, connection: str, prefix: str) -> dict:
    return {"type": "s3", "bucket": BUCKET, "endpoint_url": aws["server"].endpoint, "region": REGION,
            "connection": connection, "prefix": prefix}


def test_assumed_role_writes_the_export(client, aws):
    connection = role_connection(client, "by-role", aws, session_name="exports-test", session_duration="900")
    created = client.post("/api/exports", json={**WINDOW, "destination": s3_destination(aws, connection, "role")})
    assert created.status_code == 202, created.text
    view = wait_for(client, created.json()["id"])
    key = view["result"]["destination_path"].removeprefix(f"s3://{BUCKET}/")
    body = aws["server"].client("s3", aws["admin"]).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    download = client.post("/api/exports", json={**WINDOW, "destination": {"type": "download"}})
    local = client.get(wait_for(client, download.json()["id"])["result"]["download_url"]).content
    assert body == local and body.count(b"\n") == view["result"]["total_events"] > 0
    tested = client.post("/api/destinations/test", json={"destination": s3_destination(aws, connection, "probe")})
    assert tested.status_code == 200 and tested.json()["ok"], tested.text


def test_wrong_external_id_fails_for_good(client, service, aws):
    connection = role_connection(client, "wrong-id", aws, external_id="not-the-tenant")
    created = client.post("/api/exports", json={**WINDOW, "destination": s3_destination(aws, connection, "wrong")})
    assert created.status_code == 202, created.text
    export_id = created.json()["id"]
    view = wait_for(client, export_id, status="failed")
    error = view["result"]["error"]
    assert "AssumeRole" in error and "external_id" in error and "AccessDenied" in error, error
    assert "not-the-tenant" not in error and aws["role_arn"] not in error
    logs = service.logs()
    assert f"export {export_id} attempt" not in logs  # permanent: never retried
    for secret in (EXTERNAL_ID, "not-the-tenant", aws["exporter"]["SecretAccessKey"]):
        assert secret not in logs
    keys = aws["server"].client("s3", aws["admin"]).list_objects_v2(Bucket=BUCKET, Prefix="wrong").get("Contents")
    assert not keys


def test_credentials_are_assumed_again_before_they_expire(aws, tmp_path, monkeypatch):
    """A 900 s session with an 897 s margin is due for renewal 3 s after it is assumed: the second write
    after that signs with a new session; without a margin the same session serves both."""
    for name, value in sts_env(aws).items():
        monkeypatch.setenv(name, value)
    secrets = {"role_arn": aws["role_arn"], "external_id": EXTERNAL_ID, "session_duration": "900"}

    class Counted(RoleCredentials):
        def _assume(self) -> dict:
            self.sessions = [*getattr(self, "sessions", []), super()._assume()]
            return self.sessions[-1]

    for margin, sessions in ((897, 2), (0, 1)):
        provider = Counted(Settings(data_dir=tmp_path, sts_refresh_margin_seconds=margin), secrets, REGION)
        store = S3Store(BUCKET, endpoint=aws["server"].endpoint, region=REGION, virtual_hosted_style_request=False,
                        client_options={"allow_http": True}, credential_provider=provider)
        obstore.put(store, f"renewed-{margin}/first", b"first")
        assert provider.sessions[0]["refresh_at"] > datetime.now(timezone.utc)
        time.sleep(3.5)
        obstore.put(store, f"renewed-{margin}/second", b"second")
        assert len(provider.sessions) == sessions
        assert len({s["AccessKeyId"] for s in provider.sessions}) == sessions
        assert bytes(obstore.get(store, f"renewed-{margin}/second").bytes()) == b"second"


def test_a_renewal_refused_mid_export_fails_for_good(aws, tmp_path):
    """The bucket's owner changes the trust policy while an export writes: the renewal is refused, and
    the upload fails with STS's reason (permanent), not as a bare credentials error."""
    settings = Settings(data_dir=tmp_path, sts_refresh_margin_seconds=897, sts_endpoint_url=aws["server"].endpoint,
                        sts_access_key_id=aws["exporter"]["AccessKeyId"],
                        sts_secret_access_key=aws["exporter"]["SecretAccessKey"],
                        export=ExportConfig(upload_retries=0))
    secrets = {"role_arn": aws["role_arn"], "external_id": EXTERNAL_ID, "session_duration": "900"}
    spec = S3Destination(bucket=BUCKET, endpoint_url=aws["server"].endpoint, region=REGION)
    destination = destination_for(Placement(spec, "default", settings, secrets, "revoked"))
    first = destination.open("first")
    first.write(b"written with the first session")
    first.commit()
    iam = aws["server"].client("iam", aws["admin"])
    iam.update_assume_role_policy(RoleName="analytics-export-writer", PolicyDocument=json.dumps(trust_policy("other")))
    try:
        time.sleep(3.5)
        second = destination.open("second")
        with pytest.raises(Rejected, match=r"AssumeRole .*\(AccessDenied\).*external_id"):
            second.write(b"due for a new session")
            second.commit()
    finally:
        iam.update_assume_role_policy(RoleName="analytics-export-writer", PolicyDocument=json.dumps(trust_policy()))
        destination.close()


def test_role_connections_are_checked(client, aws, tmp_path):
    role = {"role_arn": aws["role_arn"], "external_id": EXTERNAL_ID}
    cases = {
        "takes access keys or a role, not both": {**role, "access_key_id": "AKIAX", "secret_access_key": "s3cr3t-v"},
        "secrets.external_id is required": {"role_arn": aws["role_arn"]},
        "must be an IAM role ARN": {**role, "role_arn": "arn:aws:iam::12345:user/someone-secret"},
        "goes with secrets.role_arn": {"external_id": EXTERNAL_ID},
        "external_id must be 2-1224": {**role, "external_id": "spaces are not allowed"},
        "session_name must be 2-64": {**role, "session_name": "x"},
        "session_duration must be a whole number of seconds from 900 to 43200": {**role, "session_duration": "899"},
        "from 900 to 43200": {**role, "session_duration": "43201"},
        "needs secrets.access_key_id and secrets.secret_access_key, or secrets.role_arn": {"session_token": "tok-v"},
    }
    for message, secrets in cases.items():
        response = client.post("/api/connections", json={"name": "bad", "type": "s3", "secrets": secrets})
        assert response.status_code == 422 and message in response.json()["detail"], (secrets, response.text)
        for value in secrets.values():
            assert value not in response.text
    for table in ("delta", "iceberg"):  # they keep access keys: the role is refused, by name
        response = client.post("/api/connections", json={"name": "bad", "type": table, "secrets": role})
        assert response.status_code == 422 and f"is not a {table} field" in response.text
    with pytest.raises(Invalid, match="ANALYTICS_EXPORT_STS_ACCESS_KEY_ID"):
        check_usable(Settings(data_dir=tmp_path), role)
    with pytest.raises(Invalid, match="longer than this server's ANALYTICS_EXPORT_STS_REFRESH_MARGIN_SECONDS"):
        check_usable(Settings(data_dir=tmp_path, sts_access_key_id="a", sts_secret_access_key="b",
                              sts_refresh_margin_seconds=900), {**role, "session_duration": "900"})
    assert ConnectionCreate(name="ok", type="s3", secrets={**role, "session_duration": "43200"})


def test_an_unreachable_sts_is_a_transient_failure(aws, tmp_path):
    settings = Settings(data_dir=tmp_path, sts_endpoint_url=f"http://{HOST}:{free_port()}", sts_access_key_id="a",
                        sts_secret_access_key="b", export=ExportConfig(upload_retries=0, upload_timeout_seconds=2))
    provider = RoleCredentials(settings, {"role_arn": aws["role_arn"], "external_id": EXTERNAL_ID}, REGION)
    with pytest.raises(Upload, match="AssumeRole failed: EndpointConnectionError; check ANALYTICS_EXPORT_STS_ENDPOINT"):
        provider()
