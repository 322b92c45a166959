"""The run config (engine.config), `cftrade check` and the committed JSON Schema.

Good configs live in tests/data/configs/good/; the bad-file corpus is test_config_corpus.py.
Strategies here are tiny test classes, so these tests do not depend on the shipped ones.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Annotated

import msgspec
import pytest

from engine import config_cli
from engine.config import ExchangeConfig, RunConfig, load_run_config
from engine.configload import Amount, dumps, loads
from engine.errors import ConfigError
from engine.registry import register

DATA = Path(__file__).parent / "data" / "configs"
GOOD = sorted((DATA / "good").glob("*.yaml"))
CANARY_COOKIE = "canary-cookie-7b1f0e55"
CANARY_PASS = "canary-passphrase-c0ffee42"


@register("h6_maker")
class H6Maker:
    """A stand-in strategy: only its Config matters to the config layer."""

    class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
        spread_ticks: Annotated[int, msgspec.Meta(gt=0)] = 2
        """Distance of each quote from the mid, in ticks."""
        size: Amount = "0.01"
        """Quote size, base asset."""
        persist: bool = False
        label: str = "maker"


@register("h6_taker")
class H6Taker:
    class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
        quantity: Amount
        """Required: total to execute."""


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Canary secrets in env vars and in 0600 / 0644 / symlinked files under tmp_path."""
    monkeypatch.setenv("CF_TEST_COOKIE", CANARY_COOKIE)
    monkeypatch.setenv("CF_TEST_PASSPHRASE", CANARY_PASS)
    monkeypatch.delenv("CF_TEST_UNSET", raising=False)
    sec = tmp_path / "secrets"
    sec.mkdir()
    ok = sec / "passphrase.txt"
    ok.write_text(CANARY_PASS + "\n")
    os.chmod(ok, 0o600)
    loose = sec / "world-readable.txt"
    loose.write_text(CANARY_PASS + "\n")
    os.chmod(loose, 0o644)
    (sec / "link.txt").symlink_to(ok)
    return tmp_path


