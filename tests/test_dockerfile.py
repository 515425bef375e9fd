"""The Dockerfile, checked without Docker.

Static checks on a parsed Dockerfile (stages, user, health check, volumes, ports, COPY sources against
the repository and .dockerignore), then the stages' own steps run on this machine in a sandbox: the
build context is copied with .dockerignore applied (a file the image needs but the context leaves out
breaks the test), each stage's COPYs are replayed into a private folder standing for the image's root,
and its RUN commands run there with `sh`, with the container paths of WORKDIR and ENV mapped into that
folder. The `web` stage runs `npm ci --ignore-scripts`; the `build` stage creates the virtualenv and pip
installs the package from the context copy; the runtime stage's COPYs then assemble the final layout,
from which the image's ENTRYPOINT + CMD runs: it must refuse 0.0.0.0 without BRIDGE_API_TOKEN, and with a
token (and loopback addresses, free ports) answer the health check and serve the pages and the bundle.

Needs python3 with venv (ensurepip) and npm, and the package registries (or their caches): when either
tool is missing the tests fail and say so; they never skip.
"""

from __future__ import annotations

import fnmatch
import glob
import http.server
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ports import free_port

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

PEER_PORT = 6881
HTTP_PORT = 8080
TRACKER_PORT = 8000
SERVE_FLAGS = ("--host", "--http-port", "--port", "--data-dir", "--state-dir", "--tracker")

PIP_TIMEOUT = 420
NPM_TIMEOUT = 240


# ------------------------------------------------------------------------------------------ parser


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # everything after the keyword, continuation lines joined
    lineno: int


@dataclass
class Stage:
    index: int
    base: str
    name: str | None
    lineno: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, ref: str) -> Stage:
        for s in self.stages:
            if s.name == ref.lower() or ref == str(s.index):
                return s
        raise KeyError(ref)


_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with their continuation lines joined, grouped into stages.

    Follows Docker's rules: parser directives (``# escape=``) only at the very top, comment lines
    dropped even inside a continuation, a line ending in the escape character continues on the next.
    Heredocs (``<<EOF``) are refused rather than misread.
    """
    lines = text.splitlines()
    escape = "\\"
    for line in lines:  # directives are comments, dropped below with the others
        m = _DIRECTIVE.match(line)
        if not m:
            break
        if m.group(1).lower() == "escape":
            escape = m.group(2)
            assert escape in ("\\", "`"), f"invalid escape directive {escape!r}"
    instructions: list[Instruction] = []
    buf: list[str] = []
    first = 0
    for n, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if not buf and not stripped:
            continue
        if stripped.startswith("#"):
            continue  # comment lines are removed, also in the middle of a continuation
        if not buf:
            first = n
        body = raw.rstrip()
        if body.endswith(escape):
            buf.append(body[: -len(escape)])
            continue
        buf.append(body)
        joined = "".join(buf).strip()
        buf = []
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), first))
    assert not buf, f"Dockerfile ends inside a continuation started on line {first}"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if re.search(r"<<-?[\"']?[A-Za-z_]", ins.args) and ins.keyword in ("RUN", "COPY", "ADD"):
            raise AssertionError(f"line {ins.lineno}: heredocs are not supported by this parser")
        if ins.keyword == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--platform=")]
            assert len(words) in (1, 3) and (len(words) == 1 or words[1].lower() == "as"), \
                f"line {ins.lineno}: cannot parse FROM {ins.args!r}"
            base = expand(words[0], global_args)
            stages.append(Stage(len(stages), base, words[2].lower() if len(words) == 3 else None, ins.lineno))
        elif not stages:
            assert ins.keyword == "ARG", f"line {ins.lineno}: {ins.keyword} before the first FROM"
            name, _, default = ins.args.partition("=")
            global_args[name.strip()] = unquote(default.strip())
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(global_args, stages)


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


_VAR = re.compile(r"\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")


def expand(text: str, env: dict[str, str]) -> str:
    """Docker's variable substitution: $VAR, ${VAR}, ${VAR:-default}, ${VAR:+alt}; unknown -> ''."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        value = env.get(name, "")
        if m.group(2) == "-":
            return value or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        return value

    return _VAR.sub(sub, text)


def json_or_none(args: str) -> list[str] | None:
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except ValueError:
        return None
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def parse_env(args: str) -> list[tuple[str, str]]:
    """ENV / LABEL pairs: ``k=v k2="v 2"`` or the legacy ``ENV k v``."""
    words = shlex.split(args, posix=True)
    if words and "=" not in words[0]:
        return [(words[0], args.split(None, 1)[1] if len(words) > 1 else "")]
    return [tuple(w.split("=", 1)) for w in words]  # type: ignore[misc]


