"""Deploys' shell: immutable infrastructure through two ports. The engine (``controller.engine.deploy``)
decides; this module observes, acts and persists:

- the *runtime* (``controller.runtime``: a Docker engine) runs, starts, checks and removes containers;
- the *releases* (``Releases``: the rollouts and the routing every live proxy serves) start a deploy's
  rollout, say where it is, and say what the fleet routes for the deploy's version.

Each step observes a ``World`` afresh (the deploy's containers by its label, the old ones that remain,
the version as every live proxy routes it, the rollout), calls ``advance`` and performs the actions it
returns, then persists the deploy in the controller's state file. So a controller restarted mid-deploy
finds the containers it already started (it never starts them twice) and goes on from its phase.

Every container a deploy starts carries its id (label ``turnout.deploy``) and the service's labels, so
discovery (``providers.docker``) is what makes them endpoints; a container a rolling deploy retires is
marked draining first (``draining_ids``, read by discovery), so it takes no new requests before it goes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from controller.engine import deploy as engine
from controller.engine.deploy import (
    Container,
    Create,
    Deploy,
    DeployError,
    Phase,
    Remove,
    RetireCanary,
    Rolling,
    RolloutState,
    Routed,
    Start,
    StartRollout,
    World,
)
from turnout.core.errors import ChangeError

from .runtime import Instance, Runtime

__all__ = ["Deploys", "Releases"]

log = logging.getLogger("turnout")


class Releases(Protocol):
    """What deploys ask of the rollouts and of the fleet's routing (``rollouts.Book`` implements it)."""

    def rollout_state(self, service: str) -> RolloutState | None: ...

    def rollout_running(self, service: str) -> bool: ...

    def next_rollout_id(self, service: str, take: bool) -> str:
        """The id of the service's next rollout; ``take``: count it now (a rolling deploy has no rollout)."""
        ...

    def start_rollout(self, service: str, version: str, strategy: str, who: str) -> None: ...

    def retire_canary(self, service: str, who: str) -> object: ...

    def routed(self, service: str, version: str) -> Routed | None:
        """The version as every live proxy serves it, or None while they do not all serve the latest."""
        ...

    def served(self, service: str) -> bool:
        """Every live proxy serves the route the service's rollout asks for."""
        ...

    def health_path(self, service: str, version: str) -> str: ...

    def persist_deploys(self, saved: dict[str, Any]) -> None: ...

    def rollout_view(self, service: str, rollout_id: str) -> dict[str, Any] | None: ...


