"""`sandbox.files`: E2B's `Filesystem` on a cellbox sandbox."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import IO, Dict, List, Literal, Optional, TypedDict, Union, overload

from .exceptions import FileNotFoundException, InvalidArgumentException, NotFoundException, translated

# What a file can be written from (E2B's `write` takes the same).
Data = Union[str, bytes, bytearray, IO]


class FilesystemEventType(Enum):
    CHMOD = "chmod"
    CREATE = "create"
    REMOVE = "remove"
    RENAME = "rename"
    WRITE = "write"


@dataclass
class FilesystemEvent:
    """A change in a watched folder: `name` is relative to the folder."""

    name: str
    type: FilesystemEventType


def parse_event(payload: str) -> FilesystemEvent:
    raw = json.loads(payload)
    return FilesystemEvent(name=raw["name"], type=FilesystemEventType(raw["kind"]))


class WatchHandle:
    """A running watch: `get_new_events()` gives what changed since the last call."""

    def __init__(self, stream):
        self._stream = stream

    def get_new_events(self) -> List[FilesystemEvent]:
        events = []
        while True:
            item = self._stream.poll()
            if item is None:
                return events
            events.append(parse_event(item[1]))

    def stop(self) -> None:
        self._stream.interrupt()


class FileType(Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass
class WriteInfo:
    """A written file: its name, type and path."""

    name: str
    type: Optional[FileType]
    path: str
    metadata: Optional[Dict[str, str]] = None


@dataclass
class EntryInfo(WriteInfo):
    """A file or folder in the sandbox."""

    size: int = 0
    mode: int = 0
    permissions: str = ""
    owner: str = ""
    group: str = ""
    modified_time: Optional[datetime] = None
    symlink_target: Optional[str] = None


class WriteEntry(TypedDict):
    """One file of `write_files`: its `path` and `data`."""

    path: str
    data: Data


# Relative paths are taken from the sandbox user's home, as in E2B.
HOME = "/home/user"


def _path(path: str) -> str:
    return path if path.startswith("/") else f"{HOME}/{path}"


class ReadStream:
    """A file's content as an iterator of byte chunks (a context manager too)."""

    def __init__(self, data: bytes, chunk: int = 64 * 1024):
        self._chunks = iter([data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""])

    def __iter__(self) -> "ReadStream":
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks = iter(())

    def __enter__(self) -> "ReadStream":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _bytes(data: Data) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if hasattr(data, "read"):
        return _bytes(data.read())
    raise InvalidArgumentException(f"cannot write a {type(data).__name__}: give str, bytes or a file object")


def _entry(raw: dict) -> EntryInfo:
    kind = FileType.DIR if raw.get("is_dir") else FileType.FILE
    mode = int(raw.get("mode", 0))
    type_bits = stat.S_IFDIR if kind is FileType.DIR else stat.S_IFREG
    return EntryInfo(
        name=raw["name"],
        type=kind,
        path=raw["path"],
        metadata=raw.get("metadata") or None,
        size=int(raw.get("size", 0)),
        mode=mode & 0o7777,
        permissions=stat.filemode(type_bits | (mode & 0o7777)),
        owner=raw.get("owner", ""),
        group=raw.get("group", ""),
        modified_time=datetime.fromtimestamp(int(raw.get("modified", 0)), tz=timezone.utc),
        symlink_target=raw.get("symlink_target"),
    )


class Filesystem:
    """Files in the sandbox: read, write, list, stat, rename, remove, make folders.

    Paths are the sandbox's; relative ones are taken from `/home/user`.
    Using files moves a session on the fast path to the heavy backend, so that
    cells see them.
    """

    def __init__(self, native):
        self._native = native

    @overload
    def read(self, path: str, format: Literal["text"] = "text", **_: object) -> str: ...
    @overload
    def read(self, path: str, format: Literal["bytes"], **_: object) -> bytearray: ...
    @overload
    def read(self, path: str, format: Literal["stream"], **_: object) -> ReadStream: ...

    def read(self, path: str, format: str = "text", **_: object):
        """The file's content as text (UTF-8), `bytearray` or a stream of byte chunks."""
        if format not in ("text", "bytes", "stream"):
            raise InvalidArgumentException(f"unknown format {format!r}: use text, bytes or stream")
        with translated(not_found=FileNotFoundException):
            data = self._native.read_file(_path(path))
        if format == "text":
            return data.decode("utf-8", errors="replace")
        if format == "bytes":
            return bytearray(data)
        return ReadStream(data)

    def write(self, path: str, data: Data, metadata: Optional[Dict[str, str]] = None, **_: object) -> WriteInfo:
        """Writes `data` to `path` (parent folders are made), replacing what
        was there; `metadata` is kept on the file (`get_info`, `list` show it)."""
        content = _bytes(data)
        if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise InvalidArgumentException("metadata keys and values must be strings")
        with translated(not_found=FileNotFoundException):
            raw = json.loads(self._native.write_file(_path(path), content, metadata))
        return WriteInfo(name=raw["name"], type=FileType.FILE, path=raw["path"], metadata=raw.get("metadata") or None)

    def write_files(
        self, files: List[WriteEntry], metadata: Optional[Dict[str, str]] = None, **_: object
    ) -> List[WriteInfo]:
        """Writes several files; each entry has `path` and `data`."""
        return [self.write(entry["path"], entry["data"], metadata) for entry in files]

    def list(self, path: str, depth: Optional[int] = 1, **_: object) -> List[EntryInfo]:
        """The entries of the folder `path` by name, each folder followed by its
        own entries, down to `depth` levels (default 1: the folder's own)."""
        depth = 1 if depth is None else depth
        if depth < 1:
            raise InvalidArgumentException("depth should be at least 1")
        with translated(not_found=FileNotFoundException):
            entries = sorted((_entry(raw) for raw in json.loads(self._native.list_files(_path(path)))), key=lambda e: e.name)
        listed: List[EntryInfo] = []
        for entry in entries:
            listed.append(entry)
            if entry.type is FileType.DIR and depth > 1:
                listed.extend(self.list(entry.path, depth - 1))
        return listed

    def exists(self, path: str, **_: object) -> bool:
        with translated():
            return self._native.file_exists(_path(path))

    def get_info(self, path: str, **_: object) -> EntryInfo:
        with translated(not_found=FileNotFoundException):
            return _entry(json.loads(self._native.stat_file(_path(path))))

    def remove(self, path: str, **_: object) -> None:
        """Removes a file or a folder with what it holds; a missing path is no error."""
        try:
            with translated(not_found=FileNotFoundException):
                self._native.remove_file(_path(path))
        except NotFoundException:
            pass

    def rename(self, old_path: str, new_path: str, **_: object) -> EntryInfo:
        with translated(not_found=FileNotFoundException):
            return _entry(json.loads(self._native.rename_file(_path(old_path), _path(new_path))))

    def watch_dir(self, path: str, recursive: bool = False, **_: object) -> WatchHandle:
        """Watches the folder `path` (and, if `recursive`, its subfolders)."""
        with translated(not_found=FileNotFoundException):
            return WatchHandle(self._native.watch_dir(_path(path), recursive))

    def make_dir(self, path: str, **_: object) -> bool:
        """Makes the folder (and its parents); False if it was already there."""
        with translated():
            return self._native.make_dir(_path(path))