@dataclass
class Copy:
    flags: dict[str, str]
    sources: list[str]
    dest: str
    lineno: int

    @property
    def from_stage(self) -> str | None:
        return self.flags.get("from")


def parse_copy(ins: Instruction) -> Copy:
    words = ins.args.split()
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    rest = " ".join(words)
    paths = json_or_none(rest) or words
    assert len(paths) >= 2, f"line {ins.lineno}: COPY needs a source and a destination"
    return Copy(flags, paths[:-1], paths[-1], ins.lineno)


def parse_healthcheck(ins: Instruction) -> tuple[dict[str, str], list[str] | str | None]:
    words = ins.args.split(None)
    options: dict[str, str] = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        options[key] = value
    if not words or words[0].upper() == "NONE":
        return options, None
    assert words[0].upper() == "CMD", f"line {ins.lineno}: HEALTHCHECK without CMD"
    rest = ins.args[ins.args.index(words[0]) + 3:].strip()
    return options, json_or_none(rest) or rest


# -------------------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """moby/patternmatcher's translation: ** spans folders, * and ? stay within one, \\ escapes."""
    out = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1:i + 2] == "*":
                i += 2
                if pattern[i:i + 1] == "/":
                    i += 1
                    out += "(.*/)?" if i < len(pattern) else ".*"
                else:
                    out += ".*"
                continue
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out += re.escape(ch)
            else:
                out += pattern[i:end + 1].replace("[!", "[^", 1)
                i = end
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


@dataclass
class DockerIgnore:
    rules: list[tuple[re.Pattern[str], bool, str]]  # (regex, negated, original)

    @classmethod
    def load(cls, path: Path) -> DockerIgnore:
        rules = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = line[1:].strip() if negated else line
            pattern = posixpath.normpath(pattern).lstrip("/")
            if pattern in ("", "."):
                continue
            rules.append((_pattern_regex(pattern), negated, line))
        return cls(rules)

    def excluded_by(self, rel: str) -> str | None:
        """The rule that leaves ``rel`` (a context-relative path) out, or None if it is sent."""
        parts = rel.split("/")
        parents = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
        verdict: str | None = None
        for regex, negated, original in self.rules:
            if any(regex.match(p) for p in parents):
                verdict = None if negated else original
        return verdict

    @property
    def has_negations(self) -> bool:
        return any(n for _, n, _ in self.rules)


