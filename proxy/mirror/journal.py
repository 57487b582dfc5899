"""Durable journal of the mirror units that could not be applied live.

How this works
--------------
A journal is a directory::

    LOCK                        flock'd by the one writer (the running proxy)
    CURSOR                      position of the next record to replay
    00000000000000000000.seg    append-only segments, numbered consecutively
    00000000000000000001.seg    ...

A segment is a run of records; a record is a 14-byte header, then the payload
(one `Unit`, see `proxy.mirror.unit.encode_unit`)::

    magic u8 | flags u8 | payload length u32 | CRC32(payload) u32 | header CRC32 u32

The header CRC covers the other header fields *and the segment number and
offset the record was written at*: a record is valid only where it was
written, so bytes that merely look like one (inside a payload, a stale page)
are never taken for one.  ``flags`` marks the first record of each batch: a
batch (`append` or `append_many`) lives in one segment and is fsync'd before
the call returns.

Recovery at open.  Everything before the last fsync is intact; the batch that
was being written when the process or machine died may be missing, partial or
scrambled, but only at the end of the last segment.  So when a record of the
last segment is incomplete or fails a CRC, the rest of that segment is
searched for the start of a *later* batch.  If there is one, the damaged
record had been fsync'd: that is corruption and `JournalCorrupt` is raised.
Otherwise it is a torn tail: logged (counts only) and truncated away.  Damage
anywhere else is corruption.  A unit is never skipped.

`ack` replaces the cursor atomically (temp file, fsync, rename, fsync of the
directory), then deletes the segments it has fully consumed.  Replay is
at-least-once: a unit applied but not yet acked when the process dies is
replayed again.  Not thread-safe: one event loop owns the journal, and its
calls are plain synchronous syscalls.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from proxy.mirror.unit import Unit, decode_unit, encode_unit

__all__ = [
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "JournalLocked",
    "Position",
    "decode_unit",
    "encode_unit",
]

log = logging.getLogger(__name__)


class JournalError(Exception):
    """The journal cannot do what was asked (closed, read-only, I/O failure)."""


class JournalCorrupt(JournalError):
    """Data that had been made durable is damaged or missing."""


class JournalLocked(JournalError):
    """Another writer (a running proxy) holds the journal's lock."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in the journal: just after a record (or the cursor)."""

    segment: int
    offset: int


# --- records ---------------------------------------------------------------

_RECORD_MAGIC = 0xD7
_MAGIC_BYTE = bytes([_RECORD_MAGIC])
_BATCH_START = 0x01
_HEADER = struct.Struct("<BBIII")  # magic, flags, length, payload crc, header crc
_HEADER_BINDING = struct.Struct("<QQBBII")  # segment, offset, magic, flags, length, payload crc


def _header_crc(segment: int, offset: int, flags: int, length: int, payload_crc: int) -> int:
    return zlib.crc32(
        _HEADER_BINDING.pack(segment, offset, _RECORD_MAGIC, flags, length, payload_crc)
    )


def _pack_record(segment: int, offset: int, flags: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload)
    header_crc = _header_crc(segment, offset, flags, len(payload), crc)
    return _HEADER.pack(_RECORD_MAGIC, flags, len(payload), crc, header_crc) + payload


def _parse_header(raw: bytes, segment: int, offset: int) -> tuple[int, int, int] | None:
    """(flags, payload length, payload crc) if `raw` is the header written there."""
    if len(raw) < _HEADER.size:
        return None
    magic, flags, length, crc, header_crc = _HEADER.unpack_from(raw)
    if magic != _RECORD_MAGIC or _header_crc(segment, offset, flags, length, crc) != header_crc:
        return None
    return flags, length, crc


def _read_record(
    f: BinaryIO, segment: int, offset: int, size: int, verify: bool
) -> tuple[int, bytes | None] | None:
    """(end offset, payload if `verify`) of the record at `offset`; None if damaged."""
    f.seek(offset)
    header = _parse_header(f.read(_HEADER.size), segment, offset)
    if header is None:
        return None
    _flags, length, crc = header
    end = offset + _HEADER.size + length
    if end > size:
        return None
    if not verify:
        return end, None
    payload = f.read(length)
    if len(payload) != length or zlib.crc32(payload) != crc:
        return None
    return end, payload


# --- files -----------------------------------------------------------------

