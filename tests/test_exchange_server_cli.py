"""``cftrade exchange`` as a real process: one URL line, SIGTERM, snapshot, restore (F6)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from engine.exchange import cli
from tests.test_exchange_server_support import RawClient, limit_order

REPO = Path(__file__).resolve().parents[1]


async def _start(*args: str) -> tuple[trio.Process, str]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "engine", "exchange", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(30):
        while not buf.endswith(b"\n"):
            chunk = await proc.stdout.receive_some(1)
            assert chunk, "exchange exited before printing its URL"
            buf += chunk
    return proc, buf.decode().strip()


async def _stop(proc: trio.Process) -> tuple[int, bytes]:
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    rest = b""
    with trio.fail_after(30):
        while chunk := await proc.stdout.receive_some():
            rest += chunk
        code = await proc.wait()
    return code, rest


async def test_serve_sigterm_snapshot_and_restore(tmp_path: Path) -> None:
    state = tmp_path / "exchange.state.json"
    proc, url = await _start("--no-participants", "--state", str(state), "--log-level", "WARNING")
    try:
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/")
        async with open_websocket_url(url) as ws:
            c = RawClient(ws)
            await c.login()
            kept = await c.request(limit_order(10_000, 2_500_000, tonce=1))
            gone = await c.request(limit_order(20_000, 2_400_000, tonce=2, persist=False))
            assert kept["error_code"] == 0 and gone["error_code"] == 0
    finally:
        code, rest = await _stop(proc)
    assert code == 0
    assert rest == b""  # exactly one line on stdout: the URL
    assert stat.S_IMODE(state.stat().st_mode) == 0o600

    proc, url2 = await _start("--no-participants", "--state", str(state), "--log-level", "WARNING")
    try:
        async with open_websocket_url(url2) as ws:
            c = RawClient(ws)
            await c.login()
            orders = (await c.request({"method": "GetOrders"}))["orders"]
            # The persist:true order survived the restart; the persist:false one went with
            # its connection.  The tonce high-water mark survived too.
            assert [(o["id"], o["tonce"], o["quantity"], o["price"]) for o in orders] == [
                (kept["id"], 1, 10_000, 2_500_000)
            ]
            assert (await c.request(limit_order(1_000, 2_000_000, tonce=2)))["error_code"] == 3
    finally:
        code, _ = await _stop(proc)
    assert code == 0


def test_bad_config_exits_2_naming_file_line_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("users:\n  - user_id: 1\n    demo: true\nparticipants:\n  sed: 3\n")
    assert cli.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5: participants.sed: unknown key; did you mean 'seed'?" in err


def test_bad_port_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_demo_config_loads_and_has_the_auth_md_user() -> None:
    config = cli.load_config(cli.DEFAULT_CONFIG)
    settings = config.exchange_settings()
    demo = [u for u in settings.users if u.demo]
    assert [u.user_id for u in demo] == [1]
    assert config.participants.enabled and len(settings.users) == 1 + config.participants.user_count
    # The only inline credentials are the AUTH.md demo ones, behind demo: true.
    text = cli.DEFAULT_CONFIG.read_text()
    assert "passphrase:" not in text and "cookie:" not in text
    assert os.access(cli.DEFAULT_CONFIG, os.R_OK)