def copy_context(src: Path, dst: Path, ignore: DockerIgnore) -> int:
    """Copy the build context as `docker build` would send it; returns the number of files."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in dirnames:
            rel = f"{rel_dir}/{d}" if rel_dir else d
            # an excluded folder is walked only when a later `!` rule may bring something back
            if ignore.excluded_by(rel) is None or ignore.has_negations:
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if ignore.excluded_by(rel) is not None:
                continue
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(dirpath, f), target, follow_symlinks=False)
            count += 1
    return count


# ----------------------------------------------------------------------------------------- sandbox


@dataclass
class StageRun:
    root: Path  # stands for the stage's /
    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)  # the stage's ENV and ARG values (container paths)
    runs: list[tuple[str, float]] = field(default_factory=list)  # (command, seconds)

    def host(self, container_path: str) -> Path:
        return self.root / posixpath.normpath(container_path).lstrip("/")

    def abs(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.workdir, path))


def _copy_into(src: Path, dest: Path, into_dir: bool) -> None:
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    else:
        target = dest / src.name if into_dir or dest.is_dir() else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


def replay_stage(stage: Stage, df: Dockerfile, context: Path, root: Path, done: dict[str, StageRun],
                 *, run: bool, timeout: float) -> StageRun:
    """Replay a stage's WORKDIR/ENV/ARG/COPY (and RUN if ``run``) into ``root``."""
    sr = StageRun(root)
    root.mkdir(parents=True, exist_ok=True)
    shim = root.parent / f"{root.name}-bin"
    shim.mkdir(exist_ok=True)
    # `python` in the image is CPython 3.11; here it is the interpreter running the tests (its base, not
    # the test virtualenv), whatever `python` means on this machine's PATH.
    base_python = getattr(sys, "_base_executable", sys.executable)
    (shim / "python").write_text(f'#!/bin/sh\nexec "{base_python}" "$@"\n')
    (shim / "python").chmod(0o755)
    args = dict(df.global_args)
    for ins in stage.instructions:
        kw = ins.keyword
        if kw == "WORKDIR":
            sr.workdir = sr.abs(expand(ins.args, {**args, **sr.env}))
            sr.host(sr.workdir).mkdir(parents=True, exist_ok=True)
        elif kw == "ARG":
            name, _, default = ins.args.partition("=")
            sr.env.setdefault(name.strip(), unquote(args.get(name.strip(), default.strip())))
        elif kw == "ENV":
            scope = {**args, **sr.env}
            for k, v in parse_env(ins.args):
                sr.env[k] = expand(v, scope)
        elif kw == "ADD":
            raise AssertionError(f"line {ins.lineno}: use COPY, not ADD")
        elif kw == "COPY":
            cp = parse_copy(ins)
            dest = sr.abs(expand(cp.dest, {**args, **sr.env}))
            many = len(cp.sources) > 1 or any(glob.has_magic(s) for s in cp.sources)
            into_dir = cp.dest.endswith("/") or many
            if cp.from_stage is None:
                for pattern in cp.sources:
                    matches = sorted(glob.glob(pattern.lstrip("/"), root_dir=context))
                    assert matches, (f"line {ins.lineno}: COPY {pattern}: nothing in the build context "
                                     f"(.dockerignore applied) matches")
                    for m in matches:
                        _copy_into(context / m, sr.host(dest), into_dir)
            else:
                src_run = done.get(cp.from_stage.lower())
                assert src_run is not None, f"line {ins.lineno}: stage {cp.from_stage} was not replayed"
                for s in cp.sources:
                    src = src_run.host(s)
                    assert src.exists(), (f"line {ins.lineno}: COPY --from={cp.from_stage} {s}: the stage "
                                          f"did not create it (looked at {src})")
                    _copy_into(src, sr.host(dest), into_dir)
        elif kw == "RUN" and run:
            sr.runs.append(_run(ins, sr, shim, timeout))
    return sr


def _host_env(sr: StageRun, shim: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_NO_CACHE_DIR", "NODE_PATH")}
    for k, v in sr.env.items():
        if k == "PATH":
            continue  # the image's PATH names its own folders; the host's tools are used here
        env[k] = str(sr.host(v)) if v.startswith("/") else v
    # The image keeps no pip cache (PIP_NO_CACHE_DIR); here the machine's cache makes the install quicker.
    env.pop("PIP_NO_CACHE_DIR", None)
    env["PATH"] = f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"
    return env


def _run(ins: Instruction, sr: StageRun, shim: Path, timeout: float) -> tuple[str, float]:
    argv = json_or_none(ins.args)
    command = ins.args
    # Container paths written out in the command (not through $VARS) are mapped into the sandbox too.
    known = {sr.workdir, *(v for v in sr.env.values() if v.startswith("/") and ":" not in v)}
    for path in sorted((p for p in known if p != "/"), key=len, reverse=True):
        command = re.sub(rf"(?<![\w./-]){re.escape(path)}(?![\w.-])", str(sr.host(path)), command)
    cmd = argv if argv is not None else ["/bin/sh", "-c", command]
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, cwd=sr.host(sr.workdir), env=_host_env(sr, shim), capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out = out[-3000:]
        pytest.fail(f"line {ins.lineno}: RUN did not finish in {timeout:.0f}s: {ins.args}\n{out}",
                    pytrace=False)
    took = time.monotonic() - t0
    if res.returncode != 0:
        pytest.fail(f"line {ins.lineno}: RUN exited {res.returncode} after {took:.0f}s: {ins.args}\n"
                    f"--- stdout (tail)\n{res.stdout[-3000:]}\n--- stderr (tail)\n{res.stderr[-4000:]}",
                    pytrace=False)
    print(f"[dockerfile] line {ins.lineno}: RUN took {took:.1f}s: {ins.args[:100]}")
    return ins.args, took


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def df() -> Dockerfile:
    assert DOCKERFILE.is_file(), "no Dockerfile at the repository root"
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def ignore() -> DockerIgnore:
    assert DOCKERIGNORE.is_file(), "no .dockerignore at the repository root"
    return DockerIgnore.load(DOCKERIGNORE)


@pytest.fixture(scope="module")
def final(df: Dockerfile) -> Stage:
    return df.stages[-1]


@pytest.fixture(scope="module")
def node_stage(df: Dockerfile) -> Stage:
    found = [s for s in df.stages if s.base.startswith("node:")]
    assert len(found) == 1, "expected exactly one stage FROM node:* (WebTorrent's bundle)"
    return found[0]


@pytest.fixture(scope="module")
def python_build_stage(df: Dockerfile) -> Stage:
    found = [s for s in df.stages[:-1] if s.base.startswith("python:") and
             any("pip" in i.args and "install" in i.args for i in s.all("RUN"))]
    assert len(found) == 1, "expected exactly one python:* stage before the last one that pip installs"
    return found[0]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, ignore: DockerIgnore) -> Path:
    base = tmp_path_factory.mktemp("docker")
    context = base / "context"
    n = copy_context(REPO, context, ignore)
    print(f"[dockerfile] build context: {n} files")
    return base


