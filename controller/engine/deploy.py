"""The deploy engine: immutable infrastructure as a state machine, with no I/O and no clock.

Theory of operation. A deploy starts new containers of an image as a version of a service, waits until
each is healthy and routed, lets a rollout move the traffic (canary or blue/green), then retires what
lost. ``rolling`` instead replaces the containers of an existing version one at a time. The shell
observes the runtime, the rollout and the routing into a ``World`` and calls::

    advance(deploy, world, now) -> (deploy', [Create | Start | Remove | StartRollout | RetireCanary], wake_at)

then performs the actions and persists ``deploy'``. Everything the engine needs to resume after a
``kill -9`` is in the ``Deploy`` value (deadlines are absolute wall-clock seconds), and everything it
acts on is observed afresh each time, so asking twice is harmless: ``Create`` asks for the containers
still missing, ``Remove`` names containers that may already be gone.

Phases and the moves between them are a table (``TRANSITIONS``); ``move`` refuses any other::

    Creating -> Releasing -> CleaningUp -> Succeeded | Aborted
    Creating -> Failed                      (not healthy, or not routed, in time)
    Releasing -> Failed                     (its rollout is gone)
    Rolling -> Succeeded                    (strategy rolling: batch after batch, each one gated)
    Rolling -> RollingBack -> Aborted       (a batch failed its gate: the previous image back, with care)
    Rolling -> Failed, RollingBack -> Failed   (failureAction stop; a rollback that cannot get healthy)

A rolling deploy replaces ``parallelism`` containers per batch (max surge; max unavailable is 0): the
batch's new containers must be healthy and routed by every live proxy within the progress deadline, and
stay healthy for ``monitor`` seconds, before the old ones they replace are drained and removed; then
``delay`` seconds to the next batch. A batch that fails rolls back (``failureAction: rollback``): new
containers of the previous image replace what was already retired, then the deploy's own containers are
drained and removed, so the version serves its old image everywhere again.

Rule 1: a container is retired only once the routing every live proxy serves sends it no new requests
(``Deploy.retiring`` names it and the shell has discovery mark it draining; ``World.routed`` is the
version as every live proxy serves it, or None while they differ), then after ``DRAIN_FOR`` seconds
for the requests in flight. Rule 2: the old version's containers are
never touched by an aborted deploy; the new ones are never kept by one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from turnout.core.errors import ChangeError

__all__ = [
    "ACTIVE",
    "DRAIN_FOR",
    "HEALTHY_WITHIN",
    "ROUTED_WITHIN",
    "STRATEGIES",
    "TRANSITIONS",
    "Action",
    "Container",
    "Create",
    "Deploy",
    "DeployError",
    "Phase",
    "Remove",
    "RetireCanary",
    "Rolling",
    "RolloutState",
    "Routed",
    "Start",
    "StartRollout",
    "World",
    "advance",
    "default_spec",
    "move",
    "new_deploy",
]

HEALTHY_WITHIN = 60.0  # seconds new containers have to pass their health check
ROUTED_WITHIN = 30.0  # seconds the fleet has to route new containers (discovery, then every proxy)
DRAIN_FOR = 2.0  # seconds a retiring container keeps its requests in flight, once every proxy drains it
POLL = 0.5  # seconds between looks while waiting on the runtime or the fleet
HISTORY = 100  # notes kept per deploy
STRATEGIES = ("canary", "blueGreen", "rolling")


class Phase(StrEnum):
    CREATING = "Creating"
    RELEASING = "Releasing"
    ROLLING = "Rolling"
    ROLLING_BACK = "RollingBack"
    CLEANING_UP = "CleaningUp"
    SUCCEEDED = "Succeeded"
    ABORTED = "Aborted"
    FAILED = "Failed"


# phase -> the phases it may move to. Anything else is a bug in the engine and raises.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.CREATING: frozenset({Phase.RELEASING, Phase.FAILED}),
    Phase.RELEASING: frozenset({Phase.CLEANING_UP, Phase.FAILED}),
    Phase.ROLLING: frozenset({Phase.SUCCEEDED, Phase.ROLLING_BACK, Phase.FAILED}),
    Phase.ROLLING_BACK: frozenset({Phase.ABORTED, Phase.FAILED}),
    Phase.CLEANING_UP: frozenset({Phase.SUCCEEDED, Phase.ABORTED, Phase.FAILED}),
    Phase.SUCCEEDED: frozenset(),
    Phase.ABORTED: frozenset(),
    Phase.FAILED: frozenset(),
}
ACTIVE = frozenset(phase for phase, moves in TRANSITIONS.items() if moves)


class DeployError(ChangeError):
    """A deploy that cannot start or move: ``status`` is the HTTP answer, ``field`` what was wrong."""


@dataclass(frozen=True, slots=True)
class Rolling:
    """How a rolling deploy goes (Swarm's ``update_config``, Kubernetes' ``maxSurge`` and
    ``progressDeadlineSeconds``)."""
    parallelism: int = 1  # new containers per batch (the surge); no old one goes before they serve
    delay: float = 0.0  # seconds between batches
    monitor: float = 5.0  # seconds a batch must stay healthy, routed, before the old ones it replaces go
    deadline: float = HEALTHY_WITHIN  # seconds a batch has to get healthy and routed
    failure_action: str = "rollback"  # or "stop": leave what serves as it is, and say so

    def saved(self) -> dict[str, Any]:
        return {"parallelism": self.parallelism, "delay": self.delay, "monitor": self.monitor,
                "progressDeadline": self.deadline, "failureAction": self.failure_action}

    @classmethod
    def restored(cls, data: Mapping[str, Any]) -> Rolling:
        rolling = cls(int(data.get("parallelism", 1)), float(data.get("delay", 0.0)),
                      float(data.get("monitor", 5.0)), float(data.get("progressDeadline", HEALTHY_WITHIN)),
                      str(data.get("failureAction", "rollback")))
        if not 1 <= rolling.parallelism <= 50:
            raise DeployError(422, "rolling.parallelism must be 1..50", "rolling.parallelism")
        for name, value, least in (("delay", rolling.delay, 0), ("monitor", rolling.monitor, 0),
                                   ("progressDeadline", rolling.deadline, 1)):
            if not least <= value <= 3600:
                raise DeployError(422, f"rolling.{name} must be {least}..3600 seconds", f"rolling.{name}")
        if rolling.failure_action not in ("rollback", "stop"):
            raise DeployError(422, "rolling.failureAction must be rollback or stop", "rolling.failureAction")
        return rolling


@dataclass(frozen=True, slots=True)
class Deploy:
    id: str  # the rollout's id (a rolling deploy takes the number too, with no rollout)
    service: str
    version: str
    image: str
    replicas: int
    strategy: str
    health_path: str
    phase: Phase = Phase.CREATING
    reason: str = ""
    replaced: tuple[str, ...] = ()  # the old containers found at the start (retired on success)
    history: tuple[tuple[float, str], ...] = field(default=())
    deadline: float | None = None  # Creating / Rolling: the current wait's end (healthy, then routed)
    healthy: bool = False  # Creating: every container was healthy; now the fleet must route them
    retiring: tuple[str, ...] = ()  # Rolling: the containers being drained
    remove_at: float | None = None  # Rolling: when the drained containers go
    revision: int = 1  # the service's deploys are numbered: turnout deploy history, undo --to-revision
    previous_image: str = ""  # what the replaced containers ran (a rollback brings it back)
    rolling: Rolling = field(default_factory=Rolling)
    monitor_until: float | None = None  # Rolling: the current batch is watched until then
    next_batch_at: float | None = None  # Rolling: the delay between batches

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def saved(self) -> dict[str, Any]:
        return {"id": self.id, "service": self.service, "version": self.version, "image": self.image,
                "replicas": self.replicas, "strategy": self.strategy, "health_path": self.health_path,
                "phase": self.phase.value, "reason": self.reason, "replaced": list(self.replaced),
                "history": [[at, why] for at, why in self.history], "deadline": self.deadline,
                "healthy": self.healthy, "retiring": list(self.retiring), "remove_at": self.remove_at,
                "revision": self.revision, "previous_image": self.previous_image, "rolling": self.rolling.saved(),
                "monitor_until": self.monitor_until, "next_batch_at": self.next_batch_at}

    @classmethod
    def restored(cls, data: Mapping[str, Any]) -> Deploy:
        """Raises KeyError, TypeError or ValueError for a record this engine cannot read."""
        def number(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(str(data["id"]), str(data["service"]), str(data["version"]), str(data["image"]),
                   int(data["replicas"]), str(data["strategy"]), str(data["health_path"]), Phase(data["phase"]),
                   str(data.get("reason", "")), tuple(str(r) for r in data.get("replaced", ())),
                   tuple((float(at), str(why)) for at, why in data.get("history", ())), number("deadline"),
                   bool(data.get("healthy", False)), tuple(str(r) for r in data.get("retiring") or ()),
                   number("remove_at"), int(data.get("revision", 1)), str(data.get("previous_image", "")),
                   Rolling.restored(data.get("rolling") or {}), number("monitor_until"), number("next_batch_at"))


@dataclass(frozen=True, slots=True)
class Container:
    """A container as the runtime shows it: ``state`` created, running or exited; ``healthy`` from its
    own health check or the shell's probe of its port."""
    id: str
    port: int
    state: str = "running"
    healthy: bool = False


