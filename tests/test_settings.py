"""`serve`'s settings: one precedence (flags > BRIDGE_* > TOML file > defaults), validation naming the source,
`config --print`, `--log-format json`, and a `serve` process configured by the environment and a file."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from ports import free_port

from bridge.cli import JsonFormatter, build_parser, serve_settings
from bridge.config import SessionConfig
from bridge.settings import SPECS, STATE_SUBDIR, SettingsError, resolve, resolve_log_format

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "bridge.example.toml"


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without any BRIDGE_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(extra)
    return env


def write_toml(tmp_path: Path, text: str, name: str = "bridge.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def bridge(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env=env if env is not None else clean_environ())




# ------------------------------------------------------------------------------------------ precedence


def test_defaults() -> None:
    s = resolve({}, {})
    for spec in SPECS:
        if spec.key != "state_dir":
            assert getattr(s, spec.key) == spec.default, spec.key
            assert s.sources[spec.key] == "default"
    assert s.state_dir == os.path.join(".", STATE_SUBDIR)
    assert s.config_file is None
    assert s.session_config() == SessionConfig()


# (key, file value as TOML, env text, flag value, and the three parsed values)
LAYERS = [
    ("http_port", "1111", "2222", "3333", 1111, 2222, 3333),
    ("tracker", "true", "0", False, True, False, False),
    ("webrtc", "false", "yes", False, False, True, False),
    ("announce", '["udp://file.example:1"]', "http://env.example/a, wss://env.example/b", ["ws://flag.example/x"],
     ("udp://file.example:1",), ("http://env.example/a", "wss://env.example/b"), ("ws://flag.example/x",)),
    ("data_dir", '"/from/file"', "/from/env", "/from/flag", "/from/file", "/from/env", "/from/flag"),
    ("upload_rate_limit", "1000", "2000", "3000", 1000, 2000, 3000),
    ("tracker_retry_max", "60", "120", "3600", 60, 120, 3600),
]


@pytest.mark.parametrize("key,toml_value,env_value,flag_value,in_file,in_env,in_flag", LAYERS,
                         ids=[layer[0] for layer in LAYERS])
@pytest.mark.parametrize("use_file,use_env,use_flag", list(itertools.product([False, True], repeat=3)))
def test_each_layer_overrides_the_ones_below(tmp_path: Path, key: str, toml_value: str, env_value: str,
                                             flag_value: Any, in_file: Any, in_env: Any, in_flag: Any,
                                             use_file: bool, use_env: bool, use_flag: bool) -> None:
    spec = next(s for s in SPECS if s.key == key)
    config = write_toml(tmp_path, f"{key} = {toml_value}\n") if use_file else None
    environ = {spec.env: env_value} if use_env else {}
    flags = {key: flag_value} if use_flag else {}
    s = resolve(flags, environ, config=config)
    if use_flag:
        want, source = in_flag, ("flag --no-" + spec.flag[2:] if flag_value is False else f"flag {spec.flag}")
    elif use_env:
        want, source = in_env, f"env {spec.env}"
    elif use_file:
        want, source = in_file, f"file {config}"
    else:
        want, source = spec.default, "default"
    assert getattr(s, key) == want
    assert s.sources[key] == source
    # the other keys stay at their defaults
    assert s.max_peers == 50 and s.encryption == "allow"


def test_state_dir_follows_the_effective_data_dir(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'data_dir = "/srv/file"\n')
    assert resolve({}, {"BRIDGE_DATA_DIR": "/srv/env"}, config=config).state_dir == f"/srv/env/{STATE_SUBDIR}"
    assert resolve({}, {}, config=config).state_dir == f"/srv/file/{STATE_SUBDIR}"
    s = resolve({"state_dir": "/st"}, {"BRIDGE_STATE_DIR": "/ignored"}, config=config)
    assert s.state_dir == "/st" and s.sources["state_dir"] == "flag --state-dir"


def test_config_file_from_env_and_flag(tmp_path: Path) -> None:
    a = write_toml(tmp_path, "port = 1\n", "a.toml")
    b = write_toml(tmp_path, "port = 2\n", "b.toml")
    assert resolve({}, {"BRIDGE_CONFIG": a}).port == 1
    assert resolve({}, {"BRIDGE_CONFIG": a}, config=b).port == 2  # --config wins over BRIDGE_CONFIG


def test_empty_env_var_counts_as_unset(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'http_port = 1234\napi_token = "from-file"\n')
    s = resolve({}, {"BRIDGE_HTTP_PORT": "", "BRIDGE_API_TOKEN": ""}, config=config)
    assert s.http_port == 1234 and s.api_token == "from-file"


def test_command_line_flags_only_override_when_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The real parser: an option not on the command line must not mask the environment or the file."""
    for k in list(os.environ):
        if k.startswith("BRIDGE_"):
            monkeypatch.delenv(k)
    config = write_toml(tmp_path, 'host = "::1"\ntracker = true\nencryption = "require"\nwebrtc = false\n'
                                  'ice_servers = ["stun:file.example"]\n')
    monkeypatch.setenv("BRIDGE_HTTP_PORT", "4321")
    monkeypatch.setenv("BRIDGE_UTP", "off")
    monkeypatch.setenv("BRIDGE_LOG_FORMAT", "json")
    parser = build_parser()
    s = serve_settings(parser.parse_args(["serve", "--config", config]))
    assert (s.host, s.tracker, s.encryption, s.webrtc, s.ice_servers) == ("::1", True, "require", False,
                                                                           ("stun:file.example",))
    assert (s.http_port, s.utp, s.log_format) == (4321, False, "json")
    assert s.sources["port"] == "default" and s.sources["host"] == f"file {config}"

    args = parser.parse_args(["--log-format", "text", "serve", "--config", config, "--http-port", "0", "--utp",
                              "--no-tracker", "--webrtc", "--ice-server", "stun:a.example", "--ice-server",
                              "turn:u:p@b.example", "--max-peers", "7", "--download-rate-limit", "500000"])
    s = serve_settings(args)
    assert (s.http_port, s.utp, s.tracker, s.webrtc, s.log_format) == (0, True, False, True, "text")
    assert s.ice_servers == ("stun:a.example", "turn:u:p@b.example") and s.host == "::1"
    assert s.sources["tracker"] == "flag --no-tracker" and s.sources["log_format"] == "flag --log-format"
    cfg = s.session_config()
    assert cfg.peer.max_peers == 7 and cfg.download_rate_limit == 500_000 and cfg.upload_rate_limit == 0
    assert cfg.peer.encryption == "require" and cfg.utp and cfg.webrtc

    # the global option after the command works too
    assert serve_settings(parser.parse_args(["serve", "--log-format", "text"])).log_format == "text"