def _require_tools() -> None:
    if shutil.which("npm") is None:
        pytest.fail("npm is not installed: the Dockerfile's `web` stage runs `npm ci` (install Node.js 20 "
                    "and npm, e.g. with scripts/setup)", pytrace=False)
    base_python = getattr(sys, "_base_executable", sys.executable)
    res = subprocess.run([base_python, "-c", "import ensurepip, venv"], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"{base_python} cannot create virtualenvs (no ensurepip/venv; on Debian install "
                    f"python3-venv): {res.stderr.strip()}", pytrace=False)


@pytest.fixture(scope="module")
def web_run(sandbox: Path, df: Dockerfile, node_stage: Stage) -> StageRun:
    _require_tools()
    return replay_stage(node_stage, df, sandbox / "context", sandbox / "web-root", {}, run=True,
                        timeout=NPM_TIMEOUT)


@pytest.fixture(scope="module")
def build_run(sandbox: Path, df: Dockerfile, python_build_stage: Stage) -> StageRun:
    _require_tools()
    t0 = time.monotonic()
    sr = replay_stage(python_build_stage, df, sandbox / "context", sandbox / "build-root", {}, run=True,
                      timeout=PIP_TIMEOUT)
    print(f"[dockerfile] python build stage took {time.monotonic() - t0:.0f}s")
    return sr


@pytest.fixture(scope="module")
def runtime_run(sandbox: Path, df: Dockerfile, final: Stage, web_run: StageRun, build_run: StageRun,
                node_stage: Stage, python_build_stage: Stage) -> StageRun:
    done = {}
    for stage, sr in ((node_stage, web_run), (python_build_stage, build_run)):
        done[str(stage.index)] = sr
        if stage.name:
            done[stage.name] = sr
    # RUN steps of the runtime stage (user creation) need root: only its files are assembled here.
    return replay_stage(final, df, sandbox / "context", sandbox / "runtime-root", done, run=False,
                        timeout=60)


def _context_copies(df: Dockerfile) -> list[Copy]:
    return [parse_copy(i) for s in df.stages for i in s.all("COPY") if parse_copy(i).from_stage is None]


def _tracked_files() -> list[str]:
    res = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    return [p for p in res.stdout.split("\0") if p]


# ---------------------------------------------------------------------------------- static checks


def test_parser_handles_continuations_comments_and_stages():
    df = parse_dockerfile(
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11\nFROM node:20 AS One\nRUN a \\\n"
        "# a comment inside\n    && b\nFROM ${BASE}\nCOPY --from=one /x /y\n"
        'HEALTHCHECK --interval=5s CMD ["true"]\n')
    assert [(s.name, s.base) for s in df.stages] == [("one", "node:20"), (None, "python:3.11")]
    assert df.stages[0].instructions[0].args == "a     && b"
    cp = parse_copy(df.stages[1].instructions[0])
    assert (cp.from_stage, cp.sources, cp.dest) == ("one", ["/x"], "/y")
    assert parse_healthcheck(df.stages[1].instructions[1]) == ({"interval": "5s"}, ["true"])
    ig = DockerIgnore([(_pattern_regex(p), n, p) for p, n in
                       (("**/node_modules", False), ("*.egg-info", False), ("tests", False),
                        ("tests/keep", True))])
    assert ig.excluded_by("web/node_modules/x/y.js") and ig.excluded_by("node_modules")
    assert ig.excluded_by("a.egg-info/PKG-INFO") and not ig.excluded_by("bridge/a.egg-info")
    assert ig.excluded_by("tests/x.py") and not ig.excluded_by("tests/keep/x.py")
    assert not ig.excluded_by("web/index.html")


