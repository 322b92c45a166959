"""``cftrade run`` as a real process against a real ``cftrade exchange`` process (loopback TCP).

X1   a canary passphrase and cookie (and the private key derived from them) never appear in
     any output: stdout, stderr at DEBUG, the summary JSON, the state dir, the exchange's own
     output, ``repr(config)``; also on the failing-authentication path (wrong canary).
F15  SIGINT during order flow: exit status 0, every own order cancelled by the runner
     (summary), and the exchange holds no open order of the user afterwards.
F16  ``cftrade kill CONFIG`` against a running ``cftrade run``: every own order is closed on the
     exchange while the runner is still connected (so the runner cancelled them, not the
     exchange's cancel-on-disconnect), within about a second.

An *observer* logs in as the same user on a second connection: the exchange sends it every
own-order notice of that user (tonce included), so it sees the runner's orders open and close
from the exchange's side without touching them.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from engine.connection import Credentials, open_connection
from engine.protocol.auth import derive_private_key
from engine.protocol.messages import UNSET, GetOrders, GetOrdersReply, OrderClosed, OrderOpened
from engine.secret import Secret
from tests.test_runtime_support import CONFIGS, ROOT

USER_ID = 2
PASS_ENV = "CF_CANARY_PASSPHRASE"
COOKIE_ENV = "CF_CANARY_COOKIE"


def _canaries() -> tuple[str, str]:
    """A fresh (passphrase, cookie) per test: nothing can match them by accident."""
    phrase = "CANARY-passphrase-" + secrets.token_hex(8)
    cookie = base64.b64encode(b"CANARY-cookie-" + secrets.token_bytes(9)).decode()
    return phrase, cookie


def _exchange_yaml(tmp_path: Path) -> Path:
    """configs/exchange.yaml plus user 2 whose credentials come from the environment, with a
    lighter simulated market."""
    text = (CONFIGS / "exchange.yaml").read_text()
    user = (
        f"users:\n  - user_id: {USER_ID}\n    cookie_env: {COOKIE_ENV}\n    passphrase_env: {PASS_ENV}\n"
        '    balances: {XBT: "10", GBP: "250000.00", EUR: "250000.00"}\n'
    )
    assert text.count("users:\n") == 1
    text = text.replace("users:\n", user, 1)
    text = text.replace("liquidity_providers: 4", "liquidity_providers: 2").replace(
        "orders_per_side: 60", "orders_per_side: 20")
    path = tmp_path / "exchange.yaml"
    path.write_text(text)
    return path


def _run_yaml(tmp_path: Path, url: str, name: str, passphrase_file: Path, *, level: str = "debug") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "exchange:\n"
        f"  url: \"{url}\"\n  user_id: {USER_ID}\n"
        f"  cookie: {{env: {COOKIE_ENV}}}\n  passphrase: {{file: \"{passphrase_file}\"}}\n"
        "strategies:\n"
        "  - name: mm\n    class: market_maker\n    market: \"XBT:GBP\"\n"
        "    params: {size: \"0.01\", half_spread: \"2.00\", min_requote_seconds: 2.0}\n"
        "  - name: grid\n    class: grid\n    market: \"XBT:GBP\"\n"
        "    params: {levels: 2, spacing: \"3.00\", size: \"0.01\"}\n"
        f"run:\n  state_dir: \"{tmp_path / ('state-' + name)}\"\n"
        f"logging:\n  level: \"{level}\"\n"
    )
    return path


def _secret_file(tmp_path: Path, name: str, value: str) -> Path:
    p = tmp_path / name
    p.write_text(value + "\n")
    os.chmod(p, 0o600)
    return p


class Exchange:
    """A ``cftrade exchange`` subprocess; its stdout and stderr go to files for grepping."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.out = tmp_path / "exchange.stdout"
        self.err = tmp_path / "exchange.stderr"
        self.config = _exchange_yaml(tmp_path)
        self.env = env
        self.proc: Any = None
        self.url = ""

    async def start(self) -> str:
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "engine", "exchange", "--config", str(self.config), "--log-level", "DEBUG"],
            stdout=self.out.open("wb"), stderr=self.err.open("wb"), env=self.env, cwd=ROOT,
        )
        with trio.fail_after(60):
            while not self.out.read_text().endswith("\n"):
                assert self.proc.poll() is None, self.err.read_text()
                await trio.sleep(0.05)
        self.url = self.out.read_text().strip()
        assert self.url.startswith("ws://127.0.0.1:"), self.url
        return self.url

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with trio.fail_after(30):
                assert await self.proc.wait() == 0, self.err.read_text()[-2000:]