@dataclass(frozen=True, slots=True)
class Routed:
    """The deploy's version as every live proxy serves it (``None`` in ``World`` while they differ)."""
    endpoints: frozenset[str]
    draining: frozenset[str]

    def has_port(self, port: int) -> bool:
        return any(e.endswith(f":{port}") for e in self.endpoints)

    def drains_port(self, port: int) -> bool:
        return any(e.endswith(f":{port}") for e in self.draining)


@dataclass(frozen=True, slots=True)
class RolloutState:
    id: str
    phase: str  # the rollout engine's phase
    retired: bool  # Succeeded: the old version left the split; Aborted: the canary did


@dataclass(frozen=True, slots=True)
class World:
    mine: tuple[Container, ...] = ()  # the deploy's own containers (labelled with its id)
    old: tuple[Container, ...] = ()  # which of ``Deploy.replaced`` still exist
    routed: Routed | None = None
    rollout: RolloutState | None = None  # the service's latest rollout
    settled: bool = False  # every live proxy serves a routing without the version that is leaving
    restored: tuple[Container, ...] = ()  # RollingBack: containers of the previous image it started


@dataclass(frozen=True, slots=True)
class Create:
    count: int  # containers to start, each on a port of its own
    restore: bool = False  # of the previous image (a rollback), not of the deploy's


