"""engine.registry: registered names, "module:Class" imports, and helpful refusals (X6)."""

from __future__ import annotations

import sys
from typing import Annotated

import msgspec
import pytest

from engine.errors import ConfigError
from engine.registry import register, registered, resolve


class TinyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    spread_ticks: Annotated[int, msgspec.Meta(gt=0)] = 2


@register("h6_tiny_registry")
class Tiny:
    Config = TinyConfig


class NotAStrategy:
    pass


def test_registered_name_and_module_spec_resolve() -> None:
    assert resolve("h6_tiny_registry") is Tiny
    assert resolve("tests.test_config_registry:Tiny") is Tiny
    assert registered()["h6_tiny_registry"] is Tiny
    assert list(registered()) == sorted(registered())


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(ConfigError, match=r"unknown strategy 'h6_tiny_registr'; did you mean 'h6_tiny_registry'"):
        resolve("h6_tiny_registr")
    with pytest.raises(ConfigError, match=r"registered: .*h6_tiny_registry"):
        resolve("zzzzzzzzzzzzzzzz")
    # a dot where the colon belongs: the right spelling is named
    with pytest.raises(ConfigError, match=r"a class of your own is 'module:Class', here 'tests.test_config_registry:Tiny'"):
        resolve("tests.test_config_registry.Tiny")
    with pytest.raises(ConfigError, match=r"cftrade does not import from the current directory"):
        resolve("no_such_module_h6:Tiny")


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("tests/test_config_registry.py:Tiny", "no file paths"),
        ("tests.test_config_registry:Tiny.Config", "no file paths"),
        ("os:system()", "no file paths"),
        ("__import__('os').system:x", "no file paths"),
        (".relative:Tiny", "no file paths"),
        ("tests.no_such_module_h6:Tiny", "no module named 'tests.no_such_module_h6'"),
        ("tests.test_config_registry:Tinny", "did you mean tests.test_config_registry:Tiny?"),
        ("tests.test_config_registry:NotAStrategy", "has no 'Config' attribute"),
        ("tests.test_config_registry:TinyConfig", "has no 'Config' attribute"),
        ("tests.test_config_registry:CONSTANT", "has no class 'CONSTANT'"),
    ],
)
def test_X6_bad_specs_refused(spec: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")):
        resolve(spec)


def test_X6_module_spec_imports_by_name_only() -> None:
    # The spec never reaches eval/exec or a call: "os:system" finds the function object and
    # refuses it because it is not a class; nothing named in a spec is ever called.
    assert "os" in sys.modules
    with pytest.raises(ConfigError, match="'os:system' is not a class"):
        resolve("os:system")


def test_register_rejects_bad_names_and_conflicts() -> None:
    with pytest.raises(ValueError, match="lower_snake_case"):
        register("Bad-Name")
    with pytest.raises(ConfigError, match="no 'Config' attribute"):
        register("h6_no_config")(NotAStrategy)

    class Other:
        Config = TinyConfig

    with pytest.raises(ValueError, match="already registered by tests.test_config_registry.Tiny"):
        register("h6_tiny_registry")(Other)
    assert register("h6_tiny_registry")(Tiny) is Tiny  # same class again: fine (module reload)


class AsyncHook:
    Config = TinyConfig

    async def on_book(self, ctx):  # a mistake the runtime could only meet at its first call
        return None


def test_an_async_hook_is_refused_at_check_time() -> None:
    with pytest.raises(ConfigError, match=r"on_book is 'async def'; strategy hooks are plain 'def'"):
        resolve("tests.test_config_registry:AsyncHook")
