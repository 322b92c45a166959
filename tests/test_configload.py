"""The generic strict YAML loader (engine.configload): scalar typing rules, structure, secrets.

The B7 bad-file corpus against the run config lives in test_config_corpus.py; these tests pin
the loader's own rules on small ad-hoc types.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import configload
from engine.configload import (
    MAX_BYTES,
    Amount,
    ConfigPath,
    ConfigStruct,
    Price,
    SecretRef,
    amount_to_int,
    dumps,
    invalid,
    load,
    loads,
    price_to_int,
)
from engine.errors import ConfigError, ScaleError
from engine.scale import V1, XBT, XBT_GBP

CANARY = "canary-S3cr3t-9f2e7d"


class Inner(ConfigStruct, frozen=True, kw_only=True):
    spread_ticks: Annotated[int, msgspec.Meta(gt=0)] = 2
    size: Amount = "0.01"
    limit: Price = "100"
    name: str = "x"
    persist: bool = False
    ratio: float = 0.5
    level: Literal["debug", "info"] = "info"
    api: Literal[1, 2] = 2
    tags: list[str] = []


class Outer(ConfigStruct, frozen=True, kw_only=True):
    inner: Inner = Inner()
    items: list[Inner] = []
    caps: dict[str, Amount] = {}
    cookie: SecretRef | None = None
    path: ConfigPath | None = None
    anything: Any = None


@pytest.fixture(autouse=True, params=["libyaml", "pure"])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on libyaml's parser (the default) and on PyYAML's pure-Python one."""
    if request.param == "pure":
        monkeypatch.setattr(configload, "_Loader", configload._StrictLoader)
    else:
        assert configload._Loader is not configload._StrictLoader, "libyaml missing: only the pure loader runs"
    return str(request.param)


def err(text: str, type_: type = Outer) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        loads(text, type_, filename="t.yaml")
    return ei.value


@pytest.mark.parametrize(
    ("text", "line", "path", "why"),
    [
        ("inner: {spread_ticks: -3}", 1, "inner.spread_ticks", "must be > 0, was -3"),
        ("inner:\n  persist: true\n  spred_ticks: 1", 3, "inner.spred_ticks", "did you mean 'spread_ticks'?"),
        ("inner: {name: no}", 1, "inner.name", 'reads as the boolean False; quote it if you mean the text: "no"'),
        ("inner: {name: on}", 1, "inner.name", "boolean True"),
        ("inner: {name: 010}", 1, "inner.name", "integer 8"),
        ("inner: {name: 1:30}", 1, "inner.name", "integer 90"),
        ("inner: {name: 0x1F}", 1, "inner.name", "integer 31"),
        ("inner: {name: 1e3}", 1, "inner.name", "expected a string, got a float 1e3"),
        ("inner: {name: 12}", 1, "inner.name", "expected a string, got an integer 12"),
        ("inner: {name: null}", 1, "inner.name", "expected a string, got null"),
        ("inner: {persist: no}", 1, "inner.persist", "expected true or false, got no; write false"),
        ("inner: {persist: True}", 1, "inner.persist", "got True; write true"),
        ("inner: {persist: 'true'}", 1, "inner.persist", "quoted string 'true'; remove the quotes"),
        ("inner: {persist: 1}", 1, "inner.persist", "expected true or false, got an integer"),
        ("inner: {spread_ticks: 010}", 1, "inner.spread_ticks", "plain decimal digits, got 010"),
        ("inner: {spread_ticks: 1_000}", 1, "inner.spread_ticks", "got 1_000"),
        ("inner: {spread_ticks: '5'}", 1, "inner.spread_ticks", "quoted string '5'; remove the quotes"),
        ("inner: {spread_ticks: 1.0}", 1, "inner.spread_ticks", "expected an integer, got a float"),
        ("inner: {spread_ticks: true}", 1, "inner.spread_ticks", "expected an integer, got a boolean"),
        ("inner: {ratio: .inf}", 1, "inner.ratio", "expected a number, got .inf"),
        ("inner: {ratio: yes}", 1, "inner.ratio", "expected a number"),
        ("inner: {size: 0.1}", 1, "inner.size", 'must be a quoted string, got a float 0.1; write "0.1"'),
        ("inner: {size: 1e3}", 1, "inner.size", 'write "1e3"'),
        ("inner: {size: 5}", 1, "inner.size", "must be a quoted string, got an integer 5"),
        ("inner: {size: '1.2.3'}", 1, "inner.size", "plain non-negative decimal digits"),
        ("inner: {size: '-1'}", 1, "inner.size", "plain non-negative decimal digits"),
        ("inner: {limit: 99.5}", 1, "inner.limit", "a decimal price must be a quoted string"),
        ("inner: {level: inof}", 1, "inner.level", "did you mean 'info'?"),
        ("inner: {api: 3}", 1, "inner.api", "must be one of 1, 2, was '3'"),
        ("inner: {tags: [a, no]}", 1, "inner.tags[1]", "boolean False"),
        ("inner: {tags: a}", 1, "inner.tags", "expected a list, got a plain string 'a'"),
        ("inner: 5", 1, "inner", "expected a mapping, got an integer"),
        ("items:\n  - {}\n  - spread_ticks: 0", 3, "items[1].spread_ticks", "must be > 0, was 0"),
        ("caps:\n  XBT: 0.5", 2, "caps.XBT", "must be a quoted string"),
        ("caps:\n  a b: 'x'", 2, "caps['a b']", "decimal"),
    ],
)
def test_B7_scalar_rules(text: str, line: int, path: str, why: str) -> None:
    e = err(text)
    assert (e.filename, e.line, e.path) == ("t.yaml", line, path), str(e)  # type: ignore[attr-defined]
    assert why in str(e)
    assert str(e).startswith(f"t.yaml:{line}: {path}: ")


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("a: &x 1\nb: *x", 1, "anchors (&x) are not allowed"),
        ("inner: !!python/object/apply:os.system ['ls']", 1, "explicit YAML tags"),
        ("inner: !!binary aGVsbG8=", 1, "explicit YAML tags"),
        ("inner: !custom {}", 1, "explicit YAML tags"),
        ("inner: {name: a}\ninner: {}", 2, "duplicate key 'inner' (first on line 1)"),
        ("inner: [\n", 2, "YAML syntax error"),
        ("inner:\n  name: a\n name: b", 3, "YAML syntax error"),
        ("no: 1", 1, "key 'no' is not a string in YAML"),
        ("? [a]\n: 1", 1, "mapping keys must be plain strings"),
        ("a: 1\n---\nb: 2", 2, "expected a single document"),
    ],
)
def test_B7_X3_yaml_structure(text: str, line: int, why: str) -> None:
    e = err(text)
    assert e.line == line, str(e)  # type: ignore[attr-defined]
    assert why in str(e)


