"""The controller's config: its own section and the fleet's routing document, in the proxy's schema.

    controller:
      listen: 127.0.0.1:9911            # the default
      token_file: controller.token      # default, generated 0600 beside the config; or token_env: NAME
      state_file: controller.state.json # default, beside the config
    providers: {docker: {endpoint: unix:///var/run/docker.sock}}   # optional: endpoints from labels
    services: {...}                     # exactly the proxy's schema
    flags: {...}
    templates: {...}                    # analysis templates (controller.engine.spec)
    rollouts: {...}                     # rollout specs by service, started with `turnout rollout start`

The routing document is validated by the same core reader as a proxy's file, so errors name the file
and the field the same way. A non-loopback ``listen`` needs an explicit token, as the proxy's admin API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.engine.spec import compile_spec, read_templates
from turnout.core.errors import ConfigError
from turnout.core.model import Config, Endpoint
from turnout.core.reader import Reader, from_document, is_loopback, read_document

__all__ = ["ControllerConfig", "Settings", "load", "routing_document"]

ROUTING = ("services", "flags")  # the parts of the document the controller ships to proxies


@dataclass(frozen=True, slots=True)
class Settings:
    listen: Endpoint
    token_file: str
    token_env: str | None
    state_file: str
    docker: str | None = None  # providers.docker.endpoint: discover the fleet's endpoints from containers


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    source: str
    settings: Settings
    document: Any  # the routing document: {"services": ..., "flags": ...}
    rollouts: dict[str, Any]  # rollout specs by service (raw, each checked)
    templates: dict[str, Any]  # analysis templates by name (raw, each checked)


def routing_document(raw: Any) -> Any:
    """The routing part of a document (what the controller ships)."""
    return {key: raw[key] for key in ROUTING if key in raw} if isinstance(raw, dict) else raw


def validate(document: Any, source: str, services_required: bool = True) -> Config:
    """A routing document as a config, checked by the core reader (errors name ``source`` and the field).
    With a provider, services may all come from discovery."""
    return from_document(document, source, services_required)


def parse(text: str, source: str) -> ControllerConfig:
    raw = read_document(text, source)
    reader = Reader(source)
    reader.unicode(raw, "")
    top = reader.mapping(raw, "", {"controller", "providers", "rollouts", "templates", *ROUTING})
    section = reader.mapping(top.get("controller"), "controller", {"listen", "token_file", "token_env", "state_file"})
    listen = reader.endpoint(section.get("listen", "127.0.0.1:9911"), "controller.listen")
    if "token_file" in section and "token_env" in section:
        raise reader.fail("controller", "give either token_file or token_env")
    if "token_file" not in section and "token_env" not in section and not is_loopback(listen.host):
        raise reader.fail("controller.listen", f"{listen} is not a loopback address: set token_file or token_env "
                          "so that the token is chosen, not generated")
    settings = Settings(
        listen,
        reader.file(section.get("token_file", "controller.token"), "controller.token_file"),
        reader.string(section["token_env"], "controller.token_env") if "token_env" in section else None,
        reader.file(section.get("state_file", "controller.state.json"), "controller.state_file"),
        reader.providers(top.get("providers"), "providers").docker,
    )
    document = routing_document(dict(top))
    config = validate(document, source, settings.docker is None)
    templates = read_templates(reader, top.get("templates"))
    rollouts = dict(reader.mapping(top.get("rollouts"), "rollouts"))
    services = {service.name for service in config.services}
    for name, spec in rollouts.items():
        if name not in services and settings.docker is None:  # with a provider it may be discovered
            raise reader.fail(f"rollouts.{name}", f"no service {name!r} (services: {', '.join(sorted(services))})")
        compile_spec(reader, spec, f"rollouts.{name}", templates)
    return ControllerConfig(source, settings, document, rollouts, templates)


def load(path: str | Path) -> ControllerConfig:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read file: {exc.strerror}") from None
    return parse(text, source)
