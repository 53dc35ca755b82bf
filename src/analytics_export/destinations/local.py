"""A folder on this machine (the download destination): write to a hidden temp name, rename when done."""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import Invalid, NotFound, Storage, os_error
from . import Destination, Placement

BUFFER = 1 << 20
WRITEBACK = 32 << 20
"""Every this many bytes, the disk starts writing what came before (`POSIX_FADV_DONTNEED` starts the
writeback, and drops those pages from the cache once written), so the fsync before the rename waits for
the last stretch only: a 1 GB file's write and fsync took 1.5-1.8 s, 1.1-1.2 s with this."""


class LocalUpload:
    def __init__(self, final: Path) -> None:
        self.final = final
        self.temp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.partial")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            for stale in final.parent.glob(f".{final.name}.*.partial"):  # left by a killed run of this export
                stale.unlink(missing_ok=True)
            self.file = open(self.temp, "xb", buffering=BUFFER)
            self.written = self.flushed = 0
        except OSError as exc:
            raise os_error(exc, final.parent) from exc

    def write(self, data: bytes | memoryview) -> int:
        try:
            n = self.file.write(data)
            self.written += n
            if self.written - self.flushed >= WRITEBACK and hasattr(os, "posix_fadvise"):
                self.file.flush()
                os.posix_fadvise(self.file.fileno(), self.flushed, self.written - self.flushed, os.POSIX_FADV_DONTNEED)
                self.flushed = self.written
            return n
        except OSError as exc:
            raise os_error(exc, self.final.parent) from exc

    def copy_from(self, file: BinaryIO, size: int | None) -> int | None:
        """Append `size` bytes (or the rest) of `file` with copy_file_range, inside the kernel; None
        when the two files cannot (another file system on an old kernel), before anything is copied."""
        self.file.flush()
        start = file.tell()
        left = os.fstat(file.fileno()).st_size - start if size is None else size
        copied = 0
        try:
            while left > 0:
                n = os.copy_file_range(file.fileno(), self.file.fileno(), min(left, 1 << 30), start + copied)
                if n == 0:
                    raise EOFError(f"{file.name} ended {left} bytes early")
                copied, left = copied + n, left - n
        except OSError as exc:
            if copied or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise os_error(exc, self.final.parent) from exc
            return None
        finally:
            file.seek(start + copied)
            self.written += copied
        return copied

    def commit(self) -> str:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.temp, self.final)
            dir_fd = os.open(self.final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise os_error(exc, self.final.parent) from exc
        return str(self.final)

    def abort(self) -> None:
        """Remove the temporary file; closing it may fail again (its buffer on a full disk)."""
        try:
            self.file.close()
        except OSError:
            pass  # the write that failed already said why
        finally:
            self.temp.unlink(missing_ok=True)


class LocalDestination(Destination):
    """Files land in `directory` under their export name, or exactly at `path` when one is given."""

    def __init__(self, directory: Path, path: Path | None = None) -> None:
        """Raises Invalid when `path` is a folder or `directory` a file: checked before any work, as
        the rename at the end would fail after the whole export was written."""
        self.directory = Path(directory)
        self.path = Path(path) if path is not None else None
        self.manifest = self.path is None  # one exact file: every name would be that file
        if self.path is not None and self.path.is_dir():
            raise Invalid(f"{self.path} is a folder: name a file to write, or give the folder as the output folder")
        if self.path is None and self.directory.exists() and not self.directory.is_dir():
            raise Invalid(f"{self.directory} is a file, not a folder to write exports into")

    def open(self, name: str) -> LocalUpload:
        return LocalUpload((self.path or self.directory / name).absolute())

    def remove(self, name: str) -> None:
        (self.path or self.directory / name).unlink(missing_ok=True)

    def location(self, name: str) -> str:
        return str((self.path or self.directory / name).absolute())

    def read(self, name: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        path = (self.path or self.directory / name).absolute()
        try:
            with open(path, "rb") as file:
                while chunk := file.read(chunk_size):
                    yield chunk
        except FileNotFoundError:
            raise NotFound(f"{path} does not exist") from None
        except OSError as exc:
            raise Storage(f"cannot read {path}: {exc.strerror}") from exc


def build(placement: Placement) -> LocalDestination:
    """The download destination: the project's folder under the export dir."""
    return LocalDestination(placement.settings.project_export_dir(placement.project))
