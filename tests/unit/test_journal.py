"""The durable mirror journal: encoding, order, acks, crash recovery, locking."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.mirror import journal as journal_module
from proxy.mirror.journal import (
    Journal,
    JournalCorrupt,
    JournalError,
    JournalLocked,
    Position,
)
from proxy.mirror.unit import Item, ItemKind, Unit, decode_unit, encode_unit

REPO = Path(__file__).resolve().parents[2]
HEADER = 14
SECRET = "secret-payload-text"


def make_unit(seq: int, session_id: int = 7, sql: str | None = None) -> Unit:
    return Unit(
        session_id=session_id,
        seq=seq,
        in_transaction=seq % 2 == 0,
        prelude=("SET search_path = app",),
        items=[Item(ItemKind.QUERY, sql or f"UPDATE t SET v = v + 1 WHERE id = {seq} -- {SECRET}")],
        committed_at=1_700_000_000.0 + seq / 1000,
    )


def full_unit() -> Unit:
    return Unit(
        session_id=-(2**63),
        seq=2**63 - 1,
        in_transaction=True,
        prelude=("SET TimeZone = 'Europe/Paris'", "SET application_name = 'café ☕'", ""),
        items=[
            Item(
                ItemKind.QUERY,
                "INSERT INTO t VALUES ('日本語', '\U0001f600'); SELECT 1",
                tags=["INSERT 0 1", "SELECT 1"],
            ),
            Item(
                ItemKind.EXECUTE,
                "UPDATE t SET b = $1 WHERE id = $2",
                parse_body=b"UPDATE t SET b = $1 WHERE id = $2\x00\x00\x02\x00\x00\x00\x11\x00\x00\x00\x14",
                bind_body=b"\x00\x02\x00\x01\x00\x01\x00\x02\x00\x00\x00\x03\xff\x00\xfe\x00\x00\x00\x08"
                + bytes(range(8))
                + b"\x00\x00",
                tags=["UPDATE 1"],
            ),
            Item(
                ItemKind.COPY,
                "COPY t (a, b) FROM STDIN",
                copy_data=[b"1\tx\n", b"", bytes(range(256)) * 4096, b"\\.\n"],
                tags=["COPY 3"],
            ),
            Item(ItemKind.QUERY, "surrogate-escaped \udcff\udc80 bytes"),
            Item(ItemKind.EXECUTE, ""),
        ],
        committed_at=1712345678.123456789,
    )


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def seqs(journal: Journal) -> list[int]:
    return [unit.seq for _, unit in journal.read_pending()]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# --- encoding ---------------------------------------------------------------


def test_round_trip_of_every_field() -> None:
    unit = full_unit()
    decoded = decode_unit(encode_unit(unit))
    assert decoded == unit
    assert type(decoded.prelude) is tuple
    assert all(type(item.kind) is ItemKind for item in decoded.items)
    assert all(type(chunk) is bytes for chunk in decoded.items[2].copy_data)
    assert decoded.items[2].copy_data[1] == b""
    assert decoded.size == unit.size


def test_round_trip_of_an_empty_unit() -> None:
    unit = Unit(0, 0, False, (), [], 0.0)
    assert decode_unit(encode_unit(unit)) == unit


def test_decode_rejects_every_truncation_and_trailing_bytes() -> None:
    payload = encode_unit(make_unit(3))
    for cut in range(len(payload)):
        with pytest.raises(ValueError):
            decode_unit(payload[:cut])
    with pytest.raises(ValueError, match="trailing"):
        decode_unit(payload + b"\x00")
    with pytest.raises(ValueError, match="version"):
        decode_unit(b"\x63" + payload[1:])


def test_encode_rejects_integers_outside_int64() -> None:
    with pytest.raises(ValueError, match="cannot be encoded"):
        encode_unit(make_unit(2**63))


texts = st.text(st.characters(exclude_categories=()), max_size=40)
blobs = st.binary(max_size=300)
items = st.builds(
    Item,
    kind=st.sampled_from(ItemKind),
    sql=texts,
    parse_body=blobs,
    bind_body=blobs,
    copy_data=st.lists(blobs, max_size=4),
    tags=st.lists(texts, max_size=3),
)
units = st.builds(
    Unit,
    session_id=st.integers(-(2**63), 2**63 - 1),
    seq=st.integers(-(2**63), 2**63 - 1),
    in_transaction=st.booleans(),
    prelude=st.lists(texts, max_size=3).map(tuple),
    items=st.lists(items, max_size=4),
    committed_at=st.floats(allow_nan=False),
)


@given(units)
@settings(max_examples=300)
def test_decode_inverts_encode(unit: Unit) -> None:
    assert decode_unit(encode_unit(unit)) == unit


# --- append, read, ack --------------------------------------------------------


def test_append_read_ack_in_order_across_segment_rolls(tmp_path: Path) -> None:
    with Journal(tmp_path / "j", segment_bytes=400) as journal:
        for seq in range(40):
            journal.append(make_unit(seq))
        assert journal.pending() == 40
        assert len(segment_files(journal.directory)) > 5
        assert all(p.stat().st_size <= 400 for p in segment_files(journal.directory))
        assert seqs(journal) == list(range(40))

        replayed: list[int] = []
        while journal.pending():
            batch = journal.read_pending(limit=7)
            replayed += [unit.seq for _, unit in batch]
            journal.ack(batch[-1][0])
            assert journal.pending() == 40 - len(replayed)
        assert replayed == list(range(40))
        assert journal.read_pending() == []
        assert journal.pending_bytes() == 0
        assert len(segment_files(journal.directory)) == 1

        journal.append(make_unit(40))
        assert seqs(journal) == [40]


def test_append_many_is_one_batch_in_one_segment(tmp_path: Path) -> None:
    with Journal(tmp_path, segment_bytes=400) as journal:
        journal.append(make_unit(0))
        journal.append_many(make_unit(seq) for seq in range(1, 10))
        journal.append_many([])
        files = segment_files(tmp_path)
        assert len(files) == 2  # the batch did not fit after unit 0: it rolled first
        assert files[1].stat().st_size > 400  # and stays whole
        assert seqs(journal) == list(range(10))
    with Journal(tmp_path, segment_bytes=400) as journal:
        assert seqs(journal) == list(range(10))


def test_pending_and_cursor_survive_reopen(tmp_path: Path) -> None:
    with Journal(tmp_path, segment_bytes=500) as journal:
        for seq in range(12):
            journal.append(make_unit(seq))
        position, unit = journal.read_pending(limit=5)[-1]
        assert unit.seq == 4
        journal.ack(position)
        status = journal.status()
    with Journal(tmp_path, segment_bytes=500) as journal:
        assert journal.pending() == 7
        assert seqs(journal) == list(range(5, 12))
        assert journal.status() == status
    with Journal.open_readonly(tmp_path) as journal:
        assert journal.pending() == 7
        assert journal.status() == status


def test_status(tmp_path: Path) -> None:
    with Journal(tmp_path, segment_bytes=300) as journal:
        assert journal.status() == {
            "directory": str(tmp_path),
            "pending_units": 0,
            "pending_bytes": 0,
            "segments": 1,
            "oldest_committed_at": None,
            "cursor": {"segment": 0, "offset": 0},
        }
        for seq in range(6):
            journal.append(make_unit(seq))
        status = journal.status()
        assert status["pending_units"] == 6
        assert status["pending_bytes"] == sum(p.stat().st_size for p in segment_files(tmp_path))
        assert status["oldest_committed_at"] == make_unit(0).committed_at
        assert status["segments"] == len(segment_files(tmp_path))
        position = journal.read_pending(limit=2)[-1][0]
        journal.ack(position)
        status = journal.status()
        assert status["oldest_committed_at"] == make_unit(2).committed_at
        # One record per segment here: the cursor moves on to the next segment.
        assert journal.cursor == Position(position.segment + 1, 0)
        assert status["cursor"] == {"segment": position.segment + 1, "offset": 0}
        journal.ack(journal.read_pending()[-1][0])
        assert journal.status()["oldest_committed_at"] is None


def test_ack_deletes_consumed_segments(tmp_path: Path) -> None:
    with Journal(tmp_path, segment_bytes=300) as journal:
        for seq in range(10):
            journal.append(make_unit(seq))
        before = segment_files(tmp_path)
        pending = journal.read_pending()
        last_of_first = max(pos for pos, _ in pending if pos.segment == 0)
        journal.ack(last_of_first)  # end of segment 0: the cursor moves on to segment 1
        assert journal.cursor == Position(1, 0)
        assert segment_files(tmp_path) == before[1:]
        journal.ack(pending[-1][0])
        assert segment_files(tmp_path) == before[-1:]


def test_ack_rejects_positions_it_did_not_hand_out(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        for seq in range(3):
            journal.append(make_unit(seq))
        first, second = (pos for pos, _ in journal.read_pending(limit=2))
        with pytest.raises(ValueError, match="record boundary"):
            journal.ack(Position(first.segment, first.offset + 1))
        with pytest.raises(ValueError, match="beyond the end"):
            journal.ack(Position(5, 0))
        journal.ack(second)
        journal.ack(first)  # already consumed: nothing happens
        assert journal.pending() == 1


def test_leftover_consumed_segment_is_removed_at_open(tmp_path: Path) -> None:
    with Journal(tmp_path, segment_bytes=300) as journal:
        for seq in range(10):
            journal.append(make_unit(seq))
        files = segment_files(tmp_path)
        saved = files[0].read_bytes()
        pending = journal.read_pending()
        journal.ack(max(pos for pos, _ in pending if pos.segment == 1))
    # A crash between the cursor's rename and the deletion leaves the old segment.
    files[0].write_bytes(saved)
    with Journal(tmp_path, segment_bytes=300) as journal:
        assert files[0].exists() is False
        assert seqs(journal) == [unit.seq for pos, unit in pending if pos.segment >= 2]


# --- crash recovery -------------------------------------------------------------


def write_three(directory: Path) -> tuple[int, int]:
    """Three single appends in one segment; returns (start, end) of the third."""
    with Journal(directory) as journal:
        for seq in range(3):
            journal.append(make_unit(seq))
        start = journal.read_pending()[1][0].offset
        end = journal.read_pending()[2][0].offset
    return start, end


def test_torn_tail_at_every_truncation_length_is_recovered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    original = tmp_path / "original"
    start, end = write_three(original)
    data = (original / f"{0:020d}.seg").read_bytes()
    assert len(data) == end
    for cut in range(start, end):
        directory = tmp_path / f"cut{cut}"
        shutil.copytree(original, directory)
        segment = directory / f"{0:020d}.seg"
        segment.write_bytes(data[:cut])
        caplog.clear()
        with (
            caplog.at_level(logging.WARNING, logger="proxy.mirror.journal"),
            Journal(directory) as journal,
        ):
            assert seqs(journal) == [0, 1]
            assert journal.pending() == 2
            journal.append(make_unit(3))
        assert segment.stat().st_size == end
        assert bool(caplog.records) == (cut > start)
        assert SECRET not in caplog.text
        with Journal(directory) as journal:
            assert seqs(journal) == [0, 1, 3]


@pytest.mark.parametrize("where", ["header", "payload", "last byte"])
def test_bad_crc_in_the_last_record_is_a_torn_tail(tmp_path: Path, where: str) -> None:
    start, end = write_three(tmp_path)
    offset = {"header": start + 3, "payload": start + HEADER + 5, "last byte": end - 1}[where]
    flip_byte(tmp_path / f"{0:020d}.seg", offset)
    with Journal(tmp_path) as journal:
        assert seqs(journal) == [0, 1]


def test_garbage_after_the_last_record_is_truncated(tmp_path: Path) -> None:
    _, end = write_three(tmp_path)
    segment = tmp_path / f"{0:020d}.seg"
    with segment.open("ab") as f:
        f.write(b"\x00" * 4096)
    with Journal.open_readonly(tmp_path) as journal:  # read-only: reports, leaves it
        assert seqs(journal) == [0, 1, 2]
    assert segment.stat().st_size == end + 4096
    with Journal(tmp_path) as journal:
        assert seqs(journal) == [0, 1, 2]
    assert segment.stat().st_size == end


def test_a_scrambled_last_batch_is_a_torn_tail(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        journal.append(make_unit(0))
        journal.append_many([make_unit(1), make_unit(2), make_unit(3)])
        batch_start = journal.read_pending()[0][0].offset
    # The batch's first record lost, later records of the same batch intact:
    # nothing of that batch had been fsync'd, so it is a torn tail.
    flip_byte(tmp_path / f"{0:020d}.seg", batch_start + HEADER + 1)
    with Journal(tmp_path) as journal:
        assert seqs(journal) == [0]


def test_damage_followed_by_a_later_append_is_corruption(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        for seq in range(5):
            journal.append(make_unit(seq))
        second = journal.read_pending()[0][0].offset
    flip_byte(tmp_path / f"{0:020d}.seg", second + HEADER + 2)
    with pytest.raises(JournalCorrupt, match="segment 0 offset"):
        Journal(tmp_path)
    with pytest.raises(JournalCorrupt):
        Journal.open_readonly(tmp_path)
    with pytest.raises(JournalCorrupt):  # not JournalLocked: a failed open lets go of the lock
        Journal(tmp_path)


def test_damage_in_an_earlier_segment_is_corruption(tmp_path: Path) -> None:
    with Journal(tmp_path, segment_bytes=300) as journal:
        for seq in range(10):
            journal.append(make_unit(seq))
    first = segment_files(tmp_path)[0]
    first.write_bytes(first.read_bytes()[:-1])  # even at that segment's tail
    with pytest.raises(JournalCorrupt, match="segment 0"):
        Journal(tmp_path, segment_bytes=300)


def test_a_missing_segment_is_corruption(tmp_path: Path) -> None:
    with Journal(tmp_path, segment_bytes=300) as journal:
        for seq in range(10):
            journal.append(make_unit(seq))
    segment_files(tmp_path)[1].unlink()
    with pytest.raises(JournalCorrupt, match="missing"):
        Journal(tmp_path)


def test_a_damaged_cursor_is_corruption(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        journal.append(make_unit(0))
        journal.append(make_unit(1))
        journal.ack(journal.read_pending(limit=1)[0][0])
    flip_byte(tmp_path / "CURSOR", 6)
    with pytest.raises(JournalCorrupt, match="cursor"):
        Journal(tmp_path)


def test_damage_found_while_reading_is_corruption(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        for seq in range(3):
            journal.append(make_unit(seq))
        second = journal.read_pending()[0][0].offset
        flip_byte(tmp_path / f"{0:020d}.seg", second + HEADER + 2)
        with pytest.raises(JournalCorrupt):
            journal.read_pending()


def test_a_failed_write_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def short_write_then_full_disk(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 20:
            return real_write(fd, data[:20])
        raise OSError(errno.ENOSPC, "No space left on device")

    with Journal(tmp_path) as journal:
        journal.append(make_unit(0))
        monkeypatch.setattr(journal_module.os, "write", short_write_then_full_disk)
        with pytest.raises(JournalError, match="No space"):
            journal.append(make_unit(1))
        monkeypatch.setattr(journal_module.os, "write", real_write)
        assert journal.pending() == 1
        journal.append(make_unit(2))
    with Journal(tmp_path) as journal:
        assert seqs(journal) == [0, 2]


def test_a_failed_fsync_stops_appends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with Journal(tmp_path) as journal:
        monkeypatch.setattr(journal_module.os, "fsync", failing_fsync)
        with pytest.raises(JournalError, match="fsync"):
            journal.append(make_unit(0))
        monkeypatch.undo()
        with pytest.raises(JournalError, match="reopen"):
            journal.append(make_unit(1))


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from proxy.mirror.journal import Journal
    from proxy.mirror.unit import decode_unit

    journal = Journal(Path(sys.argv[1]), segment_bytes=2000)
    template = decode_unit(Path(sys.argv[2]).read_bytes())
    how = sys.argv[3]
    for seq in range(10**6):
        template.seq = seq
        journal.append(template)
        print(seq, flush=True)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "exit":
            os._exit(3)
    """
)