def _env(phrase: str, cookie: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CF_")}
    env.update({PASS_ENV: phrase, COOKIE_ENV: cookie, "PYTHONPATH": str(ROOT)})
    return env


async def _cftrade(args: list[str], env: dict[str, str], out: Path, err: Path) -> int:
    with trio.fail_after(90):
        done = await trio.run_process(
            [sys.executable, "-m", "engine", *args], stdout=out.open("wb"), stderr=err.open("wb"),
            env=env, cwd=ROOT, check=False,
        )
    return done.returncode


class Observer:
    """Logs in as the runner's user on its own connection and tracks the user's open orders
    from own-order notices (tonce -> exchange id)."""

    def __init__(self, url: str, phrase: str, cookie: str) -> None:
        self.creds = Credentials(USER_ID, Secret(cookie, "cookie"), Secret(phrase, "passphrase"))
        self.url = url
        self.open: dict[int, int] = {}
        self.opened = 0
        self.closed_at: dict[int, float] = {}
        self.changed = trio.Event()
        self.conn: Any = None

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with open_connection(self.url, self.creds, allow_insecure=True) as conn:
            self.conn = conn
            task_status.started()
            async for ev in conn.notices:
                if isinstance(ev, OrderOpened) and ev.tonce is not UNSET:
                    self.open[ev.id] = ev.tonce
                    self.opened += 1
                elif isinstance(ev, OrderClosed) and ev.tonce is not UNSET:
                    self.open.pop(ev.id, None)
                    self.closed_at[ev.id] = trio.current_time()
                self.changed.set()
                self.changed = trio.Event()

    async def wait_for(self, predicate: Any) -> None:
        while not predicate():
            await self.changed.wait()

    async def exchange_open_orders(self) -> list[Any]:
        reply = await self.conn.request(GetOrders())
        assert isinstance(reply, GetOrdersReply)
        return list(reply.orders)


def _scan(paths: list[Path], needles: dict[str, str]) -> tuple[dict[str, list[str]], int]:
    """Which needle occurs in which file (binary search, so nothing escapes by encoding)."""
    hits: dict[str, list[str]] = {}
    scanned = 0
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            data = f.read_bytes()
            scanned += len(data)
            for label, needle in needles.items():
                if needle.encode() in data:
                    hits.setdefault(label, []).append(str(f))
    return hits, scanned


async def test_x1_canary_secrets_never_appear_in_any_output(tmp_path):
    phrase, cookie = _canaries()
    wrong = "CANARY-wrong-passphrase-" + secrets.token_hex(8)
    env = _env(phrase, cookie)
    ex = Exchange(tmp_path, env)
    await ex.start()
    try:
        good = _run_yaml(tmp_path, ex.url, "good", _secret_file(tmp_path, "good.pass", phrase))
        bad = _run_yaml(tmp_path, ex.url, "bad", _secret_file(tmp_path, "bad.pass", wrong))
        # A successful run at DEBUG that trades ...
        rc = await _cftrade(["run", str(good), "--duration", "8", "--log-level", "debug",
                             "--summary", str(tmp_path / "good-summary.json")],
                            env, tmp_path / "good.stdout", tmp_path / "good.stderr")
        assert rc == 0, (tmp_path / "good.stderr").read_text()[-3000:]
        summary = json.loads((tmp_path / "good-summary.json").read_text())
        assert summary["errors"] == [] and summary["commands_sent"]["place"] > 0, summary
        assert summary["ended"] == "duration"
        # ... and one refused at Authenticate (error 7: wrong passphrase), also at DEBUG.
        rc = await _cftrade(["run", str(bad), "--duration", "8", "--log-level", "debug",
                             "--summary", str(tmp_path / "bad-summary.json")],
                            env, tmp_path / "bad.stdout", tmp_path / "bad.stderr")
        assert rc == 1, (tmp_path / "bad.stderr").read_text()[-3000:]
        bad_err = (tmp_path / "bad.stderr").read_text()
        assert "error 7" in bad_err and "Traceback" not in bad_err, bad_err[-2000:]
        bad_summary = json.loads((tmp_path / "bad-summary.json").read_text())
        assert len(bad_summary["errors"]) == 1 and "error 7" in bad_summary["errors"][0], bad_summary
        assert bad_summary["ended"] == "failed"
    finally:
        await ex.stop()

    from engine.config import load_run_config

    old = dict(os.environ)
    try:
        os.environ[COOKIE_ENV] = cookie
        reprs = repr(load_run_config(str(good))) + repr(load_run_config(str(bad)))
    finally:
        os.environ.clear()
        os.environ.update(old)
    (tmp_path / "repr.txt").write_text(reprs)

    needles = {
        "passphrase": phrase,
        "wrong passphrase": wrong,
        "cookie": cookie,
        "private key": f"{derive_private_key(USER_ID, phrase).reveal():x}",
        "wrong private key": f"{derive_private_key(USER_ID, wrong).reveal():x}",
        "private key (decimal)": str(derive_private_key(USER_ID, phrase).reveal()),
    }
    outputs = [tmp_path / n for n in ("good.stdout", "good.stderr", "bad.stdout", "bad.stderr", "exchange.stdout",
                                      "exchange.stderr", "good-summary.json", "bad-summary.json", "repr.txt")]
    outputs += [tmp_path / "state-good", tmp_path / "state-bad"]
    assert all(p.exists() for p in outputs), [p for p in outputs if not p.exists()]
    hits, scanned = _scan(outputs, needles)
    assert hits == {}, hits
    # The scan looked at real output: DEBUG logs of a trading session, not empty files.
    assert scanned > 20_000, scanned
    assert "DEBUG" in (tmp_path / "good.stderr").read_text()
    # The secret files themselves do hold them (the scan would have found them there).
    assert _scan([tmp_path / "good.pass"], needles)[0] == {"passphrase": [str(tmp_path / "good.pass")]}
    print(f"\nX1: 0 hits for {len(needles)} canaries in {scanned / 1e6:.2f} MB of output")


async def test_f15_sigint_during_flow_exits_0_with_no_open_order_left(tmp_path):
    phrase, cookie = _canaries()
    env = _env(phrase, cookie)
    ex = Exchange(tmp_path, env)
    await ex.start()
    try:
        cfg = _run_yaml(tmp_path, ex.url, "run", _secret_file(tmp_path, "p", phrase), level="info")
        observer = Observer(ex.url, phrase, cookie)
        async with trio.open_nursery() as nursery:
            await nursery.start(observer.run)
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "engine", "run", str(cfg), "--summary", str(tmp_path / "summary.json")],
                stdout=(tmp_path / "run.stdout").open("wb"), stderr=(tmp_path / "run.stderr").open("wb"),
                env=env, cwd=ROOT,
            )
            # Wait for real flow: several orders opened, some resting right now.
            with trio.fail_after(60):
                await observer.wait_for(lambda: observer.opened >= 4 and len(observer.open) >= 2)
            resting = dict(observer.open)
            proc.send_signal(signal.SIGINT)
            with trio.fail_after(30):
                rc = await proc.wait()
            assert rc == 0, (tmp_path / "run.stderr").read_text()[-3000:]
            left = await observer.exchange_open_orders()
            nursery.cancel_scope.cancel()
    finally:
        await ex.stop()
    assert left == [], left
    assert all(i in observer.closed_at for i in resting), "orders resting at SIGINT were never closed"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["open_orders_left"] == 0 and summary["errors"] == [], summary
    assert summary["ended"] == "SIGINT"
    assert summary["commands_sent"]["cancel"] >= len(resting)
    assert "still open" not in (tmp_path / "run.stderr").read_text()


