"""The compiled writer (``_archive_rows``) against the general path it stands in for.

Every aggTrades or trades row it takes must become exactly the bronze bytes the dict records of
the general path (Arrow's CSV reader, then the REST normalizers' shape, then orjson) become;
every row it does not take must leave the block to that path, which rejects or refuses it.
"""

from __future__ import annotations

import io
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest_pipeline.binance import _archive_rows
from ingest_pipeline.binance.archive import ArchiveFormatError
from ingest_pipeline.binance.archive_csv import (
    PLAIN_EXPONENTS,
    agg_trade_parts,
    parse_hours,
    read_batches,
    trade_parts,
)
from ingest_pipeline.encoded import EncodedRecords, int_column
from ingest_pipeline.records import AGG_TRADES, TRADES, Record
from ingest_pipeline.storage.bronze import encode_with_fingerprint, prepare_records
from ingest_pipeline.timeutil import HOUR_MS, parse_hour

DAY = parse_hour("2024-12-31-00:00")
SYMBOL = "BTCUSDT"
INGEST_TS = 1_735_603_200_123


def zip_of(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "f.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("X.csv", text)
    return path


def general_path(text: str, data_type: str) -> list[Record]:
    """What the general path (Arrow, then dicts) makes of a whole CSV."""
    make = agg_trade_parts if data_type == AGG_TRADES else trade_parts
    source = io.BufferedReader(io.BytesIO(text.encode()))  # type: ignore[arg-type]
    return [
        r
        for batch in read_batches(source, data_type)
        for part in make(batch, SYMBOL, INGEST_TS)
        for r in part.records
    ]


def hours_of(tmp_path: Path, text: str, data_type: str, block_bytes: int = 1 << 20) -> list[Any]:
    return list(parse_hours(zip_of(tmp_path, text), data_type, SYMBOL, INGEST_TS, block_bytes))


# Prices and sizes as Binance writes them (8 decimals), and odder plain decimals, all within
# what orjson writes plainly (from 1e-5), where the writer must take every row.
decimals = st.one_of(
    st.integers(1000, 10**15 - 1).map(lambda n: f"{Decimal(n).scaleb(-8):.8f}"),
    st.builds(
        lambda whole, frac, lead: f"{'0' * lead}{whole}.{frac}",
        st.integers(0, 99_999),
        st.text("0123456789", min_size=0, max_size=9),
        st.integers(0, 2),
    ).filter(
        lambda s: (
            Decimal(s) >= Decimal("1e-5") and len(Decimal(s).normalize().as_tuple().digits) <= 15
        )
    ),
    st.integers(1, 10**6).map(str),
)
bools = st.sampled_from(["True", "False", "true", "false"])


@st.composite
def agg_rows(draw: st.DrawFn) -> str:
    n = draw(st.integers(1, 40))
    micros = draw(st.booleans())
    times = sorted(draw(st.lists(st.integers(0, 3 * HOUR_MS - 1), min_size=n, max_size=n)))
    first = draw(st.integers(0, 10**12))
    lines = []
    for i, t in enumerate(times):
        span = draw(st.integers(0, 3))
        ts = (DAY + t) * 1000 + draw(st.integers(0, 999)) if micros else DAY + t
        lines.append(
            f"{1000 + i},{draw(decimals)},{draw(decimals)},{first},{first + span},{ts},"
            f"{draw(bools)},{draw(bools)}"
        )
        first += span + 1
    end = draw(st.sampled_from(["\n", "\r\n"]))
    return end.join(lines) + draw(st.sampled_from([end, ""]))


@st.composite
def trade_rows(draw: st.DrawFn) -> str:
    n = draw(st.integers(1, 40))
    times = sorted(draw(st.lists(st.integers(0, 3 * HOUR_MS - 1), min_size=n, max_size=n)))
    lines = [
        f"{77 + i},{draw(decimals)},{draw(decimals)},{draw(decimals)},{DAY + t},"
        f"{draw(bools)},{draw(bools)}"
        for i, t in enumerate(times)
    ]
    return "\n".join(lines) + "\n"


def assert_same_bronze(hours: list[Any], expected: list[Record], data_type: str) -> None:
    """The writer's hours hold the general path's records, and bronze writes the same bytes
    and fingerprint for them."""
    assert [r for h in hours for r in h.records] == expected
    for h in hours:
        assert isinstance(h.records, EncodedRecords)
        plain = list(h.records)
        ordered, dropped = prepare_records(h.records, data_type, h.hour, SYMBOL)
        assert ordered is h.records and dropped == 0
        assert encode_with_fingerprint(h.records) == encode_with_fingerprint(plain)
        assert h.records[0] == plain[0] and h.records[-1] == plain[-1]
        assert all(h.hour <= r["event_ts"] < h.hour + HOUR_MS for r in plain)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=agg_rows(), block=st.integers(64, 4096))
def test_written_agg_trades_are_the_general_paths_bytes(
    tmp_path: Path, text: str, block: int
) -> None:
    assert_same_bronze(
        hours_of(tmp_path, text, AGG_TRADES, block), general_path(text, AGG_TRADES), AGG_TRADES
    )


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=trade_rows(), block=st.integers(64, 4096))
def test_written_trades_are_the_general_paths_bytes(tmp_path: Path, text: str, block: int) -> None:
    assert_same_bronze(hours_of(tmp_path, text, TRADES, block), general_path(text, TRADES), TRADES)