class Deploys:
    def __init__(self, releases: Releases, runtime: Runtime, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.releases = releases
        self.runtime = runtime
        self.clock = clock
        self.sleep = sleep
        self.deploys: dict[str, Deploy] = {}  # by service: the latest
        self.earlier: dict[str, tuple[Deploy, ...]] = {}  # by service: the revisions before it, oldest first
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.driving = False
        self.refresh: Callable[[], None] = lambda: None  # discovery translates its last listing again

    def draining_ids(self) -> frozenset[str]:
        """The containers rolling deploys are retiring: discovery routes no new requests to them."""
        return frozenset(i for d in list(self.deploys.values()) if d.active for i in d.retiring)

    # -- persistence: kept in the rollouts' part of the state file

    def saved(self) -> dict[str, Any]:
        return {service: {**d.saved(), "earlier": [e.saved() for e in self.earlier.get(service, ())]}
                for service, d in self.deploys.items()}

    def restore(self, saved: Mapping[str, Any] | None) -> None:
        for service, data in (saved or {}).items():
            try:
                self.deploys[service] = Deploy.restored(data)
                self.earlier[service] = tuple(Deploy.restored(e) for e in data.get("earlier") or ())
            except (KeyError, TypeError, ValueError) as exc:
                log.error("deploy of %s in the state file cannot be read (%s): left out", service, exc)

    def drive(self) -> None:
        """From now on, deploys advance by themselves: each that was under way goes on from its phase, and
        each new one as it starts. (Unit tests do not call this: they ``step`` deploys by hand.)"""
        self.driving = True
        for deploy in self.deploys.values():
            if deploy.active:
                self._run(deploy.service)

    # -- commands

    async def start(self, service: str, image: str, version: str, replicas: int, strategy: str,
                    pull: bool, who: str, rolling: Mapping[str, Any] | None = None) -> Deploy:
        current = self.deploys.get(service)
        if current is not None and current.active:
            raise DeployError(409, f"deploy {current.id} of {service} is {current.phase}", "service")
        if self.releases.rollout_running(service):
            raise DeployError(409, f"a rollout of {service} is running: let it end first", "service")
        if strategy not in engine.STRATEGIES:  # before the engine is asked anything
            raise DeployError(422, f"strategy must be canary, blueGreen or rolling, got {strategy!r}", "strategy")
        options = Rolling.restored(rolling or {})
        if not await self.runtime.has_image(image):
            if not pull:
                raise DeployError(422, f"image {image} is not on the engine; pull it first, or pass --pull", "image")
            await self.runtime.pull(image)
        existing = {c.id: (c.labels.get("turnout.version", ""), c.image)
                    for c in await self.runtime.list({"turnout.service": service})}
        deploy = engine.new_deploy(self.releases.next_rollout_id(service, take=False), service, version, image,
                                   replicas, strategy, self.releases.health_path(service, version), existing, who,
                                   self.clock(), current.revision + 1 if current is not None else 1, options)
        if strategy == "rolling":
            self.releases.next_rollout_id(service, take=True)
        if current is not None:  # the latest ended: it becomes history (the last 20 are kept)
            self.earlier[service] = (*self.earlier.get(service, ()), current)[-20:]
        self._keep(deploy)
        if self.driving:
            self._run(service)
        return deploy

    def revisions(self, service: str) -> list[Deploy]:
        """Every revision of the service that is kept, oldest first; the last is the latest deploy."""
        return [*self.earlier.get(service, ()), self.get(service)]

    async def undo(self, service: str, to_revision: int | None, who: str) -> Deploy:
        """A new deploy of an earlier revision's image, through the same gates: the latest deploy's version
        with its image again when that was rolling, else the earlier revision's version as it was."""
        latest = self.get(service)
        wanted = latest.revision - 1 if to_revision is None else to_revision
        target = next((r for r in self.revisions(service) if r.revision == wanted), None)
        if target is None and to_revision is None and latest.strategy == "rolling" and latest.previous_image:
            target = replace(latest, image=latest.previous_image)  # before the first deploy: what it replaced
        if target is None or (target.revision == latest.revision and target.image == latest.image):
            raise DeployError(404 if to_revision is not None else 409,
                              f"no revision {wanted} of {service} to go back to", "toRevision")
        if latest.strategy == "rolling":
            return await self.start(service, target.image, latest.version, 1, "rolling", False, who,
                                    latest.rolling.saved())
        return await self.start(service, target.image, target.version, target.replicas, latest.strategy, False, who)

    def get(self, service: str) -> Deploy:
        found = self.deploys.get(service)
        if found is None:
            raise DeployError(404, f"no deploy of {service!r}", "service")
        return found

    def view(self, deploy: Deploy) -> dict[str, Any]:
        view = deploy.saved()
        view["history"] = [{"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)), "why": why}
                           for at, why in deploy.history]
        rollout = self.releases.rollout_view(deploy.service, deploy.id)
        if rollout is not None:
            view["rollout"] = rollout
        return view

    # -- the work: observe, advance, act, persist

    def _run(self, service: str) -> None:
        self._tasks[service] = asyncio.get_running_loop().create_task(self._drive(service))

    async def _drive(self, service: str) -> None:
        while self.deploys[service].active:
            wake = await self.step(service)
            await self.sleep(max(0.0, (wake if wake is not None else self.clock()) - self.clock()))

    async def step(self, service: str) -> float | None:
        """One observation, decision and the actions it asks for; the time to look again."""
        deploy = self.deploys[service]
        try:
            world = await self._observe(deploy)
            advanced, actions, wake = engine.advance(deploy, world, self.clock())
            self._keep(advanced)
            draining = deploy.retiring
            for action in actions:
                await self._act(advanced, action)
            if advanced.retiring != draining:
                self.refresh()  # discovery marks (or stops marking) the retiring container draining
        except ChangeError as exc:  # the runtime failed, or a rollout could not start: the deploy stops
            current = self.deploys[service]
            if current.active:
                self._keep(engine.move(current, Phase.FAILED, exc.message, self.clock()))
                self.refresh()
            else:  # it had ended; what it could not clean up stays, and says so
                log.error("deploy %s: %s", current.id, exc.message)
            return None
        return wake

    async def _observe(self, deploy: Deploy) -> World:
        mine = await self.runtime.list({"turnout.deploy": deploy.id}, include_stopped=True)
        containers = tuple([await self._container(deploy, i) for i in mine])
        restored: tuple[Container, ...] = ()
        if deploy.phase == Phase.ROLLING_BACK:
            found = await self.runtime.list({"turnout.deploy": f"{deploy.id}-rollback"}, include_stopped=True)
            restored = tuple([await self._container(deploy, i) for i in found])
        old = tuple(Container(i.id, i.port, i.state)
                    for i in await self.runtime.list({"turnout.service": deploy.service})
                    if i.id in deploy.replaced)
        return World(containers, old, self.releases.routed(deploy.service, deploy.version),
                     self.releases.rollout_state(deploy.service),
                     deploy.phase == Phase.CLEANING_UP and self.releases.served(deploy.service), restored)

    async def _container(self, deploy: Deploy, instance: Instance) -> Container:
        healthy = instance.state == "running" and await self.runtime.healthy(instance, deploy.health_path)
        return Container(instance.id, instance.port, instance.state, healthy)

    async def _act(self, deploy: Deploy, action: engine.Action) -> None:
        if isinstance(action, Create):
            owner = f"{deploy.id}-rollback" if action.restore else deploy.id
            labels = {"turnout.service": deploy.service, "turnout.version": deploy.version,
                      "turnout.deploy": owner, "turnout.rollout": deploy.id}
            if deploy.health_path != "/":
                labels["turnout.health.path"] = deploy.health_path
            for _ in range(action.count):
                await self.runtime.run(deploy.previous_image if action.restore else deploy.image, owner, labels)
        elif isinstance(action, Start):
            await self.runtime.start(action.id)
        elif isinstance(action, Remove):
            for container_id in action.ids:
                await self.runtime.remove(container_id)
        elif isinstance(action, StartRollout):
            self.releases.start_rollout(deploy.service, deploy.version, deploy.strategy, f"deploy {deploy.id}")
        elif isinstance(action, RetireCanary):
            self.releases.retire_canary(deploy.service, f"deploy {deploy.id}")

    def _keep(self, deploy: Deploy) -> None:
        before = self.deploys.get(deploy.service)
        if deploy == before:
            return
        if before is None or deploy.history != before.history:
            log.info("deploy %s: %s", deploy.id, deploy.history[-1][1])
        self.deploys[deploy.service] = deploy
        try:
            self.releases.persist_deploys(self.saved())
        except ChangeError as exc:  # the deploy goes on; its state is written with the next change
            log.error("deploy %s: %s", deploy.id, exc.message)