@dataclass(frozen=True, slots=True)
class Start:
    id: str  # created, never started (the controller died in between)


@dataclass(frozen=True, slots=True)
class Remove:
    ids: tuple[str, ...]  # stopped, then removed; an id already gone is no error


@dataclass(frozen=True, slots=True)
class StartRollout:
    """The rollout of the deploy's version, with ``default_spec`` (the shell knows the config's)."""


@dataclass(frozen=True, slots=True)
class RetireCanary:
    pass


Action = Create | Start | Remove | StartRollout | RetireCanary


def default_spec(strategy: str, configured: Any) -> Mapping[str, Any] | None:
    """The rollout a deploy starts: the config's spec for the service when it has this strategy, else a
    short one of its own."""
    if isinstance(configured, Mapping) and configured.get("strategy", "canary") == strategy:
        return None
    if strategy == "canary":
        return {"strategy": "canary", "steps": [{"setWeight": 20}, {"pause": {"duration": "5s"}},
                                               {"setWeight": 60}, {"pause": {"duration": "5s"}}]}
    return {"strategy": "blueGreen", "autoPromotionSeconds": 5}


def new_deploy(deploy_id: str, service: str, version: str, image: str, replicas: int, strategy: str,
               health_path: str, existing: Mapping[str, tuple[str, str]], who: str, now: float,
               revision: int = 1, rolling: Rolling | None = None) -> Deploy:
    """A deploy about to start. ``existing``: the service's running containers (id -> (version label,
    image)). A rolling deploy replaces the version's own containers; the others replace every other
    version's."""
    if not 1 <= replicas <= 50:
        raise DeployError(422, "replicas must be 1..50", "replicas")
    if strategy not in STRATEGIES:
        raise DeployError(422, f"strategy must be canary, blueGreen or rolling, got {strategy!r}", "strategy")
    is_rolling = strategy == "rolling"
    replaced = tuple(cid for cid, (label, _) in existing.items() if (label == version) == is_rolling)
    if is_rolling and not replaced:
        raise DeployError(422, f"no running containers of {service}/{version} to replace; a new version is "
                          "deployed with --strategy canary or blueGreen", "version")
    previous = existing[replaced[0]][1] if replaced else ""
    return Deploy(deploy_id, service, version, image, len(replaced) if is_rolling else replicas, strategy,
                  health_path, Phase.ROLLING if is_rolling else Phase.CREATING, replaced=replaced,
                  history=((now, f"revision {revision} created by {who}: {image} as {version} ({strategy})"),),
                  deadline=None if is_rolling else now + HEALTHY_WITHIN, revision=revision, previous_image=previous,
                  rolling=rolling or Rolling())


