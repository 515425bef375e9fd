"""The settings of `serve`, resolved with one precedence for every key:

    command-line flags  >  environment (BRIDGE_<KEY>)  >  TOML file (--config F or BRIDGE_CONFIG)  >  defaults

Each key has one name everywhere: ``http_port`` in the TOML file is ``BRIDGE_HTTP_PORT`` in the environment
and ``--http-port`` on the command line. A flag counts only when it is actually given, so the environment
and the file show through; a list given in a higher layer replaces the lower layer's list. An environment
variable that is set but empty counts as unset. Lists in the environment are comma-separated. Every value
is checked where it is read and a bad one raises SettingsError naming its source (``BRIDGE_HTTP_PORT=abc:
not a port (0..65535)``, ``bridge.toml: http_port must be an integer, not a string``); an unknown key in
the file is an error too, so a typo cannot pass silently.

Nothing here starts anything or imports the engine: `config --print` resolves and prints without aiortc.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .config import PeerConfig, SessionConfig

__all__ = ["SPECS", "Settings", "SettingsError", "Spec", "resolve", "resolve_log_format", "LOG_FORMATS"]

ENV_PREFIX = "BRIDGE_"
#: environment variable naming the TOML file when --config is not given
CONFIG_ENV = "BRIDGE_CONFIG"
#: the state directory when none is configured: under the data directory
STATE_SUBDIR = ".webtorrent-bridge"
LOG_FORMATS = ("text", "json")
#: what `config --print` shows instead of the API token
MASK = "***"

Kind = Literal["str", "path", "port", "int", "bool", "list", "choice"]


class SettingsError(ValueError):
    """A bad setting; the message names where it came from. The CLI prints it and exits 2."""


# ------------------------------------------------------------------------------------ value checks
# Each returns None when the value is fine, else the reason (the caller adds the source).


def _check_host(value: str) -> str | None:
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        return "not a host name or address"
    return None


def _check_path(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if "\0" in value:
        return "contains a NUL character"
    return None


def _check_token(value: str) -> str | None:
    if any(c.isspace() or not c.isprintable() for c in value):
        return "an API token must not contain spaces or control characters"
    if value == MASK:
        return f"{MASK!r} is the mask `config --print` shows, not a token"
    return None


def _check_tracker_url(value: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https", "udp", "ws", "wss") or not host or any(c.isspace() for c in value):
        return "not a tracker URL (http, https, udp, ws or wss)"
    return None


def _check_ice_server(value: str) -> str | None:
    # The same rules as bridge.net.rtc.RtcConfig, without importing aiortc.
    scheme, sep, rest = value.partition(":")
    if not sep or scheme not in ("stun", "stuns", "turn", "turns") or not rest or any(c.isspace() for c in value):
        return "not a stun:, stuns:, turn: or turns: URL"
    userinfo, at, host = rest.rpartition("@")
    if at:
        if not scheme.startswith("turn"):
            return "only TURN URLs carry credentials"
        if ":" not in userinfo:
            return "TURN credentials must be user:password"
        if not host:
            return "no host after the credentials"
    return None


def _check_ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "not an IP address"
    return None


def _mask_ice_server(url: str) -> str:
    """turn:user:secret@host -> turn:user:***@host (TURN passwords are secrets too)."""
    scheme, _, rest = url.partition(":")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}:{userinfo.partition(':')[0]}:{MASK}@{host}"


@dataclass(frozen=True)
class Spec:
    """One setting: its key (TOML), flag, kind, default and checks. The environment name is derived."""

    key: str
    kind: Kind
    default: Any
    flag: str
    help: str
    choices: tuple[str, ...] = ()
    minimum: int = 0
    maximum: int | None = None
    #: checks a string value (for a list: each item)
    check: Callable[[str], str | None] | None = None
    #: never shown: error messages and `config --print` mask it
    secret: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


SPECS: tuple[Spec, ...] = (
    Spec("host", "str", "127.0.0.1", "--host", "address of the API, page and streams (anything but loopback "
         "needs api_token)", check=_check_host),
    Spec("http_port", "port", 8080, "--http-port", "port of the API, page and streams (0: any free port)"),
    Spec("port", "port", 6881, "--port", "peer port, TCP and uTP (0: any free port)"),
    Spec("peer_host", "str", "0.0.0.0", "--peer-host", "address peers connect to", check=_check_host),
    Spec("data_dir", "path", ".", "--data-dir", "torrents' data goes to DATA_DIR/<name>", check=_check_path),
    Spec("state_dir", "path", None, "--state-dir", "records and resume data (default DATA_DIR/.webtorrent-bridge)",
         check=_check_path),
    Spec("tracker", "bool", False, "--tracker", "also run the embedded tracker and announce every torrent to it"),
    Spec("tracker_port", "port", 8000, "--tracker-port", "port of the embedded tracker (HTTP, WebSocket and UDP)"),
    Spec("api_token", "str", None, "--api-token", "bearer token for the API", check=_check_token, secret=True),
    Spec("recheck", "bool", False, "--recheck", "hash all data at start instead of trusting resume data whose "
         "files' sizes and mtimes are unchanged"),
    Spec("announce", "list", (), "--announce", "tracker URL added to every torrent", check=_check_tracker_url),
    Spec("webrtc", "bool", True, "--webrtc", "join the WebTorrent (browser) swarm"),
    Spec("utp", "bool", True, "--utp", "speak uTP (tried first when dialling)"),
    Spec("tcp", "bool", True, "--tcp", "speak TCP"),
    Spec("ice_servers", "list", (), "--ice-server", "STUN/TURN server for WebRTC (turn:user:pass@host:port)",
         check=_check_ice_server),
    Spec("webrtc_hosts", "list", (), "--webrtc-host", "local address WebRTC gathers candidates on "
         "(default: all but loopback)", check=_check_ip),
    Spec("encryption", "choice", "allow", "--encryption", "MSE/PE: allow, prefer, require or off",
         choices=("allow", "prefer", "require", "off")),
    Spec("max_peers", "int", PeerConfig.max_peers, "--max-peers", "connected peers per torrent",
         minimum=1, maximum=10_000),
    Spec("upload_rate_limit", "int", 0, "--upload-rate-limit", "upload limit in bytes/s (0: unlimited)"),
    Spec("download_rate_limit", "int", 0, "--download-rate-limit", "download limit in bytes/s (0: unlimited)"),
    Spec("tracker_retry_max", "int", int(SessionConfig.tracker_retry_max), "--tracker-retry-max",
         "longest wait in seconds before a tracker that failed is tried again (the first retry comes after "
         "10-20 s)", minimum=10, maximum=86_400),
    Spec("log_format", "choice", "text", "--log-format", "log lines as text or JSON (one object per line)",
         choices=LOG_FORMATS),
)
BY_KEY: dict[str, Spec] = {s.key: s for s in SPECS}


@dataclass(frozen=True)
class Settings:
    """The effective settings of `serve`; ``sources[key]`` says where each came from."""

    host: str
    http_port: int
    port: int
    peer_host: str
    data_dir: str
    state_dir: str
    tracker: bool
    tracker_port: int
    api_token: str | None
    recheck: bool
    announce: tuple[str, ...]
    webrtc: bool
    utp: bool
    tcp: bool
    ice_servers: tuple[str, ...]
    webrtc_hosts: tuple[str, ...]
    encryption: str
    max_peers: int
    upload_rate_limit: int
    download_rate_limit: int
    tracker_retry_max: int
    log_format: str
    #: key -> "default", "env BRIDGE_X", "flag --x" or "file PATH"
    sources: Mapping[str, str]
    #: the TOML file read, if any
    config_file: str | None = None

    def session_config(self) -> SessionConfig:
        return SessionConfig(
            host=self.peer_host, port=self.port, utp=self.utp, tcp=self.tcp,
            peer=PeerConfig(encryption=self.encryption, max_peers=self.max_peers), webrtc=self.webrtc,
            ice_servers=self.ice_servers, webrtc_hosts=self.webrtc_hosts,
            upload_rate_limit=self.upload_rate_limit, download_rate_limit=self.download_rate_limit,
            tracker_retry_max=float(self.tracker_retry_max),
        )

    def to_toml(self) -> str:
        """The settings as a TOML file (secrets masked), each line saying where its value came from."""
        lines = [
            "# webtorrent-bridge serve: effective settings",
            "# precedence: command-line flags > environment (BRIDGE_*) > config file > defaults",
            f"# config file: {_comment(self.config_file) if self.config_file else '(none)'}",
            "",
        ]
        for spec in SPECS:
            value = getattr(self, spec.key)
            source = self.sources.get(spec.key, "default")
            where = source if source.startswith("default") else f"from {source}"
            if value is None:
                lines.append(f"# {spec.key}: not set  # {_comment(where)}")
                continue
            if spec.secret:
                value = MASK
            elif spec.key == "ice_servers":
                value = tuple(_mask_ice_server(u) for u in value)
            lines.append(f"{spec.key} = {_toml_value(value)}  # {_comment(where)}")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- parsing

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _check_value(spec: Spec, value: Any) -> str | None:
    """The reason a typed value is out of bounds, or None."""
    if spec.kind == "port":
        if not 0 <= value <= 65535:
            return "not a port (0..65535)"
    elif spec.kind == "int":
        if value < spec.minimum or (spec.maximum is not None and value > spec.maximum):
            return (f"not between {spec.minimum} and {spec.maximum}" if spec.maximum is not None
                    else f"must be at least {spec.minimum}")
    elif spec.kind == "choice":
        if value not in spec.choices:
            return f"not one of {', '.join(spec.choices)}"
    elif spec.kind == "list":
        for item in value:
            reason = spec.check(item) if spec.check else None
            if reason:
                return f"{_shown(spec, item)!r}: {reason}"
    elif spec.check is not None:
        return spec.check(value)
    return None


def _from_text(spec: Spec, raw: str) -> tuple[Any, str | None]:
    """A value from the environment or a string flag, and the reason it is bad (or None)."""
    text = raw.strip()
    if spec.kind in ("port", "int"):
        if not re.fullmatch(r"[0-9]+", text):
            return None, "not a port (0..65535)" if spec.kind == "port" else "not a whole number"
        value: Any = int(text)
    elif spec.kind == "bool":
        low = text.lower()
        if low not in _TRUE + _FALSE:
            return None, "not a boolean (1/0, true/false, yes/no, on/off)"
        value = low in _TRUE
    elif spec.kind == "list":
        value = tuple(item.strip() for item in raw.split(",") if item.strip())
    elif spec.kind == "choice":
        value = text.lower()
    elif spec.kind == "path":
        value = os.path.expanduser(raw)
    else:
        value = raw
    return value, _check_value(spec, value)


_TOML_TYPES = {"str": (str, "a string"), "path": (str, "a string"), "choice": (str, "a string"),
               "port": (int, "an integer"), "int": (int, "an integer"), "bool": (bool, "true or false"),
               "list": (list, "an array of strings")}


def _toml_type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _from_toml(spec: Spec, value: Any, path: str) -> Any:
    want, want_name = _TOML_TYPES[spec.kind]
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if ok and spec.kind == "list":
        for i, item in enumerate(value, 1):
            if not isinstance(item, str):
                raise SettingsError(f"{path}: {spec.key} must be {want_name}; item {i} is {_toml_type_name(item)}")
    if not ok:
        raise SettingsError(f"{path}: {spec.key} must be {want_name}, not {_toml_type_name(value)}")
    if spec.kind == "list":
        value = tuple(value)
    elif spec.kind == "path":
        value = os.path.expanduser(value)
    reason = _check_value(spec, value)
    if reason:
        if spec.kind == "list":
            raise SettingsError(f"{path}: {spec.key}: {reason}")
        raise SettingsError(f"{path}: {spec.key} = {_shown(spec, value)!r}: {reason}")
    return value


def _shown(spec: Spec, value: Any) -> Any:
    if spec.secret:
        return MASK
    if spec.key == "ice_servers" and isinstance(value, str):
        return _mask_ice_server(value)
    return value


def load_file(path: str, named_by: str = "--config") -> dict[str, Any]:
    """The keys of a TOML settings file, type-checked and validated."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise SettingsError(f"config file {path} (from {named_by}): {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not valid TOML: not UTF-8") from None
    values = {}
    for key, value in data.items():
        spec = BY_KEY.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, BY_KEY, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingsError(f"{path}: unknown key {key!r}{hint}; the keys are {', '.join(BY_KEY)}")
        values[key] = _from_toml(spec, value, path)
    return values


def _from_flag(spec: Spec, value: Any) -> Any:
    """A value given on the command line: booleans come typed, lists as lists of strings, the rest as text."""
    if spec.kind == "bool":
        return bool(value)
    if spec.kind == "list":
        items = tuple(str(v) for v in value)
        reason = _check_value(spec, items)
        if reason:
            raise SettingsError(f"{spec.flag} {reason}")
        return items
    parsed, reason = _from_text(spec, str(value))
    if reason:
        raise SettingsError(f"{spec.flag} {_shown(spec, value)}: {reason}")
    return parsed


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str], config: str | None = None) -> Settings:
    """The effective settings. ``flags`` holds only the options given on the command line (by key);
    ``config`` is the --config flag (else BRIDGE_CONFIG names the file)."""
    values: dict[str, Any] = {s.key: s.default for s in SPECS}
    sources: dict[str, str] = {s.key: "default" for s in SPECS}
    path = config or environ.get(CONFIG_ENV) or None
    if path is not None:
        for key, value in load_file(path, "--config" if config else CONFIG_ENV).items():
            values[key] = value
            sources[key] = f"file {path}"
    for spec in SPECS:
        raw = environ.get(spec.env)
        if not raw:
            continue
        value, reason = _from_text(spec, raw)
        if reason:
            where = spec.env if spec.kind == "list" else f"{spec.env}={_shown(spec, raw)}"
            raise SettingsError(f"{where}: {reason}")
        values[spec.key] = value
        sources[spec.key] = f"env {spec.env}"
    for spec in SPECS:
        if flags.get(spec.key) is not None:
            values[spec.key] = value = _from_flag(spec, flags[spec.key])
            negated = spec.kind == "bool" and not value
            sources[spec.key] = f"flag --no-{spec.flag[2:]}" if negated else f"flag {spec.flag}"
    if values["state_dir"] is None:
        values["state_dir"] = os.path.join(values["data_dir"], STATE_SUBDIR)
        sources["state_dir"] = f"default: data_dir/{STATE_SUBDIR}"
    if values["api_token"] == "":
        values["api_token"] = None
    if not values["utp"] and not values["tcp"]:
        raise SettingsError(f"utp ({sources['utp']}) and tcp ({sources['tcp']}) are both off: "
                            "that leaves no way to reach peers")
    return Settings(**values, sources=sources, config_file=path)


def resolve_log_format(flag: str | None, environ: Mapping[str, str]) -> str:
    """The log format of any command: --log-format, else BRIDGE_LOG_FORMAT, else text."""
    spec = BY_KEY["log_format"]
    if flag is not None:
        return str(_from_flag(spec, flag))
    raw = environ.get(spec.env)
    if raw:
        value, reason = _from_text(spec, raw)
        if reason:
            raise SettingsError(f"{spec.env}={raw}: {reason}")
        return str(value)
    return str(spec.default)


# ------------------------------------------------------------------------------------ TOML output


def _toml_string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:  # a lone surrogate (an undecodable byte in a path): not representable
            out.append("\\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


def _comment(text: str) -> str:
    """Text safe inside a TOML comment (no control characters, no lone surrogates)."""
    return "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "?" for c in text)
