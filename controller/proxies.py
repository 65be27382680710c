"""The fleet as the controller sees it: which proxies are live, which generation each serves, what it
refused and why, and its last counters. Bookkeeping only: time comes in as ``now``.

A proxy is live while it has a poll open, or polled within ``LIVE_FOR`` seconds of ``now``; a proxy
that stops polling (killed, partitioned) stops being waited for once that bound has passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from turnout.core.wire import Poll

__all__ = ["LIVE_FOR", "Proxies", "Seen"]

LIVE_FOR = 5.0  # seconds after its last poll ended that a proxy still counts as live


@dataclass(slots=True)
class Seen:
    id: str
    address: str
    generation: int = 0
    refused: int = 0
    reason: str = ""
    last_seen: float = 0.0
    open_polls: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def live(self, now: float) -> bool:
        return self.open_polls > 0 or now - self.last_seen <= LIVE_FOR

    def serves(self, generation: int) -> bool:
        """Done with ``generation``: it serves it (or later), or it refused it (it will catch up)."""
        return self.generation >= generation or self.refused >= generation


class Proxies:
    def __init__(self) -> None:
        self.seen: dict[str, Seen] = {}

    def poll_started(self, poll: Poll, peer: str, now: float) -> Seen:
        """``peer``: the poll's source address, shown when the proxy does not say where it serves."""
        seen = self.seen.get(poll.proxy)
        if seen is None:
            seen = self.seen[poll.proxy] = Seen(poll.proxy, peer)
        seen.address, seen.generation, seen.last_seen = poll.address or peer, poll.generation, now
        seen.refused, seen.reason = poll.refused, poll.reason
        seen.stats = poll.stats
        seen.open_polls += 1
        return seen

    def poll_ended(self, seen: Seen, now: float) -> None:
        seen.open_polls -= 1
        seen.last_seen = now

    def live(self, now: float) -> list[Seen]:
        return [seen for seen in self.seen.values() if seen.live(now)]

    def waiting_for(self, generation: int, now: float) -> list[Seen]:
        """The live proxies that do not serve ``generation`` yet."""
        return [seen for seen in self.live(now) if not seen.serves(generation)]

    def status(self, generation: int, now: float, stats: bool = False) -> list[dict[str, Any]]:
        """Each known proxy, for the API and ``turnout proxies``; ``stats``: with its last counters."""
        return [{**({"stats": seen.stats} if stats else {}), "proxy": seen.id, "address": seen.address,
                 "generation": seen.generation,
                 "lag": max(0, generation - seen.generation), "live": seen.live(now),
                 "last_seen": round(now - seen.last_seen, 3) if not seen.open_polls else 0.0,
                 "converged": seen.serves(generation),
                 **({"refused": {"generation": seen.refused, "reason": seen.reason}} if seen.refused else {})}
                for seen in sorted(self.seen.values(), key=lambda s: s.id)]