def test_multi_stage_with_named_build_stages(df: Dockerfile, final: Stage, node_stage: Stage,
                                             python_build_stage: Stage):
    assert len(df.stages) >= 3, "expected a node stage, a python build stage and the runtime stage"
    names = [s.name for s in df.stages if s.name]
    assert len(names) == len(set(names)), f"stage names repeat: {names}"
    assert node_stage.name and python_build_stage.name, "name the build stages (FROM ... AS name)"
    assert final.base == python_build_stage.base, \
        "the runtime stage must use the build stage's base image (the copied virtualenv relies on it)"
    assert final.base.startswith("python:3.11-slim"), final.base
    assert node_stage.base.startswith("node:20"), node_stage.base
    npm = [i.args for i in node_stage.all("RUN") if "npm" in i.args]
    assert npm and all("npm ci" in a and "--ignore-scripts" in a for a in npm), \
        f"the node stage must run `npm ci --ignore-scripts` (a preinstall fails, a native download is " \
        f"blocked): {npm}"


def test_final_stage_runs_as_non_root(final: Stage):
    user = final.last("USER")
    assert user is not None, "the runtime stage has no USER: it would run as root"
    name = user.args.split(":")[0].strip()
    assert name not in ("", "root", "0"), f"USER {user.args} is root"
    if not name.isdigit():
        useradd = rf"\buseradd\b.*\b{re.escape(name)}\s*($|&&|;)"
        assert any(re.search(useradd, i.args) for i in final.all("RUN")), \
            f"USER {name}: no `useradd ... {name}` in the runtime stage"
    later = [i for i in final.instructions if i.lineno > user.lineno and i.keyword == "RUN"]
    assert not later, f"RUN after USER runs as the unprivileged user, move it up: line {later[0].lineno}"


def test_volumes_ports_entrypoint_and_env(final: Stage):
    volumes: list[str] = []
    for ins in final.all("VOLUME"):
        volumes += json_or_none(ins.args) or ins.args.split()
    assert {"/data", "/state"} <= set(volumes), volumes
    exposed = {w if "/" in w else f"{w}/tcp" for ins in final.all("EXPOSE") for w in ins.args.split()}
    for needed in (f"{PEER_PORT}/tcp", f"{PEER_PORT}/udp", f"{HTTP_PORT}/tcp",
                   f"{TRACKER_PORT}/tcp", f"{TRACKER_PORT}/udp"):
        assert needed in exposed, f"EXPOSE lacks {needed}: {sorted(exposed)}"
    entry = final.last("ENTRYPOINT")
    assert entry and json_or_none(entry.args) == ["webtorrent-bridge"], \
        'ENTRYPOINT ["webtorrent-bridge"] (exec form)'
    cmd = final.last("CMD")
    assert cmd is not None and (argv := json_or_none(cmd.args)) is not None, "CMD in exec (JSON) form"
    assert argv[0] == "serve", argv
    for flag in SERVE_FLAGS:
        assert flag in argv, f"CMD lacks {flag}: {argv}"
    after = dict(zip(argv, [*argv[1:], ""], strict=True))
    assert after["--host"] == "0.0.0.0" and after["--port"] == str(PEER_PORT)
    assert after["--http-port"] == str(HTTP_PORT)
    assert after["--data-dir"] == "/data" and after["--state-dir"] == "/state"
    env = {k: v for i in final.all("ENV") for k, v in parse_env(i.args)}
    assert env.get("BRIDGE_WEB_ROOT", "").startswith("/"), "ENV BRIDGE_WEB_ROOT=/absolute/path/of/web"
    text = DOCKERFILE.read_text()
    assert "BRIDGE_API_TOKEN" in text, "document that serve needs BRIDGE_API_TOKEN off localhost"
    assert "ffmpeg" not in " ".join(i.args for s in [final] for i in s.all("RUN")), "no ffmpeg in the image"


def test_healthcheck_uses_python_urllib(final: Stage):
    hc = final.last("HEALTHCHECK")
    assert hc is not None, "no HEALTHCHECK in the runtime stage"
    options, cmd = parse_healthcheck(hc)
    assert isinstance(cmd, list), "HEALTHCHECK CMD in exec (JSON) form"
    assert cmd[:2] == ["python", "-c"], \
        f"the health check runs Python's urllib (no curl in slim images): {cmd}"
    assert f"http://127.0.0.1:{HTTP_PORT}/api/v1/health" in cmd[2]
    assert "timeout" in options and "timeout" in cmd[2], \
        "bound the health check (--timeout and urlopen timeout)"
    compile(cmd[2], "<HEALTHCHECK>", "exec")


