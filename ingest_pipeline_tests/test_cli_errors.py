"""Every error a user can cause on the command line ends in one line on stderr and its own
exit code (issue 14: 13-40 line tracebacks before). Real subprocesses for one case of each
class; the full unsafe-symbol matrix goes through ``main()`` in process (same parser, faster)."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingest_pipeline import cli
from ingest_pipeline.settings import Settings

BIN = Path(sys.executable).parent
UNSAFE = {
    "traversal": "../../etc",
    "long": "A" * 300,
    "fullwidth": "ＢＴＣＵＳＤＴ",
    "stream_injection": "btcusdt@trade/ethusdt",
    "empty_item": "BTCUSDT,,ETHUSDT",
    "greek_lookalike": "BTCUSDΤ",  # the last letter is GREEK CAPITAL TAU
    "control": "BTC\x1bUSDT",
}
# How each refusal names the symbol (the first 40 characters of a long one).
NAMED = {
    "traversal": "'../../etc'",
    "long": "'" + "A" * 40 + "'... (300 characters)",
    "fullwidth": "'ＢＴＣＵＳＤＴ'",
    "stream_injection": "'btcusdt@trade/ethusdt'",
    "empty_item": "empty symbol at position 2",
    "greek_lookalike": "'BTCUSDΤ'",
    "control": "'BTC\\x1bUSDT'",
}


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "INGEST_LOG_LEVEL": "WARNING", "INGEST_ENV": "local", **(env or {})}
    return subprocess.run(
        [str(BIN / "ingest-pipeline"), *args],
        env=full_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def assert_one_line(run: subprocess.CompletedProcess, code: int, *expected: str) -> str:
    lines = run.stderr.splitlines()
    assert run.returncode == code, run.stderr[-3000:]
    assert len(lines) == 1, run.stderr[-3000:]
    assert "error: " in lines[0] and "Traceback" not in run.stderr
    for text in expected:
        assert text in lines[0]
    return lines[0]


@pytest.fixture(autouse=True)
def restore_signal_handlers() -> Iterator[None]:
    """``main()`` in process installs the commands' SIGINT/SIGTERM handlers: put pytest's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def spill_lock_held(state_dir: Path) -> Iterator[None]:
    """Another streamer's producer: the spill directory's lock held by this process."""
    spill = state_dir / "spill"
    spill.mkdir(parents=True)
    fd = os.open(spill / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
    os.close(fd)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


CASES: dict[str, tuple[Callable[..., tuple[list[str], dict[str, str]]], int, tuple[str, ...]]] = {
    "health_port_out_of_range": (
        lambda **_: (["stream", "--health-port", "99999"], {}),
        cli.EXIT_USAGE,
        ("argument --health-port", "99999"),
    ),
    "negative_duration": (
        lambda **_: (["stream", "--duration", "-5"], {}),
        cli.EXIT_USAGE,
        ("argument --duration", "-5"),
    ),
    "from_yesterday": (
        lambda **_: (["features", "--online", "--from", "yesterday"], {}),
        cli.EXIT_USAGE,
        ("argument --from", "'yesterday'"),
    ),
    "unsafe_symbol_flag": (
        lambda **_: (["stream", "--symbols", "btcusdt@trade/ethusdt"], {}),
        cli.EXIT_USAGE,
        ("argument --symbols", "'btcusdt@trade/ethusdt'"),
    ),
    "unsafe_symbol_env": (
        lambda **_: (["stream"], {"INGEST_SYMBOLS": "BTCUSDT,../../etc"}),
        cli.EXIT_CONFIG,
        ("environment variable INGEST_SYMBOLS", "'../../etc'"),
    ),
    "bad_int_env": (
        lambda **_: (["stream"], {"INGEST_ARCHIVE_GRACE_SECONDS": "soon"}),
        cli.EXIT_CONFIG,
        ("environment variable INGEST_ARCHIVE_GRACE_SECONDS", "'soon'"),
    ),
    "malformed_ws_url": (
        lambda **_: (["stream", "--symbols", "BTCUSDT"], {"BINANCE_WS_URL": "ws://[::1"}),
        cli.EXIT_CONFIG,
        ("environment variable BINANCE_WS_URL", "'ws://[::1'"),
    ),
    "state_dir_unusable": (
        lambda tmp_path, **_: (
            ["stream", "--symbols", "BTCUSDT", "--state-dir", str(_a_file(tmp_path) / "sub")],
            {},
        ),
        cli.EXIT_STATE_DIR,
        ("state directory", "Not a directory"),
    ),
    "spill_dir_locked": (
        lambda state_dir, spill_lock_held, **_: (
            ["stream", "--symbols", "BTCUSDT", "--state-dir", str(state_dir)],
            {},
        ),
        cli.EXIT_SPILL_LOCKED,
        ("spill dir", "another streamer"),
    ),
    "health_port_in_use": (
        lambda state_dir, busy_port, **_: (
            [
                "stream",
                "--symbols",
                "BTCUSDT",
                "--state-dir",
                str(state_dir),
                "--health-port",
                str(busy_port),
            ],
            {},
        ),  # fmt: skip
        cli.EXIT_HEALTH_PORT,
        ("cannot serve /health", "address already in use"),
    ),
}


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    return path


@pytest.mark.integration  # the CLI as a process; one case holds a port
@pytest.mark.parametrize("case", list(CASES))
def test_each_cli_error_is_one_line_with_its_exit_code(
    case: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    build, code, expected = CASES[case]
    fixtures = {
        name: request.getfixturevalue(name)
        for name in ("state_dir", "spill_lock_held", "busy_port")
        if name in build.__code__.co_varnames
    }
    args, env = build(tmp_path=tmp_path, **fixtures)
    assert_one_line(run_cli(args, env), code, *expected)


def test_exit_codes_are_distinct_and_documented() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    codes = [getattr(cli, n) for n in dir(cli) if n.startswith("EXIT_") and n != "EXIT_CODES"]
    assert len(codes) == len(set(codes)) == len(cli.EXIT_CODES)
    for code in codes:
        assert f"| {code} |" in readme, f"exit code {code} missing from the README's table"


@pytest.mark.parametrize("command", ["stream", "features", "demo", "load-capture"])
@pytest.mark.parametrize("kind", list(UNSAFE))
def test_every_unsafe_symbol_is_refused_by_name_on_every_flag(
    command: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "--online"] if command == "features" else [command]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--symbols", UNSAFE[kind]])
    assert exit_info.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "argument --symbols" in err[0] and NAMED[kind] in err[0], err


@pytest.mark.parametrize("kind", list(UNSAFE))
def test_every_unsafe_symbol_is_refused_by_name_from_the_environment(
    kind: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INGEST_SYMBOLS", UNSAFE[kind])
    assert cli.main(["stream"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "INGEST_SYMBOLS" in err[0] and NAMED[kind] in err[0], err


@pytest.mark.parametrize("kind", list(UNSAFE))
def test_every_unsafe_symbol_is_refused_by_the_streamer_constructor(
    kind: str, local_settings: Settings
) -> None:
    from ingest_pipeline.streaming import Streamer, StreamerConfig
    from ingest_pipeline.symbols import UnsafeSymbol

    symbols = tuple(UNSAFE[kind].split(",")) if kind == "empty_item" else (UNSAFE[kind],)
    with pytest.raises(UnsafeSymbol) as refused:
        Streamer(local_settings, StreamerConfig(symbols=symbols))
    assert NAMED[kind].replace(" at position 2", "") in str(refused.value)


@pytest.mark.parametrize("command", ["local-aws", "demo"])
def test_a_stand_in_without_its_extra_is_one_line_naming_the_extra(
    command: str, tmp_path: Path
) -> None:
    """An install without ``[standins]``: moto made unimportable in the real subprocess, as
    ``pip install .`` leaves it (checked against a real install in the issue 13 report)."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['moto'] = None\n")
    run = run_cli([command], {"PYTHONPATH": str(tmp_path)})
    assert_one_line(
        run, cli.EXIT_STANDINS, "'moto'", "[standins] extra", "ingest_pipeline[standins]"
    )