def test_log_format_of_other_commands() -> None:
    assert resolve_log_format(None, {}) == "text"
    assert resolve_log_format(None, {"BRIDGE_LOG_FORMAT": "JSON"}) == "json"
    assert resolve_log_format("text", {"BRIDGE_LOG_FORMAT": "json"}) == "text"
    with pytest.raises(SettingsError, match="BRIDGE_LOG_FORMAT=xml: not one of text, json"):
        resolve_log_format(None, {"BRIDGE_LOG_FORMAT": "xml"})


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("var,value,message", [
    ("BRIDGE_HTTP_PORT", "abc", "BRIDGE_HTTP_PORT=abc: not a port"),
    ("BRIDGE_PORT", "70000", "BRIDGE_PORT=70000: not a port"),
    ("BRIDGE_TRACKER_PORT", "-1", "BRIDGE_TRACKER_PORT=-1: not a port"),
    ("BRIDGE_TRACKER", "maybe", "BRIDGE_TRACKER=maybe: not a boolean"),
    ("BRIDGE_MAX_PEERS", "0", "BRIDGE_MAX_PEERS=0: not between 1 and"),
    ("BRIDGE_UPLOAD_RATE_LIMIT", "1.5", "BRIDGE_UPLOAD_RATE_LIMIT=1.5: not a whole number"),
    ("BRIDGE_ENCRYPTION", "always", "BRIDGE_ENCRYPTION=always: not one of allow, prefer, require, off"),
    ("BRIDGE_ANNOUNCE", "http://ok.example/a,ftp://x", "BRIDGE_ANNOUNCE: 'ftp://x': not a tracker URL"),
    ("BRIDGE_ICE_SERVERS", "stun:ok.example,http://x", "BRIDGE_ICE_SERVERS: 'http://x': not a stun:"),
    ("BRIDGE_WEBRTC_HOSTS", "127.0.0.1,eth0", "BRIDGE_WEBRTC_HOSTS: 'eth0': not an IP address"),
    ("BRIDGE_HOST", "a b", "BRIDGE_HOST=a b: not a host"),
    ("BRIDGE_LOG_FORMAT", "xml", "BRIDGE_LOG_FORMAT=xml: not one of text, json"),
    ("BRIDGE_TRACKER_RETRY_MAX", "5", "BRIDGE_TRACKER_RETRY_MAX=5: not between 10 and 86400"),
])
def test_bad_env_values_name_the_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as e:
        resolve({}, {var: value})
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("flags,message", [
    ({"http_port": "abc"}, "--http-port abc: not a port"),
    ({"port": "65536"}, "--port 65536: not a port"),
    ({"max_peers": "99999"}, "--max-peers 99999: not between 1 and 10000"),
    ({"download_rate_limit": "-5"}, "--download-rate-limit -5: not a whole number"),
    ({"announce": ["udp://ok.example:1", "not a url"]}, "--announce 'not a url': not a tracker URL"),
    ({"webrtc_hosts": ["localhost"]}, "--webrtc-host 'localhost': not an IP address"),
    ({"encryption": "rc4"}, "--encryption rc4: not one of"),
    ({"utp": False, "tcp": False}, "utp (flag --no-utp) and tcp (flag --no-tcp) are both off"),
])
def test_bad_flag_values_name_the_flag(flags: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError) as e:
        resolve(flags, {})
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("text,message", [
    ('http_port = "8080"', "http_port must be an integer, not a string"),
    ("http_port = true", "http_port must be an integer, not a boolean"),
    ("http_port = 8080.0", "http_port must be an integer, not a float"),
    ("http_port = 70000", "http_port = 70000: not a port"),
    ('tracker = "yes"', "tracker must be true or false, not a string"),
    ('announce = "udp://x.example:1"', "announce must be an array of strings, not a string"),
    ('announce = ["udp://x.example:1", 5]', "announce must be an array of strings; item 2 is an integer"),
    ('ice_servers = ["turn:user:secret@"]', "ice_servers: 'turn:user:***@': no host"),
    ('encryption = "yes"', "encryption = 'yes': not one of allow, prefer, require, off"),
    ("max_peers = 0", "max_peers = 0: not between 1 and 10000"),
    ("upload_rate_limit = -1", "upload_rate_limit = -1: must be at least 0"),
    ('data_dir = ""', "data_dir = '': must not be empty"),
    ('api_token = "has space"', "api_token = '***': an API token must not contain spaces"),
    ('api_token = "***"', "api_token = '***': '***' is the mask"),
    ("utp = false\ntcp = false", "utp (file"),
    ("http_port = ", "not valid TOML"),
])
def test_bad_file_values_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    config = write_toml(tmp_path, text + "\n")
    with pytest.raises(SettingsError) as e:
        resolve({}, {}, config=config)
    assert str(e.value).startswith(f"{config}: {message}") or (
        message.startswith("utp") and str(e.value).startswith(message)), str(e.value)
    assert "secret" not in str(e.value) and "has space" not in str(e.value)