async def test_f16_cftrade_kill_makes_a_running_runner_cancel_everything(tmp_path):
    phrase, cookie = _canaries()
    env = _env(phrase, cookie)
    ex = Exchange(tmp_path, env)
    await ex.start()
    try:
        cfg = _run_yaml(tmp_path, ex.url, "run", _secret_file(tmp_path, "p", phrase), level="info")
        observer = Observer(ex.url, phrase, cookie)
        async with trio.open_nursery() as nursery:
            await nursery.start(observer.run)
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "engine", "run", str(cfg), "--summary", str(tmp_path / "summary.json")],
                stdout=(tmp_path / "run.stdout").open("wb"), stderr=(tmp_path / "run.stderr").open("wb"),
                env=env, cwd=ROOT,
            )
            with trio.fail_after(60):
                await observer.wait_for(lambda: len(observer.open) >= 2)
            t_kill = trio.current_time()
            with trio.fail_after(60):
                killed = await trio.run_process(
                    [sys.executable, "-m", "engine", "kill", str(cfg), "--reason", "desk says stop"],
                    env=env, cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False,
                )
            assert killed.returncode == 0, killed.stderr
            with trio.fail_after(10):
                await observer.wait_for(lambda: not observer.open)
            t_flat = trio.current_time()
            still_running = proc.poll() is None
            opened_at_flat = observer.opened
            await trio.sleep(2.0)  # HALTED: nothing new may open
            opened_later = observer.opened
            proc.send_signal(signal.SIGINT)
            with trio.fail_after(30):
                rc = await proc.wait()
            nursery.cancel_scope.cancel()
    finally:
        await ex.stop()
    assert still_running, "the orders must be cancelled by the live runner, not by its disconnect"
    # The CLI's own start-up (a Python process) is part of this; the runner's share is <= 0.5 s.
    assert t_flat - t_kill < 10, t_flat - t_kill
    assert opened_later == opened_at_flat
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {s["state"] for s in summary["strategies"].values()} == {"HALTED"}
    print(f"\nF16 kill CLI: flat {t_flat - t_kill:.2f} s after `cftrade kill` started")
