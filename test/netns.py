"""Two "hosts" on one machine: network namespaces joined by a veth pair, for the multi-host tests and benchmark.

Each namespace has only its loopback and one end of the veth pair (10.213.0.1/24 and 10.213.0.2/24), so DDS in
them can reach each other and nothing else; both are deleted on exit, also when a test fails (the veth pair goes
with them). Needs root and iproute2's ``ip``: :func:`unavailable` says why not, for a skip.

``TwoHosts(routed=True)`` puts a router between them instead, as on a network where multicast does not cross
(Wi-Fi, VPNs, routed subnets): a third namespace forwards unicast between 10.213.0.0/24 and 10.213.1.0/24 over two
veth pairs, and Linux forwards no multicast without a multicast routing daemon, so DDS's multicast discovery
stays on each side.

A network namespace alone is not another machine for Fast DDS: processes on one machine share ``/dev/shm`` and
``/etc/machine-id`` (Fast DDS's host id), so Fast DDS would talk shared memory across the "link", discovery
included. Every process of a host therefore runs in a mount namespace where that host has a ``/dev/shm`` and a
machine id of its own, as two real machines do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

ADDRESSES = ("10.213.0.1", "10.213.0.2")
ROUTED_ADDRESSES = ("10.213.0.1", "10.213.1.2")
_ROUTER_ADDRESSES = ("10.213.0.254", "10.213.1.254")


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (None when they can)."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"crxprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class TwoHosts:
    """``with TwoHosts() as hosts:`` then ``hosts.popen(0, [...])`` runs a command on "host" 0 or 1."""

    def __init__(self, routed: bool = False) -> None:
        tag = f"{os.getpid() % 100000}"
        self.routed = routed
        self.namespaces = (f"crx{tag}a", f"crx{tag}b")
        self.router = f"crx{tag}r"
        self.links = (f"crx{tag}a", f"crx{tag}b")  # interface names, <= 15 characters
        self.addresses = ROUTED_ADDRESSES if routed else ADDRESSES
        self.processes: list[subprocess.Popen[str]] = []
        self._machines = Path(tempfile.mkdtemp(prefix="chatrex_hosts_"))
        for host in (0, 1):  # each host's own shared memory and machine id
            (self._machines / f"shm{host}").mkdir()
            (self._machines / f"machine-id{host}").write_text(uuid.uuid4().hex + "\n")

    def __enter__(self) -> TwoHosts:
        try:
            for namespace in self.namespaces:
                _ip("netns", "add", namespace)
                _ip("-n", namespace, "link", "set", "lo", "up")
            if self.routed:
                self._link_through_router()
            else:
                _ip("link", "add", self.links[0], "type", "veth", "peer", "name", self.links[1])
                for namespace, link, address in zip(self.namespaces, self.links, self.addresses, strict=True):
                    _ip("link", "set", link, "netns", namespace)
                    _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", link)
                    _ip("-n", namespace, "link", "set", link, "up")
        except BaseException:
            self.close()
            raise
        return self

    def _link_through_router(self) -> None:
        """host 0 -- veth -- router -- veth -- host 1, unicast forwarded, default routes via the router."""
        _ip("netns", "add", self.router)
        for namespace, link, address, gateway in zip(
            self.namespaces, self.links, self.addresses, _ROUTER_ADDRESSES, strict=True
        ):
            router_end = f"{link}r"
            _ip("link", "add", link, "type", "veth", "peer", "name", router_end)
            _ip("link", "set", link, "netns", namespace)
            _ip("link", "set", router_end, "netns", self.router)
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", link)
            _ip("-n", self.router, "addr", "add", f"{gateway}/24", "dev", router_end)
            _ip("-n", namespace, "link", "set", link, "up")
            _ip("-n", self.router, "link", "set", router_end, "up")
            _ip("-n", namespace, "route", "add", "default", "via", gateway)
        subprocess.run(
            ["ip", "netns", "exec", self.router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
            check=True,
            capture_output=True,
        )

    def __exit__(self, *exc: object) -> None:
        self.close()

    def popen(
        self, host: int, command: Sequence[str], env: Mapping[str, str], log: IO[str] | None = None
    ) -> subprocess.Popen[str]:
        """Start ``command`` inside host ``host``'s namespace (stopped by :meth:`close` if still running)."""
        process = subprocess.Popen(
            self._on(host, command),
            env=dict(env),
            stdout=log if log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.processes.append(process)
        return process

    def run(
        self, host: int, command: Sequence[str], env: Mapping[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside host ``host``'s namespace to its end."""
        return subprocess.run(
            self._on(host, command),
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _on(self, host: int, command: Sequence[str]) -> list[str]:
        """``command`` inside host ``host``: its network namespace, its /dev/shm and machine id."""
        machine = 'mount --bind "$0" /dev/shm && mount --bind "$1" /etc/machine-id && shift && exec "$@"'
        return [
            "ip",
            "netns",
            "exec",
            self.namespaces[host],
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            machine,
            str(self._machines / f"shm{host}"),
            str(self._machines / f"machine-id{host}"),
            *command,
        ]

    def close(self) -> None:
        """Stop every process started here, then delete both namespaces (and with them the veth pair)."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(2)  # SIGINT: rclpy shuts down cleanly
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for namespace in (*self.namespaces, self.router):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        shutil.rmtree(self._machines, ignore_errors=True)


def log_file(directory: Path, name: str) -> IO[str]:
    """A log file for one process (kept open for its lifetime)."""
    return (directory / f"{name}.log").open("w+")