def run_child(directory: Path, unit: Unit, how: str) -> subprocess.Popen[str]:
    unit_file = directory.parent / "unit.bin"
    unit_file.write_bytes(encode_unit(unit))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), str(unit_file), how],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_unit_survives_a_kill_right_after_append(tmp_path: Path, how: str) -> None:
    directory = tmp_path / "journal"
    child = run_child(directory, full_unit(), how)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == (-signal.SIGKILL if how == "sigkill" else 3)
    assert out.split() == ["0"]
    with Journal(directory) as journal:
        [(_, unit)] = journal.read_pending()
    expected = full_unit()
    expected.seq = 0
    assert unit == expected


def test_every_acknowledged_append_survives_a_kill_mid_stream(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    child = run_child(directory, make_unit(0), "loop")
    assert child.stdout is not None
    reported = [int(child.stdout.readline()) for _ in range(30)]
    child.send_signal(signal.SIGKILL)
    reported += [int(line) for line in child.stdout.read().split()]
    child.wait(timeout=60)
    with Journal(directory, segment_bytes=2000) as journal:
        found = seqs(journal)
    assert found == list(range(len(found)))
    assert len(found) >= len(reported)


# --- locking ------------------------------------------------------------------------


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        journal.append(make_unit(0))
        with pytest.raises(JournalLocked, match=f"pid {os.getpid()}.*running proxy"):
            Journal(tmp_path)
        with Journal.open_readonly(tmp_path) as reader:
            assert seqs(reader) == [0]
            with pytest.raises(JournalError, match="read-only"):
                reader.append(make_unit(1))
            with pytest.raises(JournalError, match="read-only"):
                reader.ack(reader.read_pending()[0][0])
    with Journal(tmp_path) as journal:  # the lock went with close()
        assert journal.pending() == 1


def test_read_only_open_of_a_missing_journal(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Journal.open_readonly(tmp_path / "nope")


def test_closed_journal_refuses_work(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.append(make_unit(0))
    with pytest.raises(JournalError, match="closed"):
        journal.read_pending()
