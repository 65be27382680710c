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
    Rolling -> Succeeded | Failed           (strategy rolling)

Rule 1: a container is retired only once the routing every live proxy serves sends it no new requests
(``Deploy.retiring`` names it and the shell has discovery mark it draining; ``World.routed`` is the
version as every live proxy serves it, or None while they differ), then after ``DRAIN_FOR`` seconds
for the requests in flight. Rule 2: the old version's containers are
never touched by an aborted deploy; the new ones are never kept by one.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    CLEANING_UP = "CleaningUp"
    SUCCEEDED = "Succeeded"
    ABORTED = "Aborted"
    FAILED = "Failed"


# phase -> the phases it may move to. Anything else is a bug in the engine and raises.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.CREATING: frozenset({Phase.RELEASING, Phase.FAILED}),
    Phase.RELEASING: frozenset({Phase.CLEANING_UP, Phase.FAILED}),
    Phase.ROLLING: frozenset({Phase.SUCCEEDED, Phase.FAILED}),
    Phase.CLEANING_UP: frozenset({Phase.SUCCEEDED, Phase.ABORTED, Phase.FAILED}),
    Phase.SUCCEEDED: frozenset(),
    Phase.ABORTED: frozenset(),
    Phase.FAILED: frozenset(),
}
ACTIVE = frozenset(phase for phase, moves in TRANSITIONS.items() if moves)


class DeployError(ChangeError):
    """A deploy that cannot start or move: ``status`` is the HTTP answer, ``field`` what was wrong."""


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
    retiring: str | None = None  # Rolling: the old container being drained
    remove_at: float | None = None  # Rolling: when the drained container goes

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    def saved(self) -> dict[str, Any]:
        return {"id": self.id, "service": self.service, "version": self.version, "image": self.image,
                "replicas": self.replicas, "strategy": self.strategy, "health_path": self.health_path,
                "phase": self.phase.value, "reason": self.reason, "replaced": list(self.replaced),
                "history": [[at, why] for at, why in self.history], "deadline": self.deadline,
                "healthy": self.healthy, "retiring": self.retiring, "remove_at": self.remove_at}

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
                   bool(data.get("healthy", False)),
                   None if data.get("retiring") is None else str(data["retiring"]), number("remove_at"))


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


@dataclass(frozen=True, slots=True)
class Create:
    count: int  # containers to start, each on a port of its own


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
               health_path: str, existing: Mapping[str, str], who: str, now: float) -> Deploy:
    """A deploy about to start. ``existing``: the service's running containers (id -> version label).
    A rolling deploy replaces the version's own containers; the others replace every other version's."""
    if not 1 <= replicas <= 50:
        raise DeployError(422, "replicas must be 1..50", "replicas")
    if strategy not in STRATEGIES:
        raise DeployError(422, f"strategy must be canary, blueGreen or rolling, got {strategy!r}", "strategy")
    rolling = strategy == "rolling"
    replaced = tuple(cid for cid, label in existing.items() if (label == version) == rolling)
    if rolling and not replaced:
        raise DeployError(422, f"no running containers of {service}/{version} to replace; a new version is "
                          "deployed with --strategy canary or blueGreen", "version")
    return Deploy(deploy_id, service, version, image, len(replaced) if rolling else replicas, strategy,
                  health_path, Phase.ROLLING if rolling else Phase.CREATING, replaced=replaced,
                  history=((now, f"created by {who}: {image} as {version} ({strategy})"),),
                  deadline=None if rolling else now + HEALTHY_WITHIN)


def move(deploy: Deploy, phase: Phase, why: str, now: float) -> Deploy:
    if phase not in TRANSITIONS[deploy.phase]:
        raise DeployError(409, f"deploy {deploy.id} cannot go from {deploy.phase} to {phase}", "phase")
    return note(replace(deploy, phase=phase, deadline=None, retiring=None, remove_at=None), why, now)


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
    if deploy.phase == Phase.CLEANING_UP:
        return _cleaning_up(deploy, world, now)
    return deploy, [], None


def _started(deploy: Deploy, world: World, want: int) -> list[Action]:
    """What makes ``want`` of the deploy's containers exist and run (a restart finds those it made)."""
    actions: list[Action] = [Start(c.id) for c in world.mine if c.state == "created"]
    if len(world.mine) < want:
        actions.append(Create(want - len(world.mine)))
    return actions


def _unhealthy(world: World) -> tuple[str, ...]:
    return tuple(c.id for c in world.mine if not c.healthy)


def _creating(deploy: Deploy, world: World, now: float) -> Step:
    deadline = deploy.deadline if deploy.deadline is not None else now + HEALTHY_WITHIN
    actions = _started(deploy, world, deploy.replicas)
    sick = _unhealthy(world)
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
    """One container at a time, max surge 1, max unavailable 0: a new one healthy and routed everywhere,
    then an old one drained everywhere, kept ``DRAIN_FOR`` for its requests in flight, and removed."""
    if deploy.retiring is not None:
        return _retiring(deploy, world, now)
    if not world.old:
        return move(deploy, Phase.SUCCEEDED, f"done: {len(deploy.replaced)} containers replaced, one at a time",
                    now), [], None
    replaced_so_far = len(deploy.replaced) - len(world.old)
    if len(world.mine) <= replaced_so_far:  # surge: the next new container first
        deadline = deploy.deadline if deploy.deadline is not None else now + HEALTHY_WITHIN
        return replace(deploy, deadline=deadline), _started(deploy, world, replaced_so_far + 1), now + POLL
    actions = _started(deploy, world, len(world.mine))
    sick = _unhealthy(world)
    deadline = deploy.deadline if deploy.deadline is not None else now + HEALTHY_WITHIN
    if actions or sick:
        if now < deadline:
            return replace(deploy, deadline=deadline), actions, now + POLL
        why = (f"{deploy.image} did not get healthy within {HEALTHY_WITHIN:g}s: {len(sick)} unhealthy containers "
               f"removed; {len(world.old)} old containers still serve")
        return move(deploy, Phase.FAILED, why, now), [Remove(sick)], None
    routed = world.routed
    if routed is None or not all(routed.has_port(c.port) for c in world.mine):
        if now < deadline:
            return replace(deploy, deadline=deadline), [], now + POLL
        return move(deploy, Phase.FAILED, f"the fleet did not route the new containers of {deploy.service}/"
                    f"{deploy.version} in time", now), [], None
    old = world.old[0]
    deploy = note(replace(deploy, retiring=old.id, deadline=now + ROUTED_WITHIN),
                  f"{len(world.mine)} new containers serving: draining {old.id[:12]}", now)
    return deploy, [], now


def _retiring(deploy: Deploy, world: World, now: float) -> Step:
    old = next((c for c in world.old if c.id == deploy.retiring), None)
    if old is None:  # gone: only now may discovery stop marking it draining (it was stopping until then)
        retired = (deploy.retiring or "")[:12]
        return note(replace(deploy, retiring=None, remove_at=None, deadline=None),
                    f"retired container {retired} after draining it", now), [], now
    if deploy.remove_at is not None:
        if now < deploy.remove_at:
            return deploy, [], deploy.remove_at
        return deploy, [Remove((old.id,))], now + POLL
    if world.routed is not None and world.routed.drains_port(old.port):
        return replace(deploy, remove_at=now + DRAIN_FOR), [], now + DRAIN_FOR
    if deploy.deadline is not None and now >= deploy.deadline:
        return move(deploy, Phase.FAILED, f"the fleet did not drain {old.id[:12]} in time; it still serves", now), \
            [], None
    return deploy, [], now + POLL