def test_B7_alias_bomb_rejected_at_first_alias() -> None:
    bomb = 'a: &a ["lol","lol"]\nb: &b [*a,*a]\nc: &c [*b,*b]\nd: [*c,*c]\n'
    assert "anchors (&a)" in str(err(bomb))


def test_B7_oversized_text_and_file(tmp_path: Path) -> None:
    big = "# " + "x" * MAX_BYTES + "\n"
    assert "limited to 1048576 bytes" in str(err(big))
    f = tmp_path / "big.yaml"
    f.write_text(big)
    with pytest.raises(ConfigError, match=r"big\.yaml: file is \d+ bytes"):
        load(f, Outer)


def test_B7_deep_nesting_refused() -> None:
    e = err("anything: " + "[" * 200 + "]" * 200)
    assert "nesting" in str(e)


def test_X1_inline_secret_never_echoed() -> None:
    for text in (f"cookie: {CANARY}", f"cookie: '{CANARY}'", f"cookie: [{CANARY}]", f"cookie: {{value: {CANARY}}}"):
        e = err(text)
        assert CANARY not in str(e)
        assert e.path.startswith("cookie")  # type: ignore[attr-defined]
    assert "must not be written inline" in str(err(f"cookie: {CANARY}"))


def test_X1_X8_secret_refs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H6_TEST_COOKIE", CANARY)
    cfg = loads("cookie: {env: H6_TEST_COOKIE}", Outer)
    assert cfg.cookie is not None and cfg.cookie.resolve().reveal() == CANARY
    assert CANARY not in repr(cfg)
    monkeypatch.delenv("H6_TEST_COOKIE")
    e = err("\ncookie: {env: H6_TEST_COOKIE}")
    assert (e.line, e.path) == (2, "cookie") and "H6_TEST_COOKIE is not set" in str(e)  # type: ignore[attr-defined]
    # file: relative to the config file's directory; 0600 accepted, 0644 and symlinks refused.
    secret = tmp_path / "cookie.txt"
    secret.write_text(CANARY + "\n")
    os.chmod(secret, 0o600)
    conf = tmp_path / "c.yaml"
    conf.write_text("cookie: {file: cookie.txt}\n")
    got = load(conf, Outer)
    assert got.cookie is not None and got.cookie.file == str(secret)
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match=r"c\.yaml:1: cookie: secret file .* has mode 0644") as ei:
        load(conf, Outer)
    assert CANARY not in str(ei.value)
    os.chmod(secret, 0o600)
    (tmp_path / "link.txt").symlink_to(secret)
    conf.write_text("cookie: {file: link.txt}\n")
    with pytest.raises(ConfigError, match="is a symlink") as ei:
        load(conf, Outer)
    assert CANARY not in str(ei.value)
    # Not resolving leaves presence unchecked (schema-only use).
    assert loads("cookie: {env: H6_NOT_SET_ANYWHERE}", Outer, resolve_secrets=False).cookie is not None
    assert "exactly one of 'env' or 'file'" in str(err("cookie: {env: A, file: b}"))
    assert "environment variable name" in str(err("cookie: {env: 'A B'}"))


