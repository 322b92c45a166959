"""B7: the bad-config corpus. Every file in tests/data/configs/bad/ must be rejected by
`cftrade check` with exit code 2, before any network I/O, with a message that names
file:line, the key path and why, and that never contains a secret (X1, X3, X8, X11).

Each file states its own expectation on its first line::

    # expect: LINE | KEY.PATH | fragment of the reason

(an empty KEY.PATH means a file-level error: syntax, duplicate key, alias, tag...).  The
secrets the files point at are made per test under tmp_path by the ``secrets_env``
fixture (canary values in env vars, a 0600 file, a 0644 file and a symlink), because git
does not keep file modes.  The file over 1 MiB is generated, not committed.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from engine import config_cli
from engine.config import load_run_config
from engine.configload import MAX_BYTES
from engine.errors import ConfigError
from tests import test_config
from tests.test_config import CANARY_COOKIE, CANARY_PASS, DATA, copy_in

secrets_env = test_config.secrets_env  # the shared fixture (and the h6_* test strategies)

BAD = sorted((DATA / "bad").glob("*.yaml"))
_EXPECT = re.compile(r"# expect: (\d+) \|([^|]*)\| (.+)")


def expectation(path: Path) -> tuple[int, str, str]:
    m = _EXPECT.fullmatch(path.read_text().splitlines()[0])
    assert m is not None, f"{path.name}: first line must be '# expect: LINE | PATH | why'"
    return int(m.group(1)), m.group(2).strip(), m.group(3).strip()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fail (and record) any attempt to resolve or connect: checking is offline."""
    attempts: list[object] = []

    def refuse(*a: object, **k: object) -> None:
        attempts.append(a)
        raise AssertionError("network I/O during config check")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_B7_corpus_is_big_enough() -> None:
    assert len(BAD) >= 40


@pytest.mark.parametrize("src", BAD, ids=[p.stem for p in BAD])
def test_B7_bad_config_rejected(
    src: Path, secrets_env: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    line, keypath, why = expectation(src)
    path = copy_in(src, secrets_env)
    with pytest.raises(ConfigError) as ei:
        load_run_config(str(path))
    e = ei.value
    msg = str(e)
    prefix = f"{path}:{line}: {keypath}: " if keypath else f"{path}:{line}: "
    assert msg.startswith(prefix), f"{msg!r} does not start with {prefix!r}"
    assert why in msg
    assert (e.line, e.path) == (line, keypath)  # type: ignore[attr-defined]
    # X1: neither canary appears, whatever the error (inline secrets included).
    assert CANARY_COOKIE not in msg and CANARY_PASS not in msg
    # The CLI agrees: exit 2, the same message on stderr, nothing on stdout, no network.
    assert config_cli.main([str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == msg + "\n"
    assert no_network == []


def test_B7_file_over_1_MiB_rejected_before_parsing(
    secrets_env: Path, no_network: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    path = secrets_env / "huge.yaml"
    # Valid YAML all the way: only the size is wrong.
    path.write_text((DATA / "good" / "minimal.yaml").read_text() + "# " + "x" * MAX_BYTES + "\n")
    assert config_cli.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: file is ") and "limited to 1048576 bytes (1 MiB)" in err


def test_X1_canaries_are_really_in_the_environment(secrets_env: Path) -> None:
    # Guards the X1 assertions above against testing nothing: the secrets the bad files
    # point at are live, and a good config resolves them to the canary values.
    cfg = load_run_config(str(copy_in(DATA / "good" / "full.yaml", secrets_env)))
    assert cfg.exchange.cookie is not None and cfg.exchange.cookie.resolve().reveal() == CANARY_COOKIE
    inline = [p for p in BAD if CANARY_PASS in p.read_text() or CANARY_COOKIE in p.read_text()]
    assert len(inline) >= 3  # files that write a canary inline, and must not echo it