def move(deploy: Deploy, phase: Phase, why: str, now: float) -> Deploy:
    if phase not in TRANSITIONS[deploy.phase]:
        raise DeployError(409, f"deploy {deploy.id} cannot go from {deploy.phase} to {phase}", "phase")
    return note(replace(deploy, phase=phase, deadline=None, retiring=(), remove_at=None, monitor_until=None,
                        next_batch_at=None), why, now)


def note(deploy: Deploy, why: str, now: float) -> Deploy:
    return replace(deploy, reason=why, history=(*deploy.history, (now, why))[-HISTORY:])


Step = tuple[Deploy, list[Action], float | None]


def advance(deploy: Deploy, world: World, now: float) -> Step:
    if deploy.phase == Phase.CREATING:
        return _creating(deploy, world, now)
    if deploy.phase == Phase.RELEASING:
        return _releasing(deploy, world, now)
    if deploy.phase == Phase.ROLLING:
        return _rolling(deploy, world, now)
    if deploy.phase == Phase.ROLLING_BACK:
        return _rolling_back(deploy, world, now)
    if deploy.phase == Phase.CLEANING_UP:
        return _cleaning_up(deploy, world, now)
    return deploy, [], None


def _started(have: tuple[Container, ...], want: int, restore: bool = False) -> list[Action]:
    """What makes ``want`` containers exist and run, ``have`` being those there are (a restart finds the
    ones it made, so none is made twice)."""
    actions: list[Action] = [Start(c.id) for c in have if c.state == "created"]
    if len(have) < want:
        actions.append(Create(want - len(have), restore))
    return actions


def _unhealthy(containers: tuple[Container, ...]) -> tuple[str, ...]:
    return tuple(c.id for c in containers if not c.healthy)


def _creating(deploy: Deploy, world: World, now: float) -> Step:
    deadline = deploy.deadline if deploy.deadline is not None else now + HEALTHY_WITHIN
    actions = _started(world.mine, deploy.replicas)
    sick = _unhealthy(world.mine)
    if actions or sick:
        if now < deadline:
            return replace(deploy, deadline=deadline), actions, now + POLL
        why = (f"{deploy.image} did not get healthy within {HEALTHY_WITHIN:g}s: {len(sick)} unhealthy containers "
               "removed, the old ones untouched")
        return move(deploy, Phase.FAILED, why, now), [Remove(sick)], None
    if world.rollout is not None and world.rollout.id == deploy.id:  # started before a restart: go on
        return move(deploy, Phase.RELEASING, f"rollout {deploy.id} goes on", now), [], now
    if not deploy.healthy:  # the fleet gets its own time to route them (discovery, then every proxy)
        return note(replace(deploy, healthy=True, deadline=now + ROUTED_WITHIN),
                    f"{deploy.replicas} containers healthy", now), [], now
    if world.routed is None or not world.routed.endpoints:
        if now < deadline:
            return deploy, [], now + POLL
        return move(deploy, Phase.FAILED, f"the fleet did not route {deploy.service}/{deploy.version} within "
                    f"{ROUTED_WITHIN:g}s (discovery: is providers.docker set on the controller?)", now), [], None
    return move(deploy, Phase.RELEASING, f"rollout {deploy.id} started", now), [StartRollout()], now


