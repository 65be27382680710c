"""The releases port of deploys (``deploys.Releases``) on the controller's rollouts and routing: the one
place a deploy learns what the rollouts and the fleet are doing."""

from __future__ import annotations

import asyncio
from typing import Any

from controller.engine.deploy import RolloutState, Routed, default_spec

from .rollouts import Book

__all__ = ["BookReleases"]


class BookReleases:
    def __init__(self, book: Book) -> None:
        self.book = book

    def rollout_state(self, service: str) -> RolloutState | None:
        rollout = self.book.rollouts.get(service)
        return None if rollout is None else RolloutState(rollout.id, rollout.phase.value, rollout.retired)

    def rollout_running(self, service: str) -> bool:
        return bool(self.book.active(service))

    def next_rollout_id(self, service: str, take: bool) -> str:
        number = self.book.numbers.get(service, 0) + 1
        if take:
            self.book.numbers[service] = number
        return f"{service}-{number}"

    def start_rollout(self, service: str, version: str, strategy: str, who: str) -> None:
        self.book.start(service, version, None, default_spec(strategy, self.book.specs.get(service)), who)

    def retire_canary(self, service: str, who: str) -> object:
        return self.book.retire_canary(service, who)

    def _version(self, service: str, version: str) -> dict[str, Any]:
        """The version as the routing has it now (its endpoints, draining, health), or {}."""
        services = self.book.writer.desired.document().get("services") or {}
        versions = (services.get(service) or {}).get("versions") or {}
        found = versions.get(version) if isinstance(versions, dict) else None
        if found is None:
            return {}
        return found if isinstance(found, dict) else {"endpoints": list(found)}  # the list shorthand

    def routed(self, service: str, version: str) -> Routed | None:
        if self.book.proxies.waiting_for(self.book.writer.generation, asyncio.get_running_loop().time()):
            return None
        entry = self._version(service, version)
        return Routed(frozenset(entry.get("endpoints") or ()), frozenset(entry.get("draining") or ()))

    def served(self, service: str) -> bool:
        return self.book.served(service)

    def health_path(self, service: str, version: str) -> str:
        health = self._version(service, version).get("health")
        return str(health.get("path", "/")) if isinstance(health, dict) else "/"

    def persist_deploys(self, saved: dict[str, Any]) -> None:
        self.book.extra["deploys"] = saved
        self.book.persist_extra()

    def rollout_view(self, service: str, rollout_id: str) -> dict[str, Any] | None:
        rollout = self.book.rollouts.get(service)
        return self.book.view(rollout) if rollout is not None and rollout.id == rollout_id else None
