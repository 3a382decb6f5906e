"""The simulator's archive: Binance's layout and CSV format, publication lag, the same ids and
values as its REST."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator

import pytest
import requests

from ingest_pipeline.standins.simulator import SimulatorConfig, SimulatorServer
from ingest_pipeline.timeutil import HOUR_MS, parse_hour

# Servers over real sockets (see ingest_pipeline_tests/tiers.py).
pytestmark = pytest.mark.integration

NOW = parse_hour("2025-01-03-12:00")
BASE = "data/spot/daily"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(extra_symbols=1, clock=lambda: NOW)) as server:
        yield server


def get(sim: SimulatorServer, path: str) -> requests.Response:
    return requests.get(f"{sim.url}/{path}", timeout=30)


def rows(body: bytes) -> list[list[str]]:
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        (member,) = z.infolist()
        text = z.read(member).decode()
    return [line.split(",") for line in text.splitlines()]


def test_daily_file_has_its_checksum_and_rest_values(sim: SimulatorServer) -> None:
    name = "SYM0001USDT-aggTrades-2024-12-31.zip"
    resp = get(sim, f"{BASE}/aggTrades/SYM0001USDT/{name}")
    assert resp.status_code == 200
    checksum = get(sim, f"{BASE}/aggTrades/SYM0001USDT/{name}.CHECKSUM").text
    assert checksum == f"{hashlib.sha256(resp.content).hexdigest()}  {name}\n"
    data = rows(resp.content)
    hour = parse_hour("2024-12-31-05:00")
    page = requests.get(
        f"{sim.url}/api/v3/aggTrades",
        params={"symbol": "SYM0001USDT", "startTime": hour, "endTime": hour + HOUR_MS - 1},
        timeout=10,
    ).json()
    by_id = {int(r[0]): r for r in data}
    for item in page:
        assert by_id[item["a"]] == [
            str(item["a"]), item["p"], item["q"], str(item["f"]), str(item["l"]),
            str(item["T"]), "True" if item["m"] else "False", "True",
        ]  # fmt: skip


def test_microseconds_from_2025_and_klines_layout(sim: SimulatorServer) -> None:
    data = rows(get(sim, f"{BASE}/trades/SYM0001USDT/SYM0001USDT-trades-2025-01-01.zip").content)
    assert all(len(r) == 7 for r in data)
    assert (
        parse_hour("2025-01-01-00:00") * 1000
        <= int(data[0][4])
        < parse_hour("2025-01-02-00:00") * 1000
    )
    klines = rows(get(sim, f"{BASE}/klines/SYM0001USDT/1m/SYM0001USDT-1m-2025-01-01.zip").content)
    assert len(klines) == 1440 and len(klines[0]) == 12
    assert klines[0][0] == str(parse_hour("2025-01-01-00:00") * 1000)
    assert klines[0][6] == str((parse_hour("2025-01-01-00:00") + 59_999) * 1000 + 999)
    monthly = get(sim, "data/spot/monthly/klines/SYM0001USDT/1mo/SYM0001USDT-1mo-2024-11.zip")
    assert monthly.status_code == 200 and len(rows(monthly.content)) == 1


def test_publication_lag_and_missing_files_answer_404(sim: SimulatorServer) -> None:
    # Day 2025-01-02 ended 12 h before "now": its file is not out yet (about a day's lag).
    assert (
        get(sim, f"{BASE}/trades/SYM0001USDT/SYM0001USDT-trades-2025-01-02.zip").status_code == 404
    )
    assert (
        get(sim, f"{BASE}/trades/SYM0001USDT/SYM0001USDT-trades-2025-01-01.zip").status_code == 200
    )
    # The month of December is published a few days into January: not yet on the 3rd.
    assert (
        get(sim, "data/spot/monthly/trades/SYM0001USDT/SYM0001USDT-trades-2024-12.zip").status_code
        == 404
    )
    assert get(sim, f"{BASE}/trades/NOPEUSDT/NOPEUSDT-trades-2025-01-01.zip").status_code == 404
    assert (
        get(sim, f"{BASE}/trades/SYM0001USDT/SYM0001USDT-aggTrades-2025-01-01.zip").status_code
        == 404
    )


def test_faults_switch_on_and_off(sim: SimulatorServer) -> None:
    path = f"{BASE}/klines/SYM0001USDT/1m/SYM0001USDT-1m-2024-12-31.zip"
    faults = [
        {"fault": "header", "symbol": "SYM0001USDT", "date": "2024-12-31"},
        {"fault": "truncated", "symbol": "SYM0001USDT", "date": "2024-12-31", "cut_at": "06:00"},
    ]
    r = requests.post(f"{sim.url}/_sim/archive/faults", json={"faults": faults}, timeout=5)
    assert r.status_code == 200
    data = rows(get(sim, path).content)
    assert data[0][0] == "open_time" and len(data) == 1 + 6 * 60
    bad = {"faults": [{"fault": "gremlins", "symbol": "X", "date": "2024-12-31"}]}
    assert requests.post(f"{sim.url}/_sim/archive/faults", json=bad, timeout=5).status_code == 400
    requests.post(f"{sim.url}/_sim/archive/faults", json={"faults": []}, timeout=5)
    assert len(rows(get(sim, path).content)) == 1440