def test_healthcheck_command_against_a_local_server(final: Stage):
    """The health check's code, pointed at a local server: 0 on 200, non-zero on 503 or no server."""
    hc = final.last("HEALTHCHECK")
    assert hc is not None
    _, cmd = parse_healthcheck(hc)
    assert isinstance(cmd, list)
    seen: list[str] = []
    status = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(status[0])
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    code = cmd[2].replace(f"127.0.0.1:{HTTP_PORT}", f"127.0.0.1:{server.server_address[1]}")

    def check() -> int:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode

    try:
        assert check() == 0
        status[0] = 503
        assert check() != 0
    finally:
        server.shutdown()
        server.server_close()
    assert check() != 0, "no server: the health check must fail"
    assert seen == ["/api/v1/health", "/api/v1/health"]


def test_copy_sources_exist_are_tracked_and_not_dockerignored(df: Dockerfile, ignore: DockerIgnore):
    tracked = _tracked_files()
    problems = []
    for cp in _context_copies(df):
        for pattern in cp.sources:
            rel = pattern.lstrip("/")
            matches = sorted(glob.glob(rel, root_dir=REPO))
            if not matches:
                problems.append(f"line {cp.lineno}: COPY {pattern}: no such file in the repository")
                continue
            if glob.has_magic(rel) and not any(m in tracked for m in matches):
                problems.append(f"line {cp.lineno}: COPY {pattern}: matches no committed file")
            if "node_modules" in rel.split("/"):
                problems.append(f"line {cp.lineno}: COPY {pattern}: node_modules is never committed; "
                                f"install it in a build stage")
            for m in matches:
                rule = ignore.excluded_by(m)
                if rule:
                    problems.append(f"line {cp.lineno}: COPY {pattern}: {m} is excluded by .dockerignore "
                                    f"rule {rule!r}")
                inside = [t for t in tracked if t == m or t.startswith(m.rstrip("/") + "/")]
                # a wildcard may also pick up new files not committed yet; a named path must be committed
                if not inside and not glob.has_magic(rel):
                    problems.append(f"line {cp.lineno}: COPY {pattern}: {m} is not committed (git ls-files)")
                for t in inside:
                    rule = ignore.excluded_by(t)
                    if rule and not re.search(r"__pycache__|\.py[cod]$", t):
                        problems.append(f"line {cp.lineno}: committed file {t} is excluded by {rule!r}")
    assert not problems, "\n".join(problems)


def test_copy_from_stages_name_earlier_stages_and_paths_they_create(df: Dockerfile, final: Stage):
    problems = []
    for stage in df.stages:
        for ins in stage.all("COPY"):
            cp = parse_copy(ins)
            if cp.from_stage is None:
                continue
            try:
                src_stage = df.stage(cp.from_stage)
            except KeyError:
                problems.append(f"line {cp.lineno}: --from={cp.from_stage} is not a stage of this file")
                continue
            if src_stage.index >= stage.index:
                problems.append(f"line {cp.lineno}: --from={cp.from_stage} is not an earlier stage")
            # What the source stage produces: its RUN folders, COPY destinations, and ENV paths its RUNs use.
            env: dict[str, str] = {}
            workdir = "/"
            produced: set[str] = set()
            for i in src_stage.instructions:
                if i.keyword == "ENV":
                    env.update((k, expand(v, env)) for k, v in parse_env(i.args))
                elif i.keyword == "WORKDIR":
                    workdir = posixpath.normpath(posixpath.join(workdir, expand(i.args, env)))
                elif i.keyword == "COPY":
                    produced.add(posixpath.normpath(posixpath.join(workdir, parse_copy(i).dest)))
                elif i.keyword == "RUN":
                    produced.add(workdir)
                    produced.update(v for k, v in env.items()
                                    if v.startswith("/") and (f"${k}" in i.args or f"${{{k}}}" in i.args))
            for s in cp.sources:
                path = posixpath.normpath(s)
                if not s.startswith("/"):
                    problems.append(f"line {cp.lineno}: COPY --from source {s} should be absolute")
                elif not any(path == p or path.startswith(p.rstrip("/") + "/") for p in produced if p != "/"):
                    problems.append(f"line {cp.lineno}: {s} is not under anything stage {cp.from_stage} "
                                    f"creates ({sorted(produced)})")
                if env.get("VIRTUAL_ENV") == path and posixpath.normpath(cp.dest) != path:
                    problems.append(f"line {cp.lineno}: the virtualenv must keep its path ({path}): its "
                                    f"scripts' shebangs name it")
    assert not problems, "\n".join(problems)
    assert any(parse_copy(i).from_stage for i in final.all("COPY")), \
        "the runtime stage copies nothing from the build stages"


