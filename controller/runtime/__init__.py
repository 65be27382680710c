"""The runtime port: where a deploy's containers run. The deploy shell (``controller.deploys``) asks it to
run, start, check, stop, remove and list containers by label, and knows nothing else of the engine.

``docker.DockerRuntime`` is the implementation for a plain Docker engine; the unit tests use a fake
(``tests/fakes.py``). Containers use host networking on 127.0.0.1: the runtime picks each one's port and
gives it in the ``PORT`` environment variable and the ``turnout.port`` label, which discovery reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from turnout.core.errors import ChangeError

__all__ = ["Instance", "Runtime", "RuntimeFailure"]


class RuntimeFailure(ChangeError):
    """The runtime cannot be reached or refused a call (502: the controller's own dependency failed)."""

    def __init__(self, message: str, field: str = "runtime") -> None:
        super().__init__(502, message, field)


@dataclass(frozen=True, slots=True)
class Instance:
    """A container as the runtime lists it: ``state`` created, running or exited."""
    id: str
    name: str
    state: str
    labels: Mapping[str, str] = field(default_factory=dict)
    image: str = ""  # as it was asked for (a rollback starts the same again)

    @property
    def port(self) -> int:
        text = self.labels.get("turnout.port", "")
        return int(text) if text.isdigit() else 0


class Runtime(Protocol):
    async def has_image(self, image: str) -> bool: ...

    async def pull(self, image: str) -> None: ...

    async def run(self, image: str, name: str, labels: Mapping[str, str]) -> Instance:
        """Create and start a container of ``image`` on a port of its own (``labels`` get ``turnout.port``)."""
        ...

    async def start(self, container_id: str) -> None: ...

    async def healthy(self, instance: Instance, path: str) -> bool:
        """The container's own health check if it has one, else an HTTP GET of ``path`` on its port."""
        ...

    async def remove(self, container_id: str) -> None:
        """Stop (its requests had time to finish: it was drained) and remove; gone already is no error."""
        ...

    async def list(self, labels: Mapping[str, str], include_stopped: bool = False) -> list[Instance]: ...
