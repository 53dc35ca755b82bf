"""SFTP (asyncssh): files written as `NAME.partial` in writes of at least 256 KiB, renamed when complete.

asyncssh is asynchronous; the destination runs one event loop in its own thread and the pipeline's
upload thread calls into it. The server's host key must match the connection's known_hosts entry
unless the destination explicitly allows unknown keys.
"""

from __future__ import annotations

import asyncio
import posixpath
import threading
from typing import Any, Awaitable, Iterator

import asyncssh

from ..errors import NotFound, Rejected, Upload
from . import Destination, Placement, redact
from .specs import SFTPDestination as SFTPSpec

WRITE_SIZE = 256 << 10


class SFTPUpload:
    def __init__(self, sftp: SFTP, path: str) -> None:
        self.sftp = sftp
        self.path = path
        self.temp = f"{path}.partial"
        self.buffer = bytearray()
        self.file = sftp.call(sftp.client.open(self.temp, "wb"))

    def write(self, data: bytes | memoryview) -> int:
        self.buffer += data
        while len(self.buffer) >= WRITE_SIZE:  # in WRITE_SIZE slices: asyncssh sends a whole write at once
            self._flush(WRITE_SIZE)
        return len(data)

    def _flush(self, size: int | None = None) -> None:
        size = len(self.buffer) if size is None else size
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        if data:
            self.sftp.call(self.file.write(data))

    def commit(self) -> str:
        self._flush()
        self.sftp.call(self.file.close())
        self.sftp.call(self.sftp.replace(self.temp, self.path))
        return self.sftp.uri(self.path)

    def abort(self) -> None:
        try:
            self.sftp.call(self.file.close())
            self.sftp.call(self.sftp.client.remove(self.temp))
        except (Upload, Rejected):
            pass  # the connection is gone; the .partial name already says the file is incomplete


class SFTP(Destination):
    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self.spec: SFTPSpec = placement.spec
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sftp-loop", daemon=True)
        self.thread.start()
        self.connection: asyncssh.SSHClientConnection | None = None
        try:
            self.client: asyncssh.SFTPClient = self.call(self._connect())
        except BaseException:
            self.close()
            raise

    def call(self, awaitable: Awaitable[Any]) -> Any:
        """Await `awaitable` on the destination's loop; errors become Upload (retry) or Rejected (fix)."""
        try:
            timeout = self.placement.settings.export.upload_timeout_seconds
            return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop).result(timeout)
        except asyncssh.PermissionDenied:
            raise Rejected(f"{self.where} refused the login for {self.spec.username!r}: check the "
                           "connection's password or private_key") from None
        except asyncssh.HostKeyNotVerifiable:
            raise Rejected(f"{self.where} presented a host key its known_hosts entry does not list: add the "
                           "server's key to the connection's known_hosts") from None
        except asyncssh.SFTPPermissionDenied:
            raise Rejected(f"{self.where}: permission denied writing under {self.folder!r}") from None
        except asyncssh.SFTPError as exc:
            raise Rejected(f"{self.where}: {exc.reason}") from None
        except (OSError, asyncssh.Error, asyncio.TimeoutError, TimeoutError) as exc:
            reason = redact(str(exc) or type(exc).__name__, self.placement.secrets)
            raise Upload(f"{self.where}: connection failed ({reason})") from None

    @property
    def where(self) -> str:
        return f"sftp://{self.spec.host}:{self.spec.port}"

    @property
    def folder(self) -> str:
        return posixpath.join(self.spec.path, self.placement.folder) if self.placement.folder else self.spec.path

    async def _connect(self) -> asyncssh.SFTPClient:
        secrets = self.placement.secrets
        if secrets.get("known_hosts"):
            known_hosts: Any = asyncssh.import_known_hosts(secrets["known_hosts"])
        elif self.spec.allow_unknown_host_key:
            known_hosts = None
        else:
            raise Rejected(f"{self.where}: no known_hosts entry for the server; add one to the connection "
                           "(e.g. from `ssh-keyscan -p PORT HOST`) or set allow_unknown_host_key")
        options: dict[str, Any] = {"known_hosts": known_hosts, "username": self.spec.username,
                                   "connect_timeout": self.placement.settings.export.upload_timeout_seconds,
                                   "keepalive_interval": 15, "keepalive_count_max": 3, "config": [],
                                   "agent_path": None, "client_keys": None, "password": secrets.get("password")}
        if secrets.get("private_key"):
            options["client_keys"] = [asyncssh.import_private_key(secrets["private_key"], secrets.get("passphrase"))]
        self.connection = await asyncssh.connect(self.spec.host, self.spec.port, **options)
        client = await self.connection.start_sftp_client()
        await client.makedirs(self.folder, exist_ok=True)
        return client

    async def replace(self, source: str, destination: str) -> None:
        """Rename over an existing file: posix-rename where the server has it, else remove then rename."""
        try:
            await self.client.posix_rename(source, destination)
        except (asyncssh.SFTPOpUnsupported, asyncssh.SFTPFailure):
            if await self.client.exists(destination):
                await self.client.remove(destination)
            await self.client.rename(source, destination)

    def uri(self, path: str) -> str:
        """`sftp://host:port/abs/path`, or `.../~/rel/path` for a path relative to the login folder."""
        return f"{self.where}{path}" if path.startswith("/") else f"{self.where}/~/{path}"

    def open(self, name: str) -> SFTPUpload:
        path = posixpath.join(self.folder, name)
        if "/" in name:  # a file in a folder of its own (a layout by each event's values)
            self.call(self.client.makedirs(posixpath.dirname(path), exist_ok=True))
        return SFTPUpload(self, path)

    def remove(self, name: str) -> None:
        try:
            self.call(self.client.remove(posixpath.join(self.folder, name)))
        except (Upload, Rejected):
            pass

    def read(self, name: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        path = posixpath.join(self.folder, name)
        file = self.call(self._open_for_reading(path))
        try:
            while chunk := self.call(file.read(chunk_size)):
                yield chunk
        finally:
            try:
                self.call(file.close())
            except (Upload, Rejected):
                pass  # the read itself failed or finished; a lost handle goes with the connection

    async def _open_for_reading(self, path: str) -> asyncssh.SFTPClientFile:
        try:
            return await self.client.open(path, "rb")
        except asyncssh.SFTPNoSuchFile:
            raise NotFound(f"{self.uri(path)} does not exist") from None

    def location(self, name: str) -> str:
        return self.uri(posixpath.join(self.folder, name))

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            asyncio.run_coroutine_threadsafe(self.connection.wait_closed(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def build(placement: Placement) -> SFTP:
    return SFTP(placement)