GOOD_AGG = "10,93000.01000000,0.00100000,100,101,{t},True,True"


@pytest.mark.parametrize(
    ("odd", "why"),
    [
        ("11,0.00000000,0.00000000,-1,-1,{t},True,True", "Binance's invalid marker"),
        ("11,-5.0,1.0,102,102,{t},True,True", "a sign"),
        ("11,9.3e4,1.0,102,102,{t},True,True", "an exponent"),
        ("11,0.0000001,1.0,102,102,{t},True,True", "below the plain exponents"),
        ("11,1234567890.1234567,1.0,102,102,{t},True,True", "16 significant digits"),
        ('11,"93000.5",1.0,102,102,{t},True,True', "a quoted field"),
        ("11,93000.5,1.0,102,102,{t},TRUE,True", "another spelling of true"),
        ("11,93000.5,1.0,103,102,{t},True,True", "f above l"),
        ("11,93000.5,1.0,102,102,{t},True", "a missing column"),
        ("1" * 20 + ",93000.5,1.0,102,102,{t},True,True", "an id past int64"),
    ],
)
def test_rows_the_writer_declines_take_the_general_path(tmp_path: Path, odd: str, why: str) -> None:
    t = DAY + 5_000
    text = "\n".join([GOOD_AGG.format(t=t), odd.format(t=t + 1)]) + "\n"
    block = text.encode()
    head = b'{"symbol":"BTCUSDT","event_ts":'
    assert _archive_rows.encode(0, block, head, b"7", *PLAIN_EXPONENTS) is None, why
    try:
        expected = general_path(text, AGG_TRADES)
    except ArchiveFormatError:
        with pytest.raises(ArchiveFormatError):
            hours_of(tmp_path, text, AGG_TRADES)
        return
    (hour,) = hours_of(tmp_path, text, AGG_TRADES)
    assert list(hour.records) == expected
    assert not isinstance(hour.records, EncodedRecords)


def test_a_declined_block_between_written_ones_keeps_order_and_rejects(tmp_path: Path) -> None:
    t = DAY + HOUR_MS - 3
    rows = [GOOD_AGG.format(t=t).replace("10,", f"{10 + i},", 1) for i in range(3)]
    rows[1] = f"11,0.00000000,0.00000000,-1,-1,{t},True,True"
    rows.append(f"13,93000.02000000,0.00200000,102,102,{t + 5},False,True")
    text = "\n".join(rows) + "\n"
    # Blocks of about one line: written, declined (Binance's invalid row), written, written.
    first, second = hours_of(tmp_path, text, AGG_TRADES, block_bytes=40)
    assert [r["trade_id"] for r in first.records] == [10, 12]
    assert first.invalid_marked == 1 and len(first.rejects) == 1
    assert [r["trade_id"] for r in second.records] == [13]
    assert isinstance(second.records, EncodedRecords)


def test_out_of_order_rows_are_refused(tmp_path: Path) -> None:
    late, early = DAY + 2 * HOUR_MS, DAY + HOUR_MS
    text = f"1,1.0,1.0,5,5,{late},True,True\n2,1.0,1.0,6,6,{early},True,True\n"
    with pytest.raises(ArchiveFormatError, match="time order"):
        hours_of(tmp_path, text, AGG_TRADES)


def test_header_row_is_skipped_once(tmp_path: Path) -> None:
    header = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,"
    text = f"{header}is_buyer_maker,is_best_match\n{GOOD_AGG.format(t=DAY)}\n"
    (hour,) = hours_of(tmp_path, text, AGG_TRADES)
    assert isinstance(hour.records, EncodedRecords)
    assert [r["trade_id"] for r in hour.records] == [10]


def test_plain_exponents_are_orjsons() -> None:
    low, high = PLAIN_EXPONENTS
    assert low <= -4 and high >= 14  # any orjson writes Binance's usual prices plainly
    for e in (low, high):
        value = float(f"1.5e{e}")
        assert b"e" not in orjson.dumps(value)
    assert b"e" in orjson.dumps(float(f"1.5e{low - 1}")) + orjson.dumps(float(f"1.5e{high + 1}"))


def test_encoded_records_behave_as_the_list_they_hold() -> None:
    records = [
        {"symbol": SYMBOL, "event_ts": DAY + i, "ingest_ts": 3, "trade_id": i, "price": 1.5}
        for i in range(3)
    ]
    lines = b"".join(orjson.dumps(r) + b"\n" for r in records)
    masked = lines.replace(b'"ingest_ts":3', b'"ingest_ts":0')
    ids = np.arange(3, dtype=np.int64)
    half = lines.index(b"\n") + 1
    chunks = [lines[:half], memoryview(lines)[half:]]
    encoded = EncodedRecords(SYMBOL, chunks, [masked], {"trade_id": ids, "event_ts": ids + DAY})
    assert len(encoded) == 3 and encoded == records and list(encoded) == records
    assert encoded[0] == records[0] and encoded[-1] == records[-1] and encoded[1:] == records[1:]
    assert int_column(encoded, "trade_id") is ids
    assert int_column(records, "event_ts").tolist() == [DAY, DAY + 1, DAY + 2]