def test_unknown_key_in_the_file_is_an_error(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "http_port = 8080\nhttp_prot = 9090\n")
    with pytest.raises(SettingsError, match=r"unknown key 'http_prot' \(did you mean 'http_port'\?\)"):
        resolve({}, {}, config=config)
    config = write_toml(tmp_path, "[serve]\nport = 1\n")
    with pytest.raises(SettingsError, match="unknown key 'serve'"):
        resolve({}, {}, config=config)


def test_missing_config_file_names_where_it_was_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"config file .*nope.toml \(from BRIDGE_CONFIG\): No such file"):
        resolve({}, {"BRIDGE_CONFIG": str(tmp_path / "nope.toml")})


def test_bad_settings_exit_2_with_one_line(tmp_path: Path) -> None:
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["serve"], {"BRIDGE_HTTP_PORT": "abc"}, "BRIDGE_HTTP_PORT=abc: not a port"),
        (["serve", "--http-port", "x1"], {}, "--http-port x1: not a port"),
        (["config", "--print", "--config", write_toml(tmp_path, "recheck = 1\n")], {},
         "recheck must be true or false, not an integer"),
        (["serve", "--config", write_toml(tmp_path, "tracker_prot = 1\n", "typo.toml")], {},
         "unknown key 'tracker_prot'"),
        (["tracker", "--port", "0"], {"BRIDGE_LOG_FORMAT": "yaml"}, "BRIDGE_LOG_FORMAT=yaml"),
    ]
    for args, env, needle in cases:
        res = bridge(*args, env=clean_environ(**env))
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2, res.stderr
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert lines[0].startswith("webtorrent-bridge: error: ") and needle in lines[0], lines[0]


