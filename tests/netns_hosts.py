"""The tests' own hosts: network namespaces on one Linux bridge (Debian's iproute2), so a test
can cut the network between two of them while both keep running.

    with TestHosts(["k1", "k2", "w"]) as hosts:
        hosts.address("k1")        # "10.77.<n>.1": each host its own address
        hosts.netns("w")           # run a process there: ip netns exec <it> ...
        hosts.cut("w", "k1")       # packets between the two go nowhere, in both directions
        hosts.heal("w", "k1")

This process reaches every host through the bridge. Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import random
import subprocess
import uuid
from collections.abc import Sequence


def ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(("-n", netns) if netns else ()), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


class TestHosts:
    """Hosts named `names`, each a network namespace with one address on a shared bridge."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.tag = uuid.uuid4().hex[:5]  # interface names stay within Linux's 15 characters
        self.subnet = f"10.77.{random.randrange(1, 250)}"
        self.bridge = f"rk{self.tag}br"
        self._cuts: set[tuple[str, str]] = set()

    def netns(self, name: str) -> str:
        return f"rk{self.tag}-{name}"

    def address(self, name: str) -> str:
        return f"{self.subnet}.{self.names.index(name) + 1}"

    def __enter__(self) -> "TestHosts":
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for i, name in enumerate(self.names):
                self._add_host(name, f"rk{self.tag}v{i}", f"rk{self.tag}e{i}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _add_host(self, name: str, outside: str, inside: str) -> None:
        space = self.netns(name)
        ip("netns", "add", space)
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", space)
        ip("link", "set", outside, "master", self.bridge)
        ip("link", "set", outside, "up")
        ip("addr", "add", f"{self.address(name)}/24", "dev", inside, netns=space)
        ip("link", "set", inside, "up", netns=space)
        ip("link", "set", "lo", "up", netns=space)

    def cut(self, a: str, b: str) -> None:
        """No packet between hosts `a` and `b` any more (each drops what it would send the
        other); every other path stays open."""
        for here, there in ((a, b), (b, a)):
            ip("route", "add", "blackhole", f"{self.address(there)}/32", netns=self.netns(here))
        self._cuts.add((a, b))

    def heal(self, a: str, b: str) -> None:
        for here, there in ((a, b), (b, a)):
            ip("route", "del", "blackhole", f"{self.address(there)}/32", netns=self.netns(here))
        self._cuts.discard((a, b))

    def __exit__(self, *exc_info: object) -> None:
        for name in self.names:
            subprocess.run(["ip", "netns", "del", self.netns(name)], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
