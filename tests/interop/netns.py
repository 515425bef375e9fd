"""Run a program inside a private network namespace that holds a veth pair and nothing else.

Some peers (libtorrent's WebRTC, through libjuice) never gather ICE candidates on 127/8, so a test that
must stay on this machine gives them a network of their own: ``unshare -n`` makes a namespace with only
a (down) loopback; :func:`setup_veth`, run inside it, brings loopback up and adds a veth pair whose two
ends, ``VETH_A`` and ``VETH_B``, are both in the namespace. Nothing can leave it: it has no link to the
host's network.

Creating namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), util-linux's ``unshare`` and
iproute2's ``ip``. :func:`namespace_unavailable` says why it cannot be done here (None if it can), so a
test can fail with that reason instead of being skipped. :func:`netem_unavailable` does the same for
``tc qdisc ... netem`` (iproute2's ``tc`` and the kernel's sch_netem), which delays and drops packets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

VETH_A = "10.77.0.1"
VETH_B = "10.77.0.2"
PREFIX = 24

#: (ip arguments) run inside the fresh namespace, in order.
SETUP_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("link", "set", "lo", "up"),
    ("link", "add", "veth0", "type", "veth", "peer", "name", "veth1"),
    ("addr", "add", f"{VETH_A}/{PREFIX}", "dev", "veth0"),
    ("addr", "add", f"{VETH_B}/{PREFIX}", "dev", "veth1"),
    ("link", "set", "veth0", "up"),
    ("link", "set", "veth1", "up"),
    ("route", "add", "default", "via", VETH_B, "dev", "veth0"),
)


class NamespaceError(RuntimeError):
    """The namespace or its veth pair could not be set up; the message says why."""


def _tools() -> tuple[str, str]:
    unshare = shutil.which("unshare")
    ip = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), None)
    if unshare is None:
        raise NamespaceError("`unshare` (util-linux) is not installed, so no network namespace can be made")
    if ip is None:
        raise NamespaceError("`ip` (iproute2) is not installed, so no veth pair can be made")
    return unshare, ip


def namespace_unavailable(timeout: float = 20.0) -> str | None:
    """Why a private network namespace with a veth pair cannot be made here, or None if it can.

    Tries it for real (``unshare -n ip link add ... type veth``), so a missing capability, a kernel
    without veth or a seccomp filter all show up, each with the tool's own message."""
    try:
        unshare, ip = _tools()
    except NamespaceError as e:
        return str(e)
    cmd = [unshare, "-n", ip, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s"
    except OSError as e:
        return f"cannot run `{' '.join(cmd)}`: {e}"
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip() or f"exit code {res.returncode}"
        hint = " (needs root: CAP_SYS_ADMIN and CAP_NET_ADMIN)" if os.geteuid() != 0 else ""
        return f"cannot create a network namespace with a veth pair{hint}: `{' '.join(cmd)}`: {why}"
    return None


def tc_path() -> str | None:
    """iproute2's ``tc``, or None."""
    return shutil.which("tc") or next((p for p in ("/usr/sbin/tc", "/sbin/tc") if os.access(p, os.X_OK)), None)


def netem_unavailable(timeout: float = 20.0) -> str | None:
    """Why ``tc qdisc add ... netem`` cannot be used here, or None if it can.

    Tries it for real on the loopback of a throw-away namespace (``unshare -n tc qdisc add dev lo root
    netem delay 1ms loss 1%``), so a missing ``tc``, a kernel without sch_netem or a missing capability
    each show up with the tool's own message."""
    why = namespace_unavailable(timeout)
    if why is not None:
        return why
    tc = tc_path()
    if tc is None:
        return "`tc` (Debian package iproute2) is not installed, so no netem qdisc can be added"
    unshare, _ = _tools()
    cmd = [unshare, "-n", tc, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms", "loss", "1%"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s"
    except OSError as e:
        return f"cannot run `{' '.join(cmd)}`: {e}"
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip() or f"exit code {res.returncode}"
        hint = ""
        if "unknown" in why.lower():
            hint = (" (this kernel has no sch_netem: it needs CONFIG_NET_SCH_NETEM, built in or as the module "
                    "sch_netem, e.g. `modprobe sch_netem`; Debian/Ubuntu cloud kernels ship it in "
                    "linux-modules-extra)")
        return f"cannot add a netem qdisc{hint}: `{' '.join(cmd)}`: {why}"
    return None


def namespace_command(argv: Sequence[str]) -> list[str]:
    """``argv`` run in a new, private network namespace (``unshare -n`` execs it: same pid)."""
    unshare, _ = _tools()
    return [unshare, "-n", *argv]


def _links(ip: str) -> list[str]:
    res = subprocess.run([ip, "-o", "link", "show"], capture_output=True, text=True, timeout=20,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise NamespaceError(f"`ip -o link show` failed ({res.returncode}): {res.stderr.strip()}")
    return [line.split(":")[1].strip().split("@")[0] for line in res.stdout.splitlines() if ":" in line]


def setup_veth() -> None:
    """Inside a fresh namespace: loopback up, veth0 = VETH_A and veth1 = VETH_B, both up.

    Refuses to run anywhere but in a fresh network namespace (whose only link is ``lo``), where it would
    change a real network."""
    _, ip = _tools()
    links = _links(ip)
    if links != ["lo"]:
        raise NamespaceError(f"refusing to add a veth pair: this is not a fresh network namespace (links: {links})")
    for args in SETUP_COMMANDS:
        res = subprocess.run([ip, *args], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise NamespaceError(f"`ip {' '.join(args)}` failed ({res.returncode}): {(res.stderr or res.stdout).strip()}")
