"""Rollouts as data: the ``rollouts`` and ``templates`` sections of the controller's config (or the
body of a start request), read into records, and every strategy compiled into one list of steps.

    templates:
      errors:
        metrics:
          - {name: success_rate, condition: "success_rate >= 0.99", interval: 10s, count: 3, minRequests: 50}
    rollouts:
      demo:                                   # the service
        strategy: canary                      # or blueGreen
        steps:
          - setHeaderRoute: {name: testers, match: {headers: {x-canary: "1"}}}
          - setWeight: 1                      # percent, decimals allowed; or {ppm: 100}
          - analysis: {templates: [errors]}   # blocking; or {metrics: [...]} inline
          - pause: {duration: 2m}             # or {} : until promoted
          - webhook: {url: "http://127.0.0.1:8080/gate", retries: 3, interval: 5s}
        analysis: {templates: [errors], startingStep: 1}   # background, from that step on
        scaleDownDelay: 30s                   # the old version stays warm (at 0 %) for undo
        webhooks: ["http://127.0.0.1:8080/hook"]           # told of every phase change

blueGreen instead of ``steps``: ``previewHeader`` (a headers match, or a header name that must be
present), ``prePromotionAnalysis``, ``autoPromotionSeconds`` (absent: promote by hand),
``postPromotionAnalysis``. It compiles to: preview route, pre-promotion analysis, pause, one swap to
100 %, post-promotion analysis. A canary's steps get a final ``setWeight: 100`` if they do not end at
100 %. After the last step the engine finishes: cohorts removed, the new version stable.

``compile_spec`` is the one reader: a rollout keeps its raw spec (with the templates it uses copied
in) and compiles it again after a restart, so a running rollout is not changed by a config edit.

Pure: plain data in, records out; errors are ``ConfigError`` naming the field.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from turnout.core.reader import Reader

from .analysis import ConditionError, Metric, parse_condition
from .route import COHORT_PREFIX, PPM

__all__ = ["Analysis", "Pause", "SetHeaderRoute", "SetWeight", "Spec", "Step", "Webhook", "compile_spec",
           "read_templates", "step_text"]

Strategy = Literal["canary", "blueGreen"]


@dataclass(frozen=True, slots=True)
class SetWeight:
    ppm: int


@dataclass(frozen=True, slots=True)
class Pause:
    seconds: float | None  # None: until promoted (or resumed)


@dataclass(frozen=True, slots=True)
class Analysis:
    label: str
    metrics: tuple[Metric, ...]


@dataclass(frozen=True, slots=True)
class SetHeaderRoute:
    name: str
    match: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    retries: int  # attempts before the rollout is aborted
    interval: float  # seconds between attempts


Step = SetWeight | Pause | Analysis | SetHeaderRoute | Webhook


@dataclass(frozen=True, slots=True)
class Spec:
    strategy: Strategy
    steps: tuple[Step, ...]
    background: Analysis | None
    starting_step: int  # the step from which the background analysis runs
    scale_down_delay: float
    webhooks: tuple[str, ...]
    raw: Mapping[str, Any]  # what was given, templates included: compiled again on restore


_KEYS = {"strategy", "steps", "analysis", "scaleDownDelay", "webhooks", "previewHeader", "prePromotionAnalysis",
         "postPromotionAnalysis", "autoPromotionSeconds", "templates"}
_METRIC_KEYS = {"name", "condition", "interval", "count", "failureLimit", "inconclusiveLimit", "minRequests",
                "confidence", "source"}


def read_templates(reader: Reader, raw: Any, path: str = "templates") -> dict[str, Any]:
    """The templates section, each checked; the raw form is kept (rollouts copy what they use)."""
    templates = reader.mapping(raw, path)
    for name, template in templates.items():
        reader.name(name, f"{path}.{name}", "template")
        _metrics(reader, reader.mapping(template, f"{path}.{name}", {"metrics"}).get("metrics"),
                 f"{path}.{name}.metrics")
    return dict(templates)


def compile_spec(reader: Reader, raw: Any, path: str, templates: Mapping[str, Any] | None = None) -> Spec:
    """One rollout spec as records. ``templates``: the config's, by name; a spec that already carries its
    own (``raw["templates"]``, as kept by a rollout) uses those."""
    body = reader.mapping(raw, path, _KEYS)
    own = dict(templates or {})
    own.update(read_templates(reader, body.get("templates"), f"{path}.templates") if "templates" in body else {})
    used: dict[str, Any] = {}

    def analysis(value: Any, where: str, label: str) -> Analysis:
        background = label == "background analysis"
        entry = reader.mapping(value, where, {"templates", "metrics", *(("startingStep",) if background else ())})
        metrics: list[Metric] = []
        names = entry.get("templates", [])
        if not isinstance(names, list):
            raise reader.fail(f"{where}.templates", "must be a list of template names")
        for i, name in enumerate(names):
            if not isinstance(name, str) or name not in own:
                known = ", ".join(sorted(own)) or "none defined"
                raise reader.fail(f"{where}.templates[{i}]", f"no template {name!r} (known: {known})")
            used[name] = own[name]
            metrics += _metrics(reader, own[name]["metrics"], f"templates.{name}.metrics")
        if "metrics" in entry:
            metrics += _metrics(reader, entry["metrics"], f"{where}.metrics")
        if not metrics:
            raise reader.fail(where, "give templates or metrics to measure")
        if background:  # judged at every interval until the rollout ends: no count
            metrics = [replace(metric, count=None) for metric in metrics]
        return Analysis(label + (" " + ", ".join(names) if names else ""), tuple(metrics))

    strategy = body.get("strategy", "canary")
    if strategy not in ("canary", "blueGreen"):
        raise reader.fail(f"{path}.strategy", f"must be canary or blueGreen, got {strategy!r}")
    steps: list[Step]
    if strategy == "canary":
        for key in ("previewHeader", "prePromotionAnalysis", "postPromotionAnalysis", "autoPromotionSeconds"):
            if key in body:
                raise reader.fail(f"{path}.{key}", "is a blueGreen setting; a canary has steps")
        raw_steps = body.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise reader.fail(f"{path}.steps", "a canary needs a list of steps")
        steps = [_step(reader, item, f"{path}.steps[{i}]", analysis) for i, item in enumerate(raw_steps)]
        if steps[-1] != SetWeight(PPM):
            steps.append(SetWeight(PPM))
    else:
        if "steps" in body:
            raise reader.fail(f"{path}.steps", "a blueGreen rollout has no steps: give previewHeader, "
                              "prePromotionAnalysis, autoPromotionSeconds, postPromotionAnalysis")
        steps = []
        if "previewHeader" in body:
            steps.append(SetHeaderRoute("preview", _preview(reader, body["previewHeader"], f"{path}.previewHeader")))
        if "prePromotionAnalysis" in body:
            steps.append(analysis(body["prePromotionAnalysis"], f"{path}.prePromotionAnalysis",
                                  "pre-promotion analysis"))
        steps.append(Pause(reader.duration(body["autoPromotionSeconds"], f"{path}.autoPromotionSeconds")
                           if "autoPromotionSeconds" in body else None))
        steps.append(SetWeight(PPM))
        if "postPromotionAnalysis" in body:
            steps.append(analysis(body["postPromotionAnalysis"], f"{path}.postPromotionAnalysis",
                                  "post-promotion analysis"))
    background, starting = None, 0
    if "analysis" in body:
        background = analysis(body["analysis"], f"{path}.analysis", "background analysis")
        starting = reader.integer(reader.mapping(body["analysis"], f"{path}.analysis").get("startingStep", 0),
                                  f"{path}.analysis.startingStep", 0, len(steps) - 1)
    delay = reader.duration(body["scaleDownDelay"], f"{path}.scaleDownDelay") if "scaleDownDelay" in body else 30.0
    hooks = body.get("webhooks", [])
    if not isinstance(hooks, list):
        raise reader.fail(f"{path}.webhooks", "must be a list of URLs")
    webhooks = tuple(_url(reader, url, f"{path}.webhooks[{i}]") for i, url in enumerate(hooks))
    kept = {key: copy.deepcopy(value) for key, value in body.items() if key != "templates"}
    kept["templates"] = copy.deepcopy({**used, **(body.get("templates") or {})})
    return Spec(strategy, tuple(steps), background, starting, delay, webhooks, kept)


def _step(reader: Reader, raw: Any, where: str, analysis: Any) -> Step:
    kinds = {"setWeight", "pause", "analysis", "setHeaderRoute", "webhook"}
    body = reader.mapping(raw, where, kinds)
    if len(body) != 1:
        raise reader.fail(where, f"a step is one of {', '.join(sorted(kinds))}")
    kind, value = next(iter(body.items()))
    at = f"{where}.{kind}"
    if kind == "setWeight":
        if isinstance(value, dict):
            return SetWeight(reader.integer(reader.mapping(value, at, {"ppm"}).get("ppm"), f"{at}.ppm", 0, PPM))
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            raise reader.fail(at, f"must be a percentage 0..100 (decimals allowed) or {{ppm: N}}, got {value!r}")
        return SetWeight(round(value * PPM / 100))
    if kind == "pause":
        pause = reader.mapping(value, at, {"duration"})
        return Pause(reader.duration(pause["duration"], f"{at}.duration") if "duration" in pause else None)
    if kind == "analysis":
        return analysis(value, at, "analysis")  # type: ignore[no-any-return]
    if kind == "setHeaderRoute":
        route = reader.mapping(value, at, {"name", "match"})
        name = reader.name(route.get("name"), f"{at}.name", "route")
        if len(COHORT_PREFIX + name) > 63:
            raise reader.fail(f"{at}.name", f"at most {63 - len(COHORT_PREFIX)} characters")
        if "match" not in route:
            raise reader.fail(f"{at}.match", "a header route needs a match (headers, cookies, query, path, method)")
        reader.match(route["match"], f"{at}.match")
        return SetHeaderRoute(name, copy.deepcopy(route["match"]))
    hook = reader.mapping(value, at, {"url", "retries", "interval"})
    return Webhook(_url(reader, hook.get("url"), f"{at}.url"), reader.integer(hook.get("retries", 3), f"{at}.retries",
                                                                                1, 100),
                   reader.duration(hook.get("interval", 5), f"{at}.interval"))


def _preview(reader: Reader, raw: Any, where: str) -> Mapping[str, Any]:
    match = {"headers": {raw: {"present": True}}} if isinstance(raw, str) else {"headers": raw}
    reader.match(match, where)
    return match


def _url(reader: Reader, raw: Any, where: str) -> str:
    url = reader.string(raw, where)
    if not url.startswith(("http://", "https://")):
        raise reader.fail(where, f"must be an http:// or https:// URL, got {url!r}")
    return url


def _metrics(reader: Reader, raw: Any, where: str) -> list[Metric]:
    if not isinstance(raw, list) or not raw:
        raise reader.fail(where, "must be a non-empty list of metrics")
    return [_metric(reader, item, f"{where}[{i}]") for i, item in enumerate(raw)]


def _metric(reader: Reader, raw: Any, where: str) -> Metric:
    body = reader.mapping(raw, where, _METRIC_KEYS)
    name = reader.name(body.get("name"), f"{where}.name", "metric")
    try:
        condition = parse_condition(body.get("condition"))  # type: ignore[arg-type]
    except ConditionError as exc:
        raise reader.fail(f"{where}.condition", str(exc)) from None
    count = reader.integer(body["count"], f"{where}.count", 1, 10_000) if "count" in body else 1
    confidence = body.get("confidence", 0.99)
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0.5 <= confidence < 1:
        raise reader.fail(f"{where}.confidence", f"must be a number from 0.5 to below 1, got {confidence!r}")
    source, address, query, field = _source(reader, body.get("source", "proxies"), f"{where}.source")
    if (source == "proxies") == (condition.quantity == "value"):
        raise reader.fail(f"{where}.condition", "the proxies source measures success_rate, error_rate, latency_pNN, "
                          "latency_mean or requests; prometheus and web sources give a 'value'")
    return Metric(name, condition, reader.duration(body.get("interval", 60), f"{where}.interval"), count,
                  reader.integer(body.get("failureLimit", 1), f"{where}.failureLimit", 1, 10_000),
                  reader.integer(body.get("inconclusiveLimit", 3), f"{where}.inconclusiveLimit", 1, 10_000),
                  reader.integer(body.get("minRequests", 50), f"{where}.minRequests", 0, 10_000_000),
                  float(confidence), source, address, query, field)


def _source(reader: Reader, raw: Any, where: str) -> tuple[Any, str, str, str]:
    if raw == "proxies":
        return "proxies", "", "", ""
    body = reader.mapping(raw, where, {"prometheus", "web"})
    if len(body) != 1:
        raise reader.fail(where, "proxies (the default), {prometheus: {address, query}} or {web: {url, field}}")
    kind, value = next(iter(body.items()))
    if kind == "prometheus":
        entry = reader.mapping(value, f"{where}.prometheus", {"address", "query"})
        return ("prometheus", _url(reader, entry.get("address"), f"{where}.prometheus.address").rstrip("/"),
                reader.string(entry.get("query"), f"{where}.prometheus.query"), "")
    entry = reader.mapping(value, f"{where}.web", {"url", "field"})
    return ("web", "", _url(reader, entry.get("url"), f"{where}.web.url"),
            reader.string(entry.get("field"), f"{where}.web.field"))


def step_text(step: Step | None) -> str:
    """A step as people read it in status and history."""
    if step is None:
        return "finish: the new version becomes stable"
    if isinstance(step, SetWeight):
        return f"setWeight {step.ppm / 10_000:g}%"
    if isinstance(step, Pause):
        return f"pause {step.seconds:g}s" if step.seconds is not None else "pause until promoted"
    if isinstance(step, Analysis):
        return step.label
    if isinstance(step, SetHeaderRoute):
        return f"setHeaderRoute {step.name}"
    return f"webhook {step.url}"