def _releasing(deploy: Deploy, world: World, now: float) -> Step:
    rollout = world.rollout
    if rollout is None or rollout.id != deploy.id:
        return move(deploy, Phase.FAILED, "its rollout is gone", now), [], None
    if rollout.phase == "Succeeded" and rollout.retired:
        return move(deploy, Phase.CLEANING_UP, "the old version left the routing: retiring it", now), [], now
    if rollout.phase == "Aborted":
        return (move(deploy, Phase.CLEANING_UP, f"rollout aborted: removing {deploy.version}", now),
                [RetireCanary()], now)
    return deploy, [], now + POLL


def _cleaning_up(deploy: Deploy, world: World, now: float) -> Step:
    """Remove what lost, and say so once it is gone (a restart in between removes the rest)."""
    if not world.settled:  # the routing without the leaving version first, everywhere
        return deploy, [], now + POLL
    if world.rollout is not None and world.rollout.id == deploy.id and world.rollout.phase == "Succeeded":
        if world.old:
            return deploy, [Remove(tuple(c.id for c in world.old))], now + POLL
        return move(deploy, Phase.SUCCEEDED, f"done: {len(deploy.replaced)} old containers removed", now), [], None
    if world.mine:
        return deploy, [Remove(tuple(c.id for c in world.mine))], now + POLL
    return move(deploy, Phase.ABORTED, "rolled back: the new containers removed, the old ones untouched", now), \
        [], None


def _rolling(deploy: Deploy, world: World, now: float) -> Step:
    """Batch after batch: ``parallelism`` new containers healthy, routed everywhere and watched for
    ``monitor`` seconds; then the old ones they replace drained everywhere, kept ``DRAIN_FOR`` for their
    requests in flight, and removed; then ``delay`` to the next batch."""
    if deploy.retiring:
        return _retire(deploy, world.old, world, now, lambda d: note(
            replace(d, retiring=(), remove_at=None, deadline=None, monitor_until=None,
                    next_batch_at=now + d.rolling.delay),
            f"batch done: {len(d.replaced) - len(world.old) + len(d.retiring)} of {len(d.replaced)} replaced", now))
    if not world.old:
        return move(deploy, Phase.SUCCEEDED, f"done: {len(deploy.replaced)} containers replaced, "
                    f"{deploy.rolling.parallelism} at a time", now), [], None
    if deploy.next_batch_at is not None and now < deploy.next_batch_at:
        return deploy, [], deploy.next_batch_at
    batch = min(deploy.rolling.parallelism, len(world.old))
    deadline = deploy.deadline if deploy.deadline is not None else now + deploy.rolling.deadline
    deploy = replace(deploy, deadline=deadline)
    actions = _started(world.mine, len(deploy.replaced) - len(world.old) + batch)
    sick = _unhealthy(world.mine)
    if sick and deploy.monitor_until is not None:
        return _failed(deploy, f"{len(sick)} new containers of {deploy.image} stopped being healthy while watched",
                       now)
    if actions or sick:
        if now < deadline:
            return deploy, actions, now + POLL
        return _failed(deploy, f"{deploy.image} did not get healthy within {deploy.rolling.deadline:g}s", now)
    routed = world.routed
    if routed is None or not all(routed.has_port(c.port) for c in world.mine):
        if now < deadline:
            return deploy, [], now + POLL
        return _failed(deploy, f"the fleet did not route the new containers of {deploy.service}/{deploy.version} "
                       f"within {deploy.rolling.deadline:g}s", now)
    if deploy.monitor_until is None:
        return note(replace(deploy, monitor_until=now + deploy.rolling.monitor),
                    f"{len(world.mine)} new containers healthy and routed: watching them "
                    f"{deploy.rolling.monitor:g}s", now), [], now + min(POLL, deploy.rolling.monitor)
    if now < deploy.monitor_until:
        return deploy, [], min(now + POLL, deploy.monitor_until)
    going = tuple(c.id for c in world.old[:batch])
    return note(replace(deploy, retiring=going, deadline=now + ROUTED_WITHIN),
                f"batch of {batch} passed its gate: draining {', '.join(i[:12] for i in going)}", now), [], now


