"""Fakes of the controller's ports, for unit tests only: a runtime of containers in memory and the
releases (rollouts and the fleet's routing) as a deploy sees them. The real implementations are tested
against a real Docker engine and real proxies (tests/integration/test_docker_deploys.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.engine.deploy import RolloutState, Routed
from controller.runtime import Instance, RuntimeFailure


@dataclass
class FakeRuntime:
    """Containers in memory. A container of an image in ``sick`` never gets healthy; ``broken`` makes
    every call fail as an unreachable engine does."""

    images: set[str] = field(default_factory=lambda: {"app:1", "app:2"})
    sick: set[str] = field(default_factory=set)
    containers: dict[str, Instance] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    broken: bool = False
    next_port: int = 20000
    calls: list[str] = field(default_factory=list)

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.broken:
            raise RuntimeFailure("the fake engine is down")

    def add(self, image: str, labels: Mapping[str, str], state: str = "running") -> Instance:
        self.next_port += 1
        number = len(self.containers) + len(self.removed)
        instance = Instance(f"c{number:03d}", f"c{number}", state, {**labels, "turnout.port": str(self.next_port)},
                            image)
        self.containers[instance.id] = instance
        return instance

    async def has_image(self, image: str) -> bool:
        self._check("has_image")
        return image in self.images

    async def pull(self, image: str) -> None:
        self._check("pull")
        self.images.add(image)

    async def run(self, image: str, name: str, labels: Mapping[str, str]) -> Instance:
        self._check("run")
        return self.add(image, labels)

    async def start(self, container_id: str) -> None:
        self._check("start")
        found = self.containers[container_id]
        self.containers[container_id] = Instance(found.id, found.name, "running", found.labels, found.image)

    async def healthy(self, instance: Instance, path: str) -> bool:
        self._check("healthy")
        found = self.containers.get(instance.id)
        return found is not None and found.state == "running" and found.image not in self.sick

    async def remove(self, container_id: str) -> None:
        self._check("remove")
        if self.containers.pop(container_id, None) is not None:
            self.removed.append(container_id)

    async def list(self, labels: Mapping[str, str], include_stopped: bool = False) -> list[Instance]:
        self._check("list")
        return [c for c in self.containers.values()
                if all(c.labels.get(k) == v for k, v in labels.items()) and (include_stopped or c.state == "running")]


@dataclass
class FakeReleases:
    """The rollouts and the fleet as a deploy sees them. Discovery is simulated: every running container of
    a version is routed, those ``draining`` (read from the deploys, as discovery does) as draining; the
    fleet serves each change at once unless ``lagging``. The test moves a started rollout along by hand."""

    runtime: FakeRuntime
    draining: Any = frozenset  # the deploys' draining_ids, once the Deploys exists
    rollouts: dict[str, RolloutState] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)
    started: list[tuple[str, str, str, str]] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    saved: dict[str, Any] = field(default_factory=dict)
    lagging: bool = False

    def rollout_state(self, service: str) -> RolloutState | None:
        return self.rollouts.get(service)

    def rollout_running(self, service: str) -> bool:
        found = self.rollouts.get(service)
        return found is not None and found.phase in ("Pending", "Progressing", "Paused")

    def next_rollout_id(self, service: str, take: bool) -> str:
        number = self.numbers.get(service, 0) + 1
        if take:
            self.numbers[service] = number
        return f"{service}-{number}"

    def start_rollout(self, service: str, version: str, strategy: str, who: str) -> None:
        rollout_id = self.next_rollout_id(service, take=True)
        self.started.append((service, version, strategy, who))
        self.rollouts[service] = RolloutState(rollout_id, "Progressing", False)

    def finish(self, service: str, phase: str) -> None:
        """The rollout ends: Succeeded with the old version out of the split, or Aborted."""
        self.rollouts[service] = RolloutState(self.rollouts[service].id, phase, phase == "Succeeded")

    def retire_canary(self, service: str, who: str) -> object:
        self.retired.append(service)
        current = self.rollouts[service]
        self.rollouts[service] = RolloutState(current.id, current.phase, True)
        return None

    def routed(self, service: str, version: str) -> Routed | None:
        if self.lagging:
            return None
        running = [c for c in self.runtime.containers.values() if c.state == "running"
                   and c.labels.get("turnout.service") == service and c.labels.get("turnout.version") == version]
        draining = self.draining()
        return Routed(frozenset(f"127.0.0.1:{c.port}" for c in running if c.id not in draining),
                      frozenset(f"127.0.0.1:{c.port}" for c in running if c.id in draining))

    def served(self, service: str) -> bool:
        return not self.lagging

    def health_path(self, service: str, version: str) -> str:
        return "/"

    def persist_deploys(self, saved: dict[str, Any]) -> None:
        self.saved = saved

    def rollout_view(self, service: str, rollout_id: str) -> dict[str, Any] | None:
        found = self.rollouts.get(service)
        return {"id": found.id, "phase": found.phase} if found is not None and found.id == rollout_id else None
