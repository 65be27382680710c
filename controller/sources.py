"""The HTTP calls rollouts make: webhook gates, phase notifications, and the external metric sources
(a Prometheus server's ``/api/v1/query``, or any URL answering JSON). Each call is bounded in time;
none raises: a failure is an answer ("connection refused") for the engine to judge.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any

import aiohttp

from controller.engine.analysis import Metric

__all__ = ["call_gate", "fetch", "notify"]

log = logging.getLogger("turnout")

TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=3)
NOTIFY_ATTEMPTS = 3


async def call_gate(session: aiohttp.ClientSession, url: str, body: Mapping[str, Any]) -> tuple[bool, str]:
    """POST the rollout's state to a gate: a 2xx answer passes it."""
    try:
        async with session.post(url, json=dict(body), timeout=TIMEOUT) as response:
            await response.read()
            return 200 <= response.status < 300, f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return False, str(exc) or type(exc).__name__


async def notify(session: aiohttp.ClientSession, url: str, event: Mapping[str, Any]) -> None:
    """Tell a webhook of a phase change: a few attempts, then a log line. Never blocks a rollout."""
    for attempt in range(1, NOTIFY_ATTEMPTS + 1):
        passed, detail = await call_gate(session, url, event)
        if passed:
            return
        await asyncio.sleep(0.5 * attempt)
    log.warning("webhook %s: %s not told after %d attempts (%s)", url, event.get("phase"), NOTIFY_ATTEMPTS, detail)


async def fetch(session: aiohttp.ClientSession, metric: Metric) -> float | None:
    """An external metric's number now, or None (the measurement is then Inconclusive)."""
    try:
        if metric.source == "prometheus":
            async with session.get(f"{metric.address}/api/v1/query", params={"query": metric.query},
                                   timeout=TIMEOUT) as response:
                return _prometheus(await response.json(content_type=None))
        async with session.get(metric.query, timeout=TIMEOUT) as response:
            return _field(await response.json(content_type=None), metric.field)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        log.warning("metric %s: %s source failed: %s", metric.name, metric.source, exc)
        return None


def _prometheus(answer: Any) -> float | None:
    """The one number of an instant query: a scalar, or a vector of one sample."""
    data = answer.get("data") if isinstance(answer, dict) and answer.get("status") == "success" else None
    if not isinstance(data, dict):
        return None
    result = data.get("result")
    if data.get("resultType") == "scalar" and isinstance(result, list):
        return _finite(result[1])
    if data.get("resultType") == "vector" and isinstance(result, list) and len(result) == 1:
        value = result[0].get("value") if isinstance(result[0], dict) else None
        return _finite(value[1]) if isinstance(value, list) and len(value) == 2 else None
    return None


def _field(answer: Any, path: str) -> float | None:
    for part in path.split("."):
        if isinstance(answer, dict) and part in answer:
            answer = answer[part]
        elif isinstance(answer, list) and part.isdigit() and int(part) < len(answer):
            answer = answer[int(part)]
        else:
            return None
    return _finite(answer)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