# ------------------------------------------------------------------------------------------ config --print


def test_config_print_round_trips_with_sources_and_masks_secrets(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'data_dir = "/srv/torrents"\nhttp_port = 1\nannounce = ["udp://f.example:1"]\n'
                                  'encryption = "prefer"\nmax_peers = 80\nlog_format = "json"\n'
                                  'host = "a\\"b\\\\c\\u00e9"\n')
    env = clean_environ(BRIDGE_HTTP_PORT="9000", BRIDGE_API_TOKEN="super-secret-token",
                        BRIDGE_ICE_SERVERS="stun:s.example:3478,turn:alice:pa55@t.example:3478",
                        BRIDGE_TRACKER="1", BRIDGE_MAX_PEERS="90")
    res = bridge("config", "--print", "--config", config, "--max-peers", "100", "--no-utp", "--upload-rate-limit",
                 "65536", env=env)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "super-secret-token" not in out and "pa55" not in out
    printed = tomllib.loads(out)
    assert set(printed) == {s.key for s in SPECS}
    assert printed == {
        "host": 'a"b\\cé', "http_port": 9000, "port": 6881, "peer_host": "0.0.0.0", "data_dir": "/srv/torrents",
        "state_dir": f"/srv/torrents/{STATE_SUBDIR}", "tracker": True, "tracker_port": 8000, "api_token": "***",
        "recheck": False, "announce": ["udp://f.example:1"], "webrtc": True, "utp": False, "tcp": True,
        "ice_servers": ["stun:s.example:3478", "turn:alice:***@t.example:3478"], "webrtc_hosts": [],
        "encryption": "prefer", "max_peers": 100, "upload_rate_limit": 65536, "download_rate_limit": 0,
        "tracker_retry_max": 600, "log_format": "json",
    }
    comments = {m[1]: m[2] for m in re.finditer(r"^(\w+) = .*  # (.*)$", out, re.M)}
    assert comments["http_port"] == "from env BRIDGE_HTTP_PORT"
    assert comments["api_token"] == "from env BRIDGE_API_TOKEN"
    assert comments["max_peers"] == "from flag --max-peers"
    assert comments["utp"] == "from flag --no-utp"
    assert comments["upload_rate_limit"] == "from flag --upload-rate-limit"
    assert comments["data_dir"] == f"from file {config}"
    assert comments["encryption"] == f"from file {config}"
    assert comments["port"] == "default"
    assert comments["state_dir"].startswith("default")
    assert f"# config file: {config}" in out

    # a printed file is a valid config file (apart from the masked token, which is refused)
    again = write_toml(tmp_path, re.sub(r"^api_token = .*$", "", out, flags=re.M), "printed.toml")
    s = resolve({}, {}, config=again)
    assert s.max_peers == 100 and s.host == 'a"b\\cé' and s.api_token is None


def test_config_print_without_a_token_leaves_it_out() -> None:
    res = bridge("config", "--print")
    assert res.returncode == 0, res.stderr
    printed = tomllib.loads(res.stdout)
    assert "api_token" not in printed and printed["http_port"] == 8080
    assert re.search(r"^# api_token: not set", res.stdout, re.M)


