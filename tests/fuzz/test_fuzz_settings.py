"""Fuzz the settings of `serve` (bridge/settings.py): the TOML file (load_file, through resolve), the
environment and command-line values. Only SettingsError (a ValueError, as documented) may escape."""

from __future__ import annotations

import os
import tempfile

from fuzz_support import DEADLINE, SUPPRESS, check, mutated
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.settings import SPECS, SettingsError, resolve

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SUPPRESS)
ERR = (SettingsError,)

_DIR = tempfile.TemporaryDirectory(prefix="fuzz-settings-")
CONFIG = os.path.join(_DIR.name, "bridge.toml")

samples = st.sampled_from(["0", "1", "65535", "65536", "-1", "true", "no", "x", "", " ", "1.2.3.4", "::1",
                           "udp://t:1", "http://t/announce", "wss://t", "turn:u:p@h:3478", "stun:h", "~/x",
                           "allow", "require", "json", "a,b", ",", "\x00", "9" * 30])
values = st.one_of(samples, st.text(max_size=40), st.lists(samples, max_size=3).map(",".join))
environs = st.dictionaries(st.sampled_from([s.env for s in SPECS]), values, max_size=6)
# argparse hands over typed values: a bool for a switch, a list of strings for a repeatable flag, else a string
flags = st.fixed_dictionaries({}, optional={
    s.key: st.booleans() if s.kind == "bool" else st.lists(values, max_size=3) if s.kind == "list" else values
    for s in SPECS})


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"').encode("unicode_escape").decode() + '"'


toml_scalar = st.one_of(values, st.integers(-(2**63), 2**63 - 1), st.booleans(), st.floats(allow_nan=False))
toml_files = st.one_of(
    st.just(resolve({}, {}).to_toml()),
    st.dictionaries(st.sampled_from([s.key for s in SPECS] + ["bogus", "http-port"]),
                    st.one_of(toml_scalar, st.lists(toml_scalar, max_size=3)), max_size=8).map(
        lambda d: "\n".join(f"{k} = {_toml_value(v)}" for k, v in d.items()) + "\n"),
).map(str.encode)


def _resolve(data: bytes | None, environ: dict[str, str], flag_values: dict[str, object]) -> None:
    if data is not None:
        with open(CONFIG, "wb") as f:
            f.write(data)
    check(resolve, flag_values, environ, CONFIG if data is not None else None, allowed=ERR)


@FUZZ
@given(st.binary(max_size=1024))
def test_fuzz_settings_file_bytes(data: bytes) -> None:
    _resolve(data, {}, {})


@FUZZ
@given(mutated(toml_files), environs, flags)
def test_fuzz_settings_mutated(data: bytes, environ: dict[str, str], flag_values: dict[str, object]) -> None:
    _resolve(data, environ, flag_values)
    _resolve(None, environ, flag_values)
