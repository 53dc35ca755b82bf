"""The test servers answer their official clients, and FaultyProxy injects faults in front of them."""

from __future__ import annotations

import asyncio
import io
import os

import asyncssh
import httpx
import pytest
from boto3.s3.transfer import TransferConfig

from faults import Drop, FaultyProxy, Respond, when
from servers import AzuriteServer, GCSServer, S3Server, SFTPServer


MiB = 1024 * 1024
PUBLIC = {"x-amz-acl": "public-read"}  # moto refuses unsigned reads of private objects


def test_s3_put_get(s3_server: S3Server) -> None:
    s3 = s3_server.client()
    s3_server.make_bucket("plain")
    s3.put_object(Bucket="plain", Key="a/b.txt", Body=b"hello")
    assert s3.get_object(Bucket="plain", Key="a/b.txt")["Body"].read() == b"hello"


def test_azurite_upload_download(azurite: AzuriteServer) -> None:
    azurite.make_container("plain")
    with azurite.client() as service:
        blob = service.get_blob_client("plain", "a/b.txt")
        blob.upload_blob(b"hello")
        assert blob.download_blob().readall() == b"hello"


def test_gcs_upload_download(gcs_server: GCSServer) -> None:
    gcs_server.make_bucket("plain")
    blob = gcs_server.client().bucket("plain").blob("a/b.txt")
    blob.upload_from_string(b"hello")
    assert blob.download_as_bytes() == b"hello"


def test_sftp_password_and_key(sftp_server: SFTPServer) -> None:
    async def run() -> None:
        with_password = sftp_server.connect_options(password=sftp_server.password, client_keys=None)
        async with asyncssh.connect(**with_password) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/up.txt", "wb") as f:
                await f.write(b"by password")
        async with asyncssh.connect(**sftp_server.connect_options()) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open("/up.txt", "rb") as f:
                assert await f.read() == b"by password"
            assert await sftp.realpath("/../..") == "/"  # chrooted
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect(**sftp_server.connect_options(password="wrong", client_keys=None))

    asyncio.run(run())
    assert (sftp_server.root / "up.txt").read_bytes() == b"by password"


def test_proxy_fails_second_upload_part(s3_server: S3Server) -> None:
    """The 2nd UploadPart gets a 500 (before its 5 MiB body, thanks to Expect: 100-continue); boto3 retries it."""
    bucket = s3_server.make_bucket("multipart")
    data = os.urandom(11 * MiB)
    with FaultyProxy(s3_server.endpoint, when("PUT", "uploadId=", Respond(500), nth={2})) as proxy:
        s3 = s3_server.client(proxy.url, retries={"mode": "standard"})
        config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, use_threads=False)
        s3.upload_fileobj(io.BytesIO(data), bucket, "big.bin", Config=config)
        assert s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == data
    parts = [status for method, path, status in proxy.log if method == "PUT" and "uploadId=" in path]
    assert parts == [200, 500, 200, 200]


def test_proxy_drop_and_status(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket("dropped")
    predicate = when("PUT", "/dropped/k", Drop())
    with FaultyProxy(s3_server.endpoint, predicate) as proxy, httpx.Client(base_url=proxy.url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.put("/dropped/k", content=b"lost")
        s3_server.client(proxy.url).put_object(Bucket=bucket, Key="k", Body=b"kept")  # the retry goes through
        assert proxy.log[-2:] == [("PUT", "/dropped/k", None), ("PUT", "/dropped/k", 200)]

        proxy.predicate = when("GET", "/dropped/k", Respond(429, retry_after="7"))
        response = http.get("/dropped/k")
        assert (response.status_code, response.headers["retry-after"]) == (429, "7")


def test_proxy_keep_alive_chunked_and_large(s3_server: S3Server) -> None:
    """Several requests on one connection: a chunked 8 MiB upload, then Content-Length framed downloads."""
    s3_server.make_bucket("streamed")
    data = os.urandom(8 * MiB)
    with FaultyProxy(s3_server.endpoint) as proxy, httpx.Client(base_url=proxy.url) as http:
        chunks = (data[i : i + 100_000] for i in range(0, len(data), 100_000))
        assert http.put("/streamed/big", content=chunks, headers=PUBLIC).status_code == 200  # chunked
        for _ in range(3):
            assert http.get("/streamed/big").content == data
        assert http.head("/streamed/big").headers["content-length"] == str(len(data))
    assert proxy.connections == 1
    assert [status for _, _, status in proxy.log] == [200] * 5


def test_proxy_in_front_of_azurite_and_gcs(azurite: AzuriteServer, gcs_server: GCSServer) -> None:
    from azure.storage.blob import LinearRetry

    azurite.make_container("proxied")
    with FaultyProxy(azurite.account_url, when("PUT", "comp=block&", Respond(503), nth={1})) as proxy:
        retry = LinearRetry(backoff=0.1, random_jitter_range=0)
        service = azurite.client(proxy.url, retry_policy=retry, max_block_size=MiB, max_single_put_size=MiB)
        blob = service.get_blob_client("proxied", "big.bin")
        data = os.urandom(3 * MiB)
        blob.upload_blob(data, max_concurrency=1)
        assert blob.download_blob().readall() == data
    assert [s for m, p, s in proxy.log if "comp=block&" in p] == [503, 201, 201, 201]

    gcs_server.make_bucket("proxied")
    with FaultyProxy(gcs_server.endpoint) as proxy:
        blob = gcs_server.client(proxy.url).bucket("proxied").blob("big.bin", chunk_size=256 * 1024)
        data = os.urandom(600 * 1024)
        blob.upload_from_file(io.BytesIO(data))  # resumable (size unknown): its session URL must name the proxy
        assert blob.download_as_bytes() == data
    assert sum(1 for m, p, _ in proxy.log if m == "PUT" and "upload_id=" in p) == 3