def test_example_file_lists_every_key_with_its_default() -> None:
    text = EXAMPLE.read_text()
    for spec in SPECS:
        assert re.search(rf"^#? ?{spec.key} = ", text, re.M), f"{spec.key} missing from {EXAMPLE.name}"
    s = resolve({}, {}, config=str(EXAMPLE))
    for spec in SPECS:
        if spec.key != "state_dir":
            assert getattr(s, spec.key) == spec.default, spec.key
    assert set(tomllib.loads(text)) == {s.key for s in SPECS} - {"api_token", "state_dir"}


# ------------------------------------------------------------------------------------------ JSON logs


def test_json_formatter_escapes_and_carries_exceptions() -> None:
    fmt = JsonFormatter()
    record = logging.LogRecord("bridge.peer", logging.WARNING, __file__, 1, "peer %s said %r",
                               ("evil\n{\"level\": \"ERROR\"}\x1b[31m", "\x00\u2028"), None)
    line = fmt.format(record)
    assert "\n" not in line and "\x1b" not in line and "\x00" not in line
    obj = json.loads(line)
    assert obj["level"] == "WARNING" and obj["logger"] == "bridge.peer"
    assert obj["message"].startswith("peer evil\n{\"level\"")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["time"])
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("bridge", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    obj = json.loads(fmt.format(record))
    assert "RuntimeError: boom" in obj["exception"] and "Traceback" in obj["exception"]


def test_log_format_json_from_the_command_line() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "--log-format", "json", "-v", "tracker", "--port", "0",
                             "--host", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=clean_environ())
    try:
        assert proc.stdout is not None
        assert "WebSocket" in proc.stdout.readline()  # the tracker is up once it prints its URLs
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    # the tracker's own "listening on" line is plain output; every log line is one JSON object
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records, err
    for r in records:
        assert {"time", "level", "logger", "message"} <= set(r)
        assert r["time"].endswith("Z")
    assert any(r["logger"].startswith("bridge.tracker") and "listening" in r["message"] for r in records), err


# ------------------------------------------------------------------------------------------ serve


def test_serve_uses_the_environment_and_the_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    http_port = free_port()
    config = write_toml(tmp_path, f'data_dir = "{data}"\nport = 0\npeer_host = "127.0.0.1"\nwebrtc = false\n'
                                  'http_port = 1\nlog_format = "json"\n')
    env = clean_environ(BRIDGE_HTTP_PORT=str(http_port), BRIDGE_CONFIG=config, BRIDGE_API_TOKEN="t0ken-" + "x" * 20)
    log = tmp_path / "serve.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "bridge", "-v", "serve"], stdout=subprocess.DEVNULL,
                                stderr=logf, cwd=tmp_path, env=env)
        try:
            deadline = time.monotonic() + 30
            while "API, page and streams" not in log.read_text(errors="replace"):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.05)
            url = f"http://127.0.0.1:{http_port}/api/v1/health"
            with urllib.request.urlopen(urllib.request.Request(
                    url, headers={"Authorization": "Bearer t0ken-" + "x" * 20}), timeout=10) as resp:
                assert resp.status == 200 and json.loads(resp.read())["status"] == "ok"
            assert (data / STATE_SUBDIR).is_dir()  # state_dir defaulted under the file's data_dir
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0, log.read_text(errors="replace")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # log_format from the file: every stderr line, status lines included, is one JSON object
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    messages = [r["message"] for r in records]
    assert any(m.startswith(f"API, page and streams: http://127.0.0.1:{http_port}/") for m in messages), messages
    assert any(m.startswith("settings from ") for m in messages), messages
    assert "stopping ..." in messages


def test_tracker_retry_max_reaches_the_session() -> None:
    s = resolve({}, {"BRIDGE_TRACKER_RETRY_MAX": "90"})
    assert s.session_config().tracker_retry_max == 90.0
    with pytest.raises(ValueError, match="at least 10"):
        SessionConfig(tracker_retry_max=1)