_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_LOCK = "LOCK"
_CURSOR = "CURSOR"
_CURSOR_TMP = "CURSOR.tmp"
_CURSOR_BODY = struct.Struct("<4sQQ")  # magic, segment, offset; then CRC32 u32
_CURSOR_MAGIC = b"SPJC"
_U32 = struct.Struct("<I")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _take_lock(directory: Path) -> int:
    fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        by = f" (pid {holder})" if holder else ""
        raise JournalLocked(
            f"journal {directory} is locked by another writer{by}, probably a running "
            "proxy; stop it first, or open the journal read-only"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Journal:
    """Append-only, crash-safe journal of `Unit`s, replayed in order.

    ``Journal(directory)`` opens (creating it if needed) for writing and holds
    the directory's lock until `close`; `Journal.open_readonly` opens without
    the lock, for inspection (it neither repairs nor deletes anything).
    """

    def __init__(self, directory: Path, segment_bytes: int = 64 * 2**20) -> None:
        self._open(Path(directory), segment_bytes, readonly=False)

    @classmethod
    def open_readonly(cls, directory: Path) -> Journal:
        """Open without the lock, e.g. while a proxy runs (a consistent snapshot)."""
        for attempt in range(3):
            journal = cls.__new__(cls)
            try:
                journal._open(Path(directory), 64 * 2**20, readonly=True)
            except FileNotFoundError:
                # A live writer deleted a consumed segment while we read: look again.
                if attempt == 2 or not Path(directory).is_dir():
                    raise
            else:
                return journal
        raise AssertionError("unreachable")

    def _open(self, directory: Path, segment_bytes: int, readonly: bool) -> None:
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        self._dir = directory
        self._segment_bytes = segment_bytes
        self._readonly = readonly
        self._closed = False
        self._failed = False
        self._lock_fd: int | None = None
        self._fd: int | None = None  # the last segment, opened for appending
        self._sizes: dict[int, int] = {}  # segment -> valid length, ascending
        self._cursor = Position(0, 0)
        self._pending = 0
        self._oldest: float | None = None
        self._oldest_known = False
        if readonly:
            if not directory.is_dir():
                raise FileNotFoundError(f"no journal directory {directory}")
        else:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _take_lock(directory)
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    # --- public API ----------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def cursor(self) -> Position:
        """Position of the next record to replay."""
        return self._cursor

    def pending(self) -> int:
        """Number of records not yet acknowledged."""
        return self._pending

    @property
    def failed(self) -> bool:
        """An I/O error left the journal unwritable until it is reopened."""
        return self._failed

    def pending_bytes(self) -> int:
        """Bytes of the records not yet acknowledged (headers included)."""
        return sum(self._sizes.values()) - self._cursor.offset if self._sizes else 0

    def append(self, unit: Unit) -> None:
        """Write `unit` and fsync: it is durable when this returns."""
        self.append_many([unit])

    def append_many(self, units: Iterable[Unit]) -> None:
        """Write `units` in order with a single fsync: all durable on return.

        On an error nothing of the batch is acknowledged (a write error is
        undone; a failed fsync leaves the journal failed, reopen to recover).
        """
        self._check_writable()
        batch = list(units)
        payloads = [encode_unit(unit) for unit in batch]
        if not payloads:
            return
        total = sum(_HEADER.size + len(p) for p in payloads)
        segment = self._last_segment()
        if self._sizes[segment] and self._sizes[segment] + total > self._segment_bytes:
            segment = self._roll()
        start = offset = self._sizes[segment]
        records = []
        for i, payload in enumerate(payloads):
            records.append(_pack_record(segment, offset, _BATCH_START if i == 0 else 0, payload))
            offset += _HEADER.size + len(payload)
        self._write_durably(segment, start, b"".join(records))
        self._sizes[segment] = offset
        if self._pending == 0:
            self._oldest, self._oldest_known = batch[0].committed_at, True
        self._pending += len(payloads)

    def iter_pending(self) -> Iterator[tuple[Position, Unit]]:
        """Records from the cursor on, in order, each with the position after it."""
        self._check_open()
        for position, payload in self._records(self._cursor, verify=True):
            assert payload is not None
            try:
                unit = decode_unit(payload)
            except ValueError as e:
                raise JournalCorrupt(
                    f"journal {self._dir}: undecodable unit before {position}: {e}"
                ) from e
            yield position, unit

    def read_pending(self, limit: int | None = None) -> list[tuple[Position, Unit]]:
        """Up to `limit` records from the cursor on (all if None), in order."""
        out: list[tuple[Position, Unit]] = []
        if limit is not None and limit <= 0:
            return out
        for entry in self.iter_pending():
            out.append(entry)
            if limit is not None and len(out) >= limit:
                break
        return out

    def ack(self, position: Position) -> None:
        """Durably move the cursor to `position` (as returned by `read_pending`).

        Acking a position at or before the cursor does nothing.  Fully
        consumed segments are deleted.
        """
        self._check_writable()
        if position.offset == 0 and position.segment - 1 in self._sizes:
            position = Position(position.segment - 1, self._sizes[position.segment - 1])
        if position <= self._cursor:
            return
        consumed = 0
        for after, _ in self._records(self._cursor, verify=False):
            consumed += 1
            if after == position:
                break
            if after > position:
                raise ValueError(f"{position} is not a record boundary of journal {self._dir}")
        else:
            raise ValueError(f"{position} is beyond the end of journal {self._dir}")
        last = self._last_segment()
        while position.segment < last and position.offset >= self._sizes[position.segment]:
            position = Position(position.segment + 1, 0)
        self._write_cursor(position)
        self._cursor = position
        self._pending -= consumed
        self._oldest_known = self._pending == 0
        self._oldest = None
        self._delete_before(position.segment, list(self._sizes))

    def status(self) -> dict[str, Any]:
        self._check_open()
        return {
            "directory": str(self._dir),
            "pending_units": self._pending,
            "pending_bytes": self.pending_bytes(),
            "segments": len(self._sizes),
            "oldest_committed_at": self._oldest_committed_at(),
            "cursor": {"segment": self._cursor.segment, "offset": self._cursor.offset},
        }

    def close(self) -> None:
        """Close the files and release the lock.  Idempotent."""
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- opening and recovery --------------------------------------------------

    def _recover(self) -> None:
        segments = sorted(
            int(m.group(1)) for name in os.listdir(self._dir) if (m := _SEGMENT_NAME.match(name))
        )
        cursor = self._read_cursor()
        if cursor is None:
            cursor = Position(segments[0] if segments else 0, 0)
        live = [s for s in segments if s >= cursor.segment]
        if live and live != list(range(cursor.segment, cursor.segment + len(live))):
            raise JournalCorrupt(
                f"journal {self._dir}: segments missing between cursor {cursor} and "
                f"segment {live[-1]}"
            )
        if not live and cursor.offset:
            raise JournalCorrupt(f"journal {self._dir}: cursor {cursor} names a missing segment")
        for s in live:
            start = cursor.offset if s == cursor.segment else 0
            self._sizes[s] = self._recover_segment(s, start, last=s == live[-1])
        self._cursor = cursor
        if self._pending == 0:
            self._oldest_known = True
        if self._readonly:
            return
        self._delete_before(cursor.segment, segments)
        (self._dir / _CURSOR_TMP).unlink(missing_ok=True)
        if live:
            path = self._segment_path(live[-1])
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        else:
            self._fd = self._create_segment(cursor.segment)
            self._sizes[cursor.segment] = 0

    def _recover_segment(self, segment: int, start: int, last: bool) -> int:
        """Check `segment`, count its records from `start`; return its valid length."""
        path = self._segment_path(segment)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if start > size:
                raise JournalCorrupt(
                    f"journal {self._dir}: cursor offset {start} is past the end of "
                    f"segment {segment} ({size} bytes)"
                )
            offset = records = 0
            while offset < size:
                record = _read_record(f, segment, offset, size, verify=offset >= start)
                if record is None:
                    break
                end = record[0]
                if offset < start < end:
                    raise JournalCorrupt(
                        f"journal {self._dir}: cursor offset {start} is not a record "
                        f"boundary of segment {segment}"
                    )
                if offset >= start:
                    records += 1
                offset = end
            self._pending += records
            if offset == size:
                return size
            where = f"segment {segment} offset {offset}"
            if offset < start:
                raise JournalCorrupt(
                    f"journal {self._dir}: damaged record before the cursor at {where}"
                )
            if not last:
                raise JournalCorrupt(f"journal {self._dir}: damaged record at {where}")
            f.seek(offset + 1)
            if _later_batch_in(f.read(), segment, offset + 1):
                raise JournalCorrupt(
                    f"journal {self._dir}: damaged record at {where}, followed by later appends"
                )
        log.warning(
            "journal %s: torn tail at %s: %d bytes %s, %d intact pending records before it",
            self._dir,
            where,
            size - offset,
            "ignored (read-only)" if self._readonly else "truncated",
            records,
        )
        if not self._readonly:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        return offset

    # --- internals -------------------------------------------------------------

    def _segment_path(self, segment: int) -> Path:
        return self._dir / f"{segment:020d}.seg"

    def _last_segment(self) -> int:
        return next(reversed(self._sizes))

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError(f"journal {self._dir} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._readonly:
            raise JournalError(f"journal {self._dir} is open read-only")
        if self._failed:
            raise JournalError(
                f"journal {self._dir} failed after an I/O error; close and reopen it"
            )

    def _records(self, start: Position, verify: bool) -> Iterator[tuple[Position, bytes | None]]:
        for segment, size in list(self._sizes.items()):
            offset = start.offset if segment == start.segment else 0
            if segment < start.segment or offset >= size:
                continue
            with open(self._segment_path(segment), "rb") as f:
                while offset < size:
                    record = _read_record(f, segment, offset, size, verify)
                    if record is None:
                        raise JournalCorrupt(
                            f"journal {self._dir}: damaged record at segment {segment} "
                            f"offset {offset}"
                        )
                    offset, payload = record
                    yield Position(segment, offset), payload

    def _oldest_committed_at(self) -> float | None:
        if not self._oldest_known:
            first = next(self.iter_pending(), None)
            self._oldest = None if first is None else first[1].committed_at
            self._oldest_known = True
        return self._oldest

    def _create_segment(self, segment: int) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(self._segment_path(segment), flags, 0o644)
        try:
            _fsync_dir(self._dir)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _roll(self) -> int:
        segment = self._last_segment() + 1
        try:
            fd = self._create_segment(segment)
        except OSError as e:
            self._failed = True
            raise JournalError(f"journal {self._dir}: cannot start segment {segment}: {e}") from e
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._sizes[segment] = 0
        return segment

    def _write_durably(self, segment: int, start: int, data: bytes) -> None:
        assert self._fd is not None
        try:
            _write_all(self._fd, data)
        except OSError as e:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                self._failed = True
            raise JournalError(
                f"journal {self._dir}: append to segment {segment} failed: {e}"
            ) from e
        try:
            os.fsync(self._fd)
        except OSError as e:
            # After a failed fsync the page cache cannot be trusted: stop here.
            self._failed = True
            raise JournalError(
                f"journal {self._dir}: fsync of segment {segment} failed: {e}"
            ) from e

    def _read_cursor(self) -> Position | None:
        try:
            raw = (self._dir / _CURSOR).read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) == _CURSOR_BODY.size + _U32.size:
            magic, segment, offset = _CURSOR_BODY.unpack_from(raw)
            (crc,) = _U32.unpack_from(raw, _CURSOR_BODY.size)
            if magic == _CURSOR_MAGIC and zlib.crc32(raw[: _CURSOR_BODY.size]) == crc:
                return Position(segment, offset)
        raise JournalCorrupt(f"journal {self._dir}: damaged cursor file")

    def _write_cursor(self, position: Position) -> None:
        body = _CURSOR_BODY.pack(_CURSOR_MAGIC, position.segment, position.offset)
        tmp = self._dir / _CURSOR_TMP
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, body + _U32.pack(zlib.crc32(body)))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._dir / _CURSOR)
            _fsync_dir(self._dir)
        except OSError as e:
            raise JournalError(f"journal {self._dir}: cannot move the cursor: {e}") from e

    def _delete_before(self, segment: int, segments: Iterable[int]) -> None:
        consumed = [s for s in segments if s < segment]
        for s in consumed:
            self._segment_path(s).unlink(missing_ok=True)
            self._sizes.pop(s, None)
        if consumed:
            _fsync_dir(self._dir)


def _later_batch_in(tail: bytes, segment: int, base: int) -> bool:
    """Does `tail` (segment bytes from offset `base`) hold the start of a batch?"""
    i = tail.find(_MAGIC_BYTE)
    while i != -1:
        header = _parse_header(tail[i : i + _HEADER.size], segment, base + i)
        if header is not None and header[0] & _BATCH_START:
            return True
        i = tail.find(_MAGIC_BYTE, i + 1)
    return False