def test_paths_are_relative_to_config_dir(tmp_path: Path) -> None:
    conf = tmp_path / "sub" / "c.yaml"
    conf.parent.mkdir()
    conf.write_text("path: state/x.json\n")
    assert load(conf, Outer).path == str(tmp_path / "sub" / "state" / "x.json")
    conf.write_text("path: /abs/x\n")
    assert load(conf, Outer).path == "/abs/x"


def test_good_values_and_round_trip() -> None:
    text = """
inner:
  spread_ticks: 7
  size: "0.5"
  limit: '25000.50'
  name: "no"
  persist: true
  ratio: 1e-3
  level: debug
  api: 1
  tags: [alpha, "010", '1e3']
items: [{}, {spread_ticks: 3}]
caps: {XBT: "1.5", GBP: "1000"}
anything: {a: [1, 2.5, true, null, on]}
"""
    cfg = loads(text, Outer)
    assert cfg.inner == Inner(
        spread_ticks=7, size="0.5", limit="25000.50", name="no", persist=True, ratio=0.001,
        level="debug", api=1, tags=["alpha", "010", "1e3"],
    )
    assert cfg.items == [Inner(), Inner(spread_ticks=3)]
    assert cfg.anything == {"a": [1, 2.5, True, None, "on"]}  # Any keeps ambiguous scalars as text
    assert loads(dumps(cfg), Outer) == cfg
    assert loads("", Outer) == Outer()
    assert loads("# only a comment\n", Outer) == Outer()


def test_amount_and_price_helpers() -> None:
    assert amount_to_int("1.5", XBT) == 150_000_000
    assert amount_to_int("1.5", XBT, V1) == 15_000
    assert price_to_int("25000.50", XBT_GBP) == 2_500_050
    with pytest.raises(ScaleError):
        amount_to_int("0.000000001", XBT)


class Shape(ConfigStruct, frozen=True, kw_only=True):
    kind: str
    params: Any = None
    _config_dynamic: ClassVar[tuple[str, ...]] = ("params",)

    @classmethod
    def _config_types(cls, values: dict[str, Any]) -> dict[str, Any]:
        if values["kind"] not in ("inner",):
            raise invalid("kind", f"unknown kind {values['kind']!r}")
        return {"params": Inner}

    def __post_init__(self) -> None:
        if self.kind == "inner" and isinstance(self.params, Inner) and self.params.name == "bad":
            raise invalid(("params", "name"), "is bad")


def test_dynamic_field_types_keep_paths_and_lines() -> None:
    class Top(ConfigStruct, frozen=True, kw_only=True):
        shapes: list[Shape]

    top = loads("shapes:\n- kind: inner\n  params: {spread_ticks: 4}\n", Top)
    assert top.shapes[0].params == Inner(spread_ticks=4)
    e = err("shapes:\n- kind: inner\n  params:\n    spread_ticks: 4\n    persist: no\n", Top)
    assert (e.line, e.path) == (5, "shapes[0].params.persist")  # type: ignore[attr-defined]
    e = err("shapes:\n- params: {}\n  kind: outer\n", Top)
    assert (e.line, e.path) == (3, "shapes[0].kind") and "unknown kind 'outer'" in str(e)  # type: ignore[attr-defined]
    # Absent: the dynamic type's defaults (a Struct is still validated, required keys reported).
    assert loads("shapes:\n- kind: inner\n", Top).shapes[0].params == Inner()
    e = err("shapes:\n- kind: inner\n  params:\n    persist: true\n    name: bad\n", Top)
    assert (e.line, e.path) == (5, "shapes[0].params.name") and "is bad" in str(e)  # type: ignore[attr-defined]
    e = err("other: 1\n", Top)
    assert (e.line, e.path) == (1, "other")  # type: ignore[attr-defined]
    e = err("{}\n", Top)
    assert e.path == "shapes" and "required key is missing" in str(e)  # type: ignore[attr-defined]


def test_B7_file_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"inner:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml:2: file is not valid UTF-8 \(byte 18\)"):
        load(f, Outer)


_texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)


# The loader fixture only swaps a module attribute: safe to share between examples.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=_texts,
    tags=st.lists(_texts, max_size=4),
    ticks=st.integers(1, 2**63 - 1),
    ratio=st.floats(allow_nan=False, allow_infinity=False),
    size=st.decimals(min_value=0, max_value=10**12, places=8).map(lambda d: format(d, "f")),
    persist=st.booleans(),
    caps=st.dictionaries(_texts, st.sampled_from(["0", "1.5", "1000"]), max_size=3),
)
def test_round_trip_any_values(
    loader: str, name: str, tags: list[str], ticks: int, ratio: float, size: str, persist: bool, caps: dict[str, str]
) -> None:
    # Whatever the strings hold ("no", "010", "1e3", "", newlines, unicode), dumps() quotes
    # them so loads() gives back exactly the same object.
    cfg = Outer(
        inner=Inner(spread_ticks=ticks, size=size, name=name, persist=persist, ratio=ratio, tags=tags),
        caps=caps,
    )
    assert loads(dumps(cfg), Outer) == cfg
