"""What the hot path may see of the process that runs it: a narrow serving context.

``Downstream``, ``Exchange`` and ``UpstreamConnection`` read the current snapshot, the coarse clock,
limits, counters and endpoint health, and ask for a pool or a background task, through these two
types only. The worker (``proxy.worker``) implements them; tests can implement them in a few lines.
So the hot path never imports the worker, and the worker is the only place that owns sockets,
sweepers and reloads (uvicorn's ``ServerState`` is the model).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from mypy_extensions import mypyc_attr

if TYPE_CHECKING:
    from turnout.core.health import Health, RetryBudget
    from turnout.core.model import Limits
    from turnout.core.routing import RoutingState, Target, VersionRoute
    from turnout.core.stats import VersionStats, WorkerStats

    from .downstream import Downstream
    from .upstream import Pool

__all__ = ["AccessLog", "ListenerView", "ServingContext"]


class ListenerView(Protocol):
    """The listener a connection arrived on, as the hot path needs it."""

    @property
    def scheme(self) -> bytes:
        """``b"http"`` or ``b"https"``, for X-Forwarded-Proto."""

    @property
    def redirect_https(self) -> int | None:
        """When set, every request is answered with a redirect to https on this port."""


class AccessLog(Protocol):
    def record(self, fields: dict[str, Any]) -> None: ...


@mypyc_attr(allow_interpreted_subclasses=True)
class ServingContext:
    """The serving process, as seen from one connection; the worker is a subclass that sets every
    attribute. A class rather than a protocol so that, compiled, the hot path reads these attributes
    from the instance's C struct instead of looking each one up in an instance dict."""

    # Read-only to the hot path: the worker replaces them (the snapshot by one assignment).
    state: RoutingState
    now: float  # the coarse clock, refreshed by the sweeper
    limits: Limits
    stats: WorkerStats
    version_stats: dict[VersionRoute, VersionStats]
    health: Health
    budget: RetryBudget
    downstreams: set[Downstream]
    clients: dict[str, int]  # open connections per client address (limits.max_connections_per_client)
    draw: Callable[[], int]  # 64 random bits: weighted choices and fresh sticky keys
    access_log: AccessLog | None

    def pool(self, target: Target) -> Pool:
        raise NotImplementedError

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        raise NotImplementedError