def copy_in(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    dst.write_bytes(src.read_bytes())
    return dst


@pytest.mark.parametrize("src", GOOD, ids=[p.stem for p in GOOD])
def test_good_configs_load_and_round_trip(src: Path, secrets_env: Path) -> None:
    path = copy_in(src, secrets_env)
    cfg = load_run_config(str(path))
    assert isinstance(cfg, RunConfig)
    for s in cfg.strategies:
        assert isinstance(s.params, s.strategy_class.Config)  # type: ignore[attr-defined]
    again = loads(dumps(cfg), RunConfig, filename=str(path))
    assert again == cfg
    text = repr(cfg) + dumps(cfg)
    assert CANARY_COOKIE not in text and CANARY_PASS not in text


def test_minimal_config_defaults(tmp_path: Path) -> None:
    path = tmp_path / "min.yaml"
    path.write_text("strategies:\n  - {name: a, class: h6_maker, market: 'XBT:GBP'}\n")
    cfg = load_run_config(str(path))
    assert cfg.exchange == ExchangeConfig() and cfg.exchange.embedded
    assert cfg.markets == ("XBT:GBP",)
    assert cfg.strategies[0].params == H6Maker.Config()
    assert cfg.run.api_version == 2 and cfg.run.state_dir == str(tmp_path / "state")
    assert cfg.recording.path == str(tmp_path / "recordings")
    assert cfg.rate_limits.safety_factor == 0.9
    assert cfg.order_budget("a") == (900, 1000.0)


def test_full_config_values(secrets_env: Path) -> None:
    cfg = load_run_config(str(copy_in(DATA / "good" / "full.yaml", secrets_env)))
    ex = cfg.exchange
    assert (ex.url, ex.user_id, ex.live, ex.requires_live_flag) == ("wss://api.example.com/", 42, True, True)
    assert ex.cookie is not None and ex.cookie.resolve().reveal() == CANARY_COOKIE
    assert ex.passphrase is not None and ex.passphrase.resolve().reveal() == CANARY_PASS
    with pytest.raises(ConfigError, match="needs 'live: true' in the config and --live"):
        ex.assert_live_allowed(cli_live=False)
    ex.assert_live_allowed(cli_live=True)
    assert cfg.markets == ("XBT:GBP", "XBT:EUR")
    mm, tk = cfg.strategies
    assert mm.params == H6Maker.Config(spread_ticks=5, size="0.05", persist=True, label="no")
    assert tk.params == H6Taker.Config(quantity="1.5")
    assert cfg.scales.parse_amount(tk.params.quantity, tk.market_info.base) == 150_000_000
    assert mm.risk is not None and mm.risk.max_position == {"XBT": "0.5"}
    assert cfg.order_budget("mm") == (100, 1000.0)
    assert cfg.order_budget("taker") == (800, 1000.0)  # what mm leaves of 0.9 x 1000/1000 s
    assert cfg.logging.file == str(secrets_env / "logs" / "run.log")


def test_schema_file_is_up_to_date() -> None:
    committed = config_cli.SCHEMA_PATH.read_text()
    assert committed == config_cli.schema_text(), "regenerate: cftrade check --schema > schema/config.schema.json"
    schema = json.loads(committed)
    spec = schema["$defs"]["StrategySpec"]
    assert spec["additionalProperties"] is False and "class" in spec["properties"]
    assert spec["properties"]["params"]["type"] == "object"
    assert schema["$defs"]["RiskLimits"]["properties"]["max_open_orders"]["anyOf"][0]["maximum"] == 1000
    assert "Largest quantity of one order" in schema["$defs"]["RiskLimits"]["properties"]["max_order_quantity"]["description"]


def test_schema_with_strategies_types_params() -> None:
    schema = config_cli.run_config_schema(with_strategies=True)
    rules = {r["if"]["properties"]["class"]["const"]: r["then"] for r in schema["$defs"]["StrategySpec"]["allOf"]}
    ref = rules["h6_maker"]["properties"]["params"]["$ref"]
    maker = schema["$defs"][ref.removeprefix("#/$defs/")]
    assert maker["additionalProperties"] is False
    assert maker["properties"]["spread_ticks"] == {
        "type": "integer", "exclusiveMinimum": 0, "default": 2,
        "description": "Distance of each quote from the mid, in ticks.",
    }


def test_cli_schema_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert config_cli.main(["--schema"]) == 0
    assert capsys.readouterr().out == config_cli.schema_text()
    assert config_cli.main([]) == 2
    assert "give a CONFIG file" in capsys.readouterr().err
    assert config_cli.main(["--bogus"]) == 2


def test_B7_cli_check_ok_and_error_no_network(
    secrets_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[object] = []

    def no_network(*a: object, **k: object) -> None:
        attempts.append(a)
        raise AssertionError("cftrade check must not open sockets")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    good = copy_in(DATA / "good" / "full.yaml", secrets_env)
    assert config_cli.main([str(good)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(f"OK {good}\n")
    assert "strategies: mm (h6_maker on XBT:GBP), taker (tests.test_config:H6Taker on XBT:EUR)" in out.out
    assert "wss://api.example.com/ as user 42 [LIVE (needs --live)]" in out.out
    assert CANARY_COOKIE not in out.out + out.err and CANARY_PASS not in out.out + out.err
    bad = secrets_env / "bad.yaml"
    bad.write_text("strategies:\n  - name: a\n    class: h6_maker\n    market: 'XBT:GBP'\n    params: {spread_ticks: -3}\n")
    assert config_cli.main([str(bad), str(good)]) == 2
    out = capsys.readouterr()
    assert out.err == f"{bad}:5: strategies[0].params.spread_ticks: must be > 0, was -3\n"
    assert out.out.startswith(f"OK {good}")
    assert attempts == []


def test_cli_dispatch_through_cftrade(secrets_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine import cli

    assert cli.main(["check", str(secrets_env / "missing.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_embedded_exchange_settings_file_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("exchange: {config: ex.yaml}\nstrategies: [{name: a, class: h6_maker, market: 'XBT:GBP'}]\n")
    with pytest.raises(ConfigError, match=r"exchange.config: no such file .*ex\.yaml"):
        config_cli.check(str(path))
    (tmp_path / "ex.yaml").write_text("users:\n  - {user_id: 1, demo: true, balances: {GBP: '100'}}\n")
    assert config_cli.check(str(path)).exchange.config == str(tmp_path / "ex.yaml")
    # The embedded exchange's own settings are checked too, with their own file and line.
    (tmp_path / "ex.yaml").write_text("users:\n  - user_id: 1\n    demo: no\n")
    with pytest.raises(ConfigError, match=r"ex\.yaml:3: users\[0\]\.demo: expected true or false, got no"):
        config_cli.check(str(path))


def test_risk_limits_for_the_governor_are_scaled_and_tightened(secrets_env: Path) -> None:
    from engine.limits import Limit
    from engine.risk.model import RiskLimits as Scaled

    cfg = load_run_config(str(copy_in(DATA / "good" / "full.yaml", secrets_env)))
    assert cfg.strategy_risk("mm") == Scaled(
        max_order_quantity=10_000_000,  # own "0.1" XBT at 1e8
        max_order_notional=2_500_000,  # global "25000.00" GBP at 1e2
        max_position=50_000_000,  # own "0.5" beats global "2"
        max_open_orders=20,  # own; the global 1000 is the user's limit
        price_band_bps=200,  # own 200 beats global 500 ...
        price_band_reference="mid",  # ... and brings its own reference
        max_loss=100_000,
        max_drawdown=150_050,
        order_rate=Limit(100, 1000.0, "user"),
    )
    assert cfg.strategy_risk("taker") == Scaled(
        max_order_notional=2_500_000,  # EUR this time
        max_position=200_000_000,
        price_band_bps=500,
        price_band_reference="last",
        max_loss=100_000,
        max_drawdown=150_050,
    )
    user = cfg.user_risk()
    assert (user.max_open_orders, user.algorithm, user.order_budget) == (1000, "bucket", Limit(900, 1000.0, "user"))
    with pytest.raises(KeyError):
        cfg.strategy_risk("nobody")


def test_risk_limits_follow_the_api_version(tmp_path: Path) -> None:
    path = tmp_path / "v1.yaml"
    path.write_text((DATA / "good" / "v1_embedded.yaml").read_text())
    cfg = load_run_config(str(path))
    assert cfg.run.api_version == 1
    r = cfg.strategy_risk("t")
    assert (r.max_order_quantity, r.max_loss) == (1, 1025)  # "0.0001" XBT at 1e4, "10.25" EUR at 1e2


def test_exchange_embedded_is_the_named_default() -> None:
    # The issue names the section "exchange (embedded, or a URL ...)": the word itself works.
    strategies = "strategies: [{name: a, class: h6_maker, market: 'XBT:GBP'}]\n"
    for text in ("exchange: embedded\n", "exchange: 'embedded'\n", "exchange: {}\n", ""):
        cfg = loads(text + strategies, RunConfig)
        assert cfg.exchange == ExchangeConfig() and cfg.exchange.embedded
    with pytest.raises(ConfigError, match=r"<string>:1: exchange: expected a mapping or 'embedded', got a plain string 'embeded'"):
        loads("exchange: embeded\n" + strategies, RunConfig)
    with pytest.raises(ConfigError, match=r"<string>:1: exchange: expected a mapping or 'embedded', got a boolean"):
        loads("exchange: true\n" + strategies, RunConfig)
    # The schema takes the word too, and still describes the mapping.
    d = config_cli.run_config_schema()["$defs"]["ExchangeConfig"]
    assert d["anyOf"][0] == {"enum": ["embedded"]}
    assert d["anyOf"][1]["additionalProperties"] is False and "url" in d["anyOf"][1]["properties"]


def test_check_recognises_the_exchange_settings_files(capsys: pytest.CaptureFixture[str]) -> None:
    # `cftrade check configs/*.yaml` checks the exchange's settings files as such (they
    # failed as run configs: "api_version: unknown key").
    root = Path(__file__).resolve().parents[1]
    assert config_cli.main([str(root / "configs" / "exchange.yaml"), str(root / "configs" / "market_maker.yaml")]) == 0
    out = capsys.readouterr().out
    assert "exchange settings" in out and "OK " in out and "/../" not in out


def test_check_reports_errors_in_an_exchange_settings_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "ex.yaml"
    bad.write_text("api_version: 2\nusers:\n  - user_id: 1\n    demo: no\n")
    assert config_cli.main([str(bad)]) == 2
    assert re.search(r"ex\.yaml:4: users\[0\]\.demo: expected true or false", capsys.readouterr().err)


def test_strategy_decimal_params_must_fit_their_market_at_check_time() -> None:
    # Too precise for any asset of the market: refused by check, with file:line and path (it
    # used to pass check and halt the strategy at on_start with a ScaleError, persisted).
    head = "strategies:\n  - name: a\n    class: h6_maker\n    market: 'XBT:GBP'\n    params:\n"
    with pytest.raises(ConfigError, match=r"<string>:6: strategies\[0\]\.params\.size: amount '0\.000000001' has "
                                          r"more decimal places than XBT or GBP amounts allow"):
        loads(head + "      size: '0.000000001'\n", RunConfig)
    assert loads(head + "      size: '0.00000001'\n", RunConfig).strategies[0].params.size == "0.00000001"
    mm = "strategies:\n  - name: m\n    class: market_maker\n    market: 'XBT:GBP'\n    params:\n"
    with pytest.raises(ConfigError, match=r"<string>:6: strategies\[0\]\.params\.half_spread: XBT:GBP price '3\.001'"):
        loads(mm + "      half_spread: '3.001'\n", RunConfig)