def _failed(deploy: Deploy, why: str, now: float) -> Step:
    """A batch failed its gate: roll back (the default: the deploy's containers leave only once the
    previous image serves in their place), or stop with what serves left as it is (Swarm's pause)."""
    if deploy.rolling.failure_action == "rollback" and deploy.previous_image:
        return move(deploy, Phase.ROLLING_BACK, f"{why}: rolling back to {deploy.previous_image}", now), [], now
    return move(deploy, Phase.FAILED, f"{why}: stopped, with what serves left as it is", now), [], None


def _rolling_back(deploy: Deploy, world: World, now: float) -> Step:
    """Containers of the previous image for every old one already retired, healthy and routed; then the
    deploy's own containers drained everywhere and removed. No moment with fewer serving containers."""
    if deploy.retiring:
        return _retire(deploy, world.mine, world, now, lambda d: replace(d, retiring=(), remove_at=None))
    deadline = deploy.deadline if deploy.deadline is not None else now + deploy.rolling.deadline
    deploy = replace(deploy, deadline=deadline)
    actions = _started(world.restored, len(deploy.replaced) - len(world.old), restore=True)
    sick = _unhealthy(world.restored)
    routed = world.routed
    if actions or sick or routed is None or not all(routed.has_port(c.port) for c in world.restored):
        if now < deadline:
            return deploy, actions, now + POLL
        return move(deploy, Phase.FAILED, f"the rollback's containers of {deploy.previous_image} did not get "
                    f"healthy and routed within {deploy.rolling.deadline:g}s; what serves is left as it is", now), \
            [], None
    if world.mine:
        going = tuple(c.id for c in world.mine)
        return note(replace(deploy, retiring=going, deadline=now + ROUTED_WITHIN),
                    f"{deploy.previous_image} serves again: draining {len(going)} containers of {deploy.image}",
                    now), [], now
    return move(deploy, Phase.ABORTED, f"rolled back: {deploy.previous_image} serves everywhere, "
                f"{deploy.image} removed", now), [], None


def _retire(deploy: Deploy, candidates: tuple[Container, ...], world: World, now: float,
            done: Callable[[Deploy], Deploy]) -> Step:
    """Drain ``deploy.retiring`` everywhere, wait ``DRAIN_FOR``, remove them; ``done`` once they are gone
    (only then may discovery stop marking them draining: they were stopping until then)."""
    present = tuple(c for c in candidates if c.id in deploy.retiring)
    if not present:
        return done(deploy), [], now
    if deploy.remove_at is not None:
        if now < deploy.remove_at:
            return deploy, [], deploy.remove_at
        return deploy, [Remove(tuple(c.id for c in present))], now + POLL
    routed = world.routed
    if routed is not None and all(routed.drains_port(c.port) or not routed.has_port(c.port) for c in present):
        return replace(deploy, remove_at=now + DRAIN_FOR), [], now + DRAIN_FOR
    if deploy.deadline is not None and now >= deploy.deadline:
        return move(deploy, Phase.FAILED, f"the fleet did not drain {len(present)} containers in time; they still "
                    "serve", now), [], None
    return deploy, [], now + POLL
