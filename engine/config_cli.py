"""``cftrade check``: validate run configs completely, with no network I/O.

::

    cftrade check configs/mm.yaml            # OK summary, exit 0; or the error, exit 2
    cftrade check --schema                   # the JSON Schema of run configs (stdout)
    cftrade check --schema --with-strategies # ... plus each registered strategy's params

Checking is everything ``cftrade run`` does before it opens a socket: strict YAML, every
key and type, each strategy's ``params`` against its own ``Config``, cross-field rules, and
every secret reference (the variable is set, or the file is 0600, owned and no symlink).
Secrets are read to prove they exist and are then dropped; nothing prints them.

``schema/config.schema.json`` is this command's ``--schema`` output, committed for editors
(``# yaml-language-server: $schema=../schema/config.schema.json``); a test keeps it current.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.config import RunConfig, load_run_config
from engine.configload import json_schema
from engine.errors import ConfigError, ScaleError, SecretError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / "config.schema.json"
SCHEMA_ID = "https://cftrade.invalid/schema/config.schema.json"


def _prefix_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        return {
            k: (v.replace("#/$defs/", f"#/$defs/{prefix}") if k == "$ref" and isinstance(v, str) else _prefix_refs(v, prefix))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_prefix_refs(v, prefix) for v in node]
    return node


def run_config_schema(*, with_strategies: bool = False) -> dict[str, Any]:
    """The JSON Schema of :class:`~engine.config.RunConfig`.

    By default strategy ``params`` are an open object (the committed schema must not change
    whenever a strategy is added).  ``with_strategies`` adds, for every registered strategy,
    an if/then rule typing ``params`` by that strategy's ``Config``.
    """
    schema = json_schema(RunConfig, title="cftrade run config")
    schema = {"$schema": schema.pop("$schema"), "$id": SCHEMA_ID, **schema}
    if with_strategies:
        from engine.registry import registered

        defs = schema["$defs"]
        rules = []
        for name, cls in registered().items():
            sub = _prefix_refs(json_schema(cls.Config), f"{name}.")  # type: ignore[attr-defined]
            for k, v in sub.pop("$defs", {}).items():
                defs[f"{name}.{k}"] = v
            sub.pop("$schema", None)
            rules.append({
                "if": {"properties": {"class": {"const": name}}, "required": ["class"]},
                "then": {"properties": {"params": sub}},
            })
        if rules:
            defs["StrategySpec"]["allOf"] = rules
    return schema


def schema_text(*, with_strategies: bool = False) -> str:
    """The schema as the exact text committed in ``schema/config.schema.json``."""
    return json.dumps(run_config_schema(with_strategies=with_strategies), indent=2, ensure_ascii=False) + "\n"


def summary(path: str, cfg: RunConfig) -> str:
    """The short OK report: exchange target, markets, strategies, run settings."""
    r = cfg.run
    strategies = ", ".join(f"{s.name} ({s.class_} on {s.market})" for s in cfg.strategies)
    duration = f"{r.duration:g} s" if r.duration is not None else "until stopped"
    lines = [
        f"OK {path}",
        f"  exchange:   {cfg.exchange.describe()}",
        f"  markets:    {', '.join(cfg.markets)}",
        f"  strategies: {strategies}",
        f"  run:        API v{r.api_version}, {duration}, seed {r.seed}, state in {Path(r.state_dir).resolve()}",
    ]
    if cfg.exchange.requires_live_flag:
        lines.append("  note:       live target: `cftrade run` refuses it without --live")
    return "\n".join(lines) + "\n"


def check(path: str) -> RunConfig:
    """Validate ``path`` fully (raises ConfigError); the embedded exchange's settings too."""
    cfg = load_run_config(path)
    ex = cfg.exchange
    if ex.embedded and ex.config is not None:
        if not Path(ex.config).is_file():
            raise ConfigError(f"{path}: exchange.config: no such file {ex.config}")
        from engine.configload import load
        from engine.exchange.settings import ExchangeSettings

        load(ex.config, ExchangeSettings)  # its errors name that file, its line and key
    return cfg


def main(argv: list[str] | None = None) -> int:
    """``cftrade check [--schema [--with-strategies]] [CONFIG ...]``; 0 if all valid, else 2."""
    ap = argparse.ArgumentParser(prog="cftrade check", description="Validate run configs without any network I/O.")
    ap.add_argument("configs", nargs="*", metavar="CONFIG", help="YAML run config files")
    ap.add_argument("--schema", action="store_true", help="print the JSON Schema of run configs and exit")
    ap.add_argument("--with-strategies", action="store_true", help="with --schema: type params per registered strategy")
    ap.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    try:
        args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return int(e.code or 0) if e.code in (0, None) else 2
    if args.schema:
        sys.stdout.write(schema_text(with_strategies=args.with_strategies))
        return 0
    if not args.configs:
        ap.print_usage(sys.stderr)
        sys.stderr.write("cftrade check: give a CONFIG file (or --schema)\n")
        return 2
    status = 0
    for path in args.configs:
        try:
            if _is_exchange_settings(path):
                from engine.exchange.cli import load_config as load_exchange_config

                load_exchange_config(path)
                if not args.quiet:
                    sys.stdout.write(f"OK {path}\n  exchange settings (for cftrade exchange --config, "
                                     "or a run config's exchange.config)\n")
                continue
            cfg = check(path)
        except (ConfigError, SecretError, ScaleError) as e:
            sys.stderr.write(f"{e}\n")
            status = 2
            continue
        if not args.quiet:
            sys.stdout.write(summary(path, cfg))
    return status


_EXCHANGE_ONLY_KEYS = frozenset({"api_version", "users", "participants", "fees"})


def _is_exchange_settings(path: str) -> bool:
    """A file whose top level is an exchange's settings (configs/exchange.yaml), not a run
    config: it has an exchange-only key and no ``strategies``.  Anything unreadable is left
    to the run-config loader, whose errors name file, line and key."""
    import yaml

    try:
        with open(path, "rb") as fh:
            top = yaml.safe_load(fh.read(1 << 20))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(top, dict) and "strategies" not in top and bool(_EXCHANGE_ONLY_KEYS & set(top))


if __name__ == "__main__":
    raise SystemExit(main())
