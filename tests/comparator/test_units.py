"""Pure pieces: store DSNs, the value codec, metrics labels and text, reports, progress."""

from __future__ import annotations

import datetime as dt
import io
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from comparator import metrics
from comparator.codec import decode_key, encode_key, plain
from comparator.diff import RowDiff
from comparator.dsn import StoreDsn, parse_store_dsn
from comparator.progress import Progress
from comparator.report import RunReport, TableResult


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://app:pw@db.local:6432/shop",
            StoreDsn("postgresql", "db.local", 6432, "app", "pw", "shop"),
        ),
        ("postgres://db/shop", StoreDsn("postgresql", "db", 5432, "postgres", None, "shop")),
        ("mysql://root@127.0.0.1/shop", StoreDsn("mysql", "127.0.0.1", 3306, "root", None, "shop")),
        ("mariadb://u:p%40ss@[::1]:3307/s%20p", StoreDsn("mysql", "::1", 3307, "u", "p@ss", "s p")),
    ],
)
def test_parse_store_dsn(url: str, expected: StoreDsn) -> None:
    assert parse_store_dsn(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "db.local/shop",
        "oracle://u:secret@h/db",
        "mysql://u:secret@h:99999/db",
        "mysql://u:secret@h/",
        "mysql://u:secret@h/a/b",
        "postgresql://u:secret@/db",
    ],
)
def test_bad_dsn_is_one_line_without_the_password(url: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_store_dsn(url)
    message = str(err.value)
    assert "secret" not in message and "\n" not in message and message


def test_redacted_hides_the_password() -> None:
    dsn = parse_store_dsn("mariadb://app:hunter2@db:3306/shop")
    assert dsn.redacted() == "mysql://app:***@db:3306/shop"
    assert "hunter2" not in repr(dsn)


def test_codec_round_trips_every_key_type() -> None:
    key = (
        1,
        "text",
        None,
        True,
        1.5,
        Decimal("-0.10"),
        b"\x00\xff",
        dt.datetime(2024, 1, 2, 3, 4, 5, 6),
        dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
        dt.date(2024, 2, 29),
        dt.time(1, 2, 3),
        dt.timedelta(hours=-1, microseconds=5),
        uuid.UUID(int=7),
    )
    assert decode_key(encode_key(key)) == key
    assert plain(b"\x01") == "\\x01" and plain(Decimal("1.5")) == "1.5"


def test_table_labels_are_bounded() -> None:
    names = [f"t{i:03d}" for i in range(60)]
    labels = metrics.table_labels(names)
    assert len({v for v in labels.values()}) == 51
    assert labels["t049"] == "t049" and labels["t050"] == "other" and labels["t059"] == "other"


def report(missing: list[tuple[object, ...]], transient: int = 0) -> RunReport:
    diff = RowDiff("public", "orders", ["id"], missing, [], [(3,)], {(3,): ["total"]})
    r = RunReport("postgresql://u@h:5432/a", "postgresql://u@h:5432/b", "old", started_at=10.0)
    r.tables = [
        TableResult("orders", "public", rows=100, elapsed=2.0, transient=transient, diff=diff)
    ]
    r.finished_at = 12.0
    return r


def test_report_text_and_json() -> None:
    r = report([(1,), (2,)], transient=4)
    doc = r.to_json(samples=1)
    table = doc["tables"][0]
    assert (table["missing"], table["mismatched"], table["transient"]) == (2, 1, 4)
    assert table["samples"]["missing"] == [{"key": [1]}]
    assert table["samples"]["mismatched"] == [{"key": [3], "columns": ["total"]}]
    assert doc["identical"] is False and doc["divergent_rows"] == 3
    text = r.render()
    assert "missing in new" in text and "public.orders" in text and "DIFFERENT: 3 rows" in text
    assert "mismatched key [3] columns total" in text


def test_metrics_text_file(tmp_path: Path) -> None:
    metrics.record_run(report([(1,)]), 2.0, 12.0)
    path = tmp_path / "m.prom"
    metrics.write_textfile(path)
    text = path.read_text()
    assert 'shadowproxy_comparator_divergent_rows{kind="mismatched",table="orders"} 1.0' in text
    assert "shadowproxy_comparator_last_run_timestamp_seconds 12.0" in text
    assert not list(tmp_path.glob(".*tmp"))


def test_progress_plain_lines_when_not_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    progress = Progress(stream, interval=0)
    progress.estimate(1000)
    with caplog.at_level("INFO", logger="comparator.progress"):
        progress.advance(500)
    progress.close()
    assert stream.getvalue() == ""
    assert "compared 500 of ~1000 rows" in caplog.text


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal() -> None:
    stream = _Tty()
    progress = Progress(stream, interval=0)
    progress.estimate(1000)
    progress.advance(250)
    progress.close()
    out = stream.getvalue()
    assert out.startswith("\r[######------------------] 250/1,000 rows") and "ETA" in out
    assert out.endswith("\n")