# ------------------------------------------------------------------------- the stages, run for real


@pytest.mark.timeout(NPM_TIMEOUT + 60)
def test_web_stage_installs_the_webtorrent_bundle(web_run: StageRun):
    dist = web_run.host(web_run.workdir) / "node_modules" / "webtorrent" / "dist"
    for name, least in (("webtorrent.min.js", 100_000), ("sw.min.js", 200)):
        assert (dist / name).is_file(), f"{dist / name} missing"
        assert (dist / name).stat().st_size >= least, f"{dist / name}: only {(dist / name).stat().st_size} bytes"


@pytest.mark.timeout(PIP_TIMEOUT + 120)
def test_python_stage_installs_a_working_command(build_run: StageRun, tmp_path: Path):
    took = sum(t for _, t in build_run.runs)
    print(f"[dockerfile] pip install from the context copy took {took:.0f}s")
    venv = build_run.env.get("VIRTUAL_ENV")
    assert venv, "the build stage should name its virtualenv in ENV VIRTUAL_ENV"
    exe = build_run.host(venv) / "bin" / "webtorrent-bridge"
    assert exe.is_file(), f"{exe} was not installed"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    res = cli("--version")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == f"webtorrent-bridge {version}", res.stdout
    # The package came from the context copy, not from this working tree (no editable install).
    where = subprocess.run([str(exe.parent / "python"), "-c", "import bridge; print(bridge.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0 and str(build_run.host(venv)) in where.stdout, where.stdout + where.stderr
    # Every committed module was installed, and each one imports (the dependencies are all there).
    site = Path(where.stdout.strip()).parent
    installed = {p.relative_to(site.parent).as_posix() for p in site.rglob("*.py")}
    missing = sorted(t for t in _tracked_files() if t.startswith("bridge/") and t.endswith(".py")
                     and t not in installed)
    assert not missing, f"committed modules missing from the installed package: {missing}"
    imports = ("import importlib, pkgutil, bridge; "
               "[importlib.import_module(m.name) for m in pkgutil.walk_packages(bridge.__path__, 'bridge.') "
               "if m.name != 'bridge.__main__']")
    res = subprocess.run([str(exe.parent / "python"), "-c", imports], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    res = cli("serve", "--help")
    assert res.returncode == 0, res.stdout + res.stderr
    missing = [f for f in SERVE_FLAGS if f not in res.stdout]
    assert not missing, f"`serve` lacks the image's CMD flags {missing}:\n{res.stdout}"


@pytest.mark.timeout(PIP_TIMEOUT + NPM_TIMEOUT + 180)
def test_runtime_stage_layout(runtime_run: StageRun, final: Stage, tmp_path: Path):
    env_image = runtime_run.env
    web_root = runtime_run.host(env_image["BRIDGE_WEB_ROOT"])
    # Every committed page file the server would serve from web/ (by suffix) is in the image's web root.
    from bridge.server.app import _STATIC_SUFFIXES

    pages = [t for t in _tracked_files() if t.startswith("web/") and t.count("/") == 1
             and posixpath.splitext(t)[1].lower() in _STATIC_SUFFIXES]
    assert "web/index.html" in pages, pages
    missing = [t for t in pages if not (web_root / posixpath.basename(t)).is_file()]
    assert not missing, f"not in BRIDGE_WEB_ROOT ({env_image['BRIDGE_WEB_ROOT']}) of the image: {missing}"
    assert not (web_root / "package.json").exists(), "only the page and the bundle belong in the image"
    # ENTRYPOINT found through the image's PATH.
    image_path = [p for p in env_image.get("PATH", "").split(":") if p.startswith("/")]
    found = [runtime_run.host(p) / "webtorrent-bridge" for p in image_path
             if (runtime_run.host(p) / "webtorrent-bridge").is_file()]
    assert found, f"webtorrent-bridge is not on the image's PATH {env_image.get('PATH')}"
    # The installed server finds the page and WebTorrent's files through BRIDGE_WEB_ROOT.
    probe = ("import sys; from pathlib import Path; from bridge.server import app; "
             "r = app.default_web_root(); assert r == Path(sys.argv[1]), r; "
             "assert (r / 'index.html').is_file(); d = app.bundle_path(r).parent; "
             "missing = [n for n in app._BUNDLE.values() if not (d / n).is_file()]; "
             "assert not missing, missing")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["BRIDGE_WEB_ROOT"] = str(web_root)
    res = subprocess.run([str(found[0].parent / "python"), "-c", probe, str(web_root)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([str(found[0]), "--version"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert fnmatch.fnmatch(res.stdout.strip(), "webtorrent-bridge *")


def test_compose_example_publishes_the_peer_port_and_needs_the_token():
    """docker-compose.yml and deploy/Caddyfile, by text (no YAML parser in the test extras)."""
    compose = (REPO / "docker-compose.yml").read_text()
    for port in (f'"{PEER_PORT}:{PEER_PORT}/tcp"', f'"{PEER_PORT}:{PEER_PORT}/udp"',
                 f'"{TRACKER_PORT}:{TRACKER_PORT}/udp"'):
        assert port in compose, f"docker-compose.yml does not publish {port} directly"
    assert re.search(r"BRIDGE_API_TOKEN: \$\{BRIDGE_API_TOKEN:\?", compose), "require BRIDGE_API_TOKEN in compose"
    assert "./deploy/Caddyfile:/etc/caddy/Caddyfile" in compose
    caddy = (REPO / "deploy" / "Caddyfile").read_text()
    assert f"reverse_proxy bridge:{HTTP_PORT}" in caddy and f"reverse_proxy bridge:{TRACKER_PORT}" in caddy
    assert "wss://" in caddy and "wss://" in compose, "explain why the tracker needs wss:// behind TLS"




@pytest.mark.timeout(PIP_TIMEOUT + NPM_TIMEOUT + 240)
def test_image_command_runs_from_the_runtime_layout(runtime_run: StageRun, final: Stage, tmp_path: Path):
    """ENTRYPOINT + CMD, run from the assembled runtime layout (volumes mapped to folders here).

    As is, without a token, it must refuse to start (it binds the API to 0.0.0.0); with BRIDGE_API_TOKEN
    and loopback addresses and free ports swapped in, the health check answers and the page and
    WebTorrent's bundle are served from BRIDGE_WEB_ROOT.
    """
    entry, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert entry is not None and cmd is not None
    argv = [*(json_or_none(entry.args) or []), *(json_or_none(cmd.args) or [])]
    image_env = runtime_run.env
    bin_dirs = [runtime_run.host(p) for p in image_env.get("PATH", "").split(":") if p.startswith("/")]
    exe = next(d / argv[0] for d in bin_dirs if (d / argv[0]).is_file())
    volumes = [v for i in final.all("VOLUME") for v in (json_or_none(i.args) or i.args.split())]
    for v in volumes:
        runtime_run.host(v).mkdir(parents=True, exist_ok=True)
    argv = [str(exe), *(str(runtime_run.host(a)) if a in volumes else a for a in argv[1:])]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BRIDGE_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({k: (str(runtime_run.host(v)) if k == "BRIDGE_WEB_ROOT" else v)
                for k, v in image_env.items() if k != "PATH"})

    res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0, "serve started on 0.0.0.0 without an API token"
    assert "BRIDGE_API_TOKEN" in res.stderr, res.stderr

    http_port, peer_port, tracker_port = free_port(udp_too=True), free_port(udp_too=True), free_port(udp_too=True)
    swap = {"--host": "127.0.0.1", "--http-port": str(http_port), "--port": str(peer_port)}
    local = [swap.get(prev, a) for prev, a in zip(["", *argv[:-1]], argv, strict=True)]
    local += ["--peer-host", "127.0.0.1", "--tracker-port", str(tracker_port)]
    env["BRIDGE_API_TOKEN"] = "t" * 32
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(local, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/v1/health", timeout=5) as r:
                    assert r.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"serve did not answer /api/v1/health (exit {proc.poll()}):\n"
                                f"{log.read_text(errors='replace')[-3000:]}", pytrace=False)
                time.sleep(0.3)
        for path, ctype in (("/", "text/html"), ("/index.html", "text/html"),
                            ("/webtorrent.min.js", "text/javascript"), ("/sw.min.js", "text/javascript")):
            with urllib.request.urlopen(base + path, timeout=10) as r:
                assert r.status == 200 and r.headers["Content-Type"].startswith(ctype), (path, r.headers)
                assert r.read(), path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            pytest.fail(f"serve ignored SIGTERM for 30s:\n{log.read_text(errors='replace')[-3000:]}",
                        pytrace=False)
    assert rc == 0, f"serve exited {rc} on SIGTERM:\n{log.read_text(errors='replace')[-3000:]}"
