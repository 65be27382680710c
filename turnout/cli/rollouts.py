"""``turnout rollout ...``: rollouts in the controller, for people (tables, a live view) and scripts
(``--json``).

    turnout rollout start SERVICE --to VERSION [--endpoints HOST:PORT ...] [--spec FILE.json|yaml]
    turnout rollout status [SERVICE]      phase, steps (the current one marked), weights, analysis
    turnout rollout watch SERVICE         a live view until the rollout ends: exit 0 Succeeded, 1 Aborted
    turnout rollout list                  every service's latest rollout
    turnout rollout history SERVICE       every transition: when, who or what, why
    turnout rollout pause|resume|promote [--full]|abort|retry|undo SERVICE

The live view redraws with ``rich`` on a terminal; piped, ``watch`` prints one plain line per change.
Only the controller runs rollouts: the commands talk to it (``client.resolve``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .client import AdminClient, ClientError

__all__ = ["add_deploy_parser", "add_parser", "run", "run_deploy"]

COMMANDS = ("pause", "resume", "promote", "abort", "retry", "undo")
WATCH_EVERY = 0.5  # seconds between two reads of the rollout


DEPLOY_ACTIONS = ("history", "undo")


def add_deploy_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    deploy = sub.add_parser(
        "deploy", parents=[client], help="deploy an image (controller, Docker); its history and undo",
        usage="turnout deploy SERVICE --image IMAGE:TAG --version V [...] | turnout deploy SERVICE "
              "| turnout deploy history SERVICE | turnout deploy undo SERVICE [--to-revision N]")
    deploy.add_argument("words", nargs="+", metavar="SERVICE", help="SERVICE, or history SERVICE, or undo SERVICE")
    deploy.add_argument("--image", metavar="IMAGE:TAG", help="start a deploy of this image (without: its status)")
    deploy.add_argument("--version", dest="deploy_version", metavar="VERSION", help="the version's name")
    deploy.add_argument("--replicas", type=int, default=1)
    deploy.add_argument("--strategy", choices=["canary", "blueGreen", "rolling"], default="canary",
                        help="rolling: replace the containers of an existing version, a batch at a time")
    deploy.add_argument("--pull", action="store_true", help="pull the image if the engine lacks it (default: never)")
    deploy.add_argument("--parallelism", type=int, help="rolling: new containers per batch (default 1)")
    deploy.add_argument("--delay", type=float, help="rolling: seconds between batches (default 0)")
    deploy.add_argument("--monitor", type=float, help="rolling: seconds a batch must stay healthy (default 5)")
    deploy.add_argument("--progress-deadline", type=float, help="rolling: seconds a batch has to get healthy and "
                        "routed (default 60)")
    deploy.add_argument("--failure-action", choices=["rollback", "stop"], help="rolling: when a batch fails "
                        "(default rollback)")
    deploy.add_argument("--to-revision", type=int, metavar="N", help="undo: the revision to go back to "
                        "(default: the one before the latest)")


def run_deploy(api: AdminClient, args: argparse.Namespace) -> int:
    if api.kind != "controller":
        raise ClientError("deploys run in the controller: pass --controller URL or set TURNOUT_CONTROLLER_URL")
    words = list(args.words)
    action = words.pop(0) if len(words) == 2 and words[0] in DEPLOY_ACTIONS else None
    if len(words) != 1:
        raise ClientError("expected: turnout deploy SERVICE [...], turnout deploy history SERVICE or "
                          "turnout deploy undo SERVICE")
    service = words[0]
    if action == "history":
        answer = api.call("GET", f"/v1/deploys/{service}/history")
        return _print(args, answer, "\n".join(_revision_line(r) for r in answer["revisions"]))
    if action == "undo":
        body = {} if args.to_revision is None else {"toRevision": args.to_revision}
        answer = api.call("POST", f"/v1/deploys/{service}/undo", body)
    elif args.image is None:
        answer = api.call("GET", f"/v1/deploys/{service}")
    else:
        if not args.deploy_version:
            raise ClientError("deploy needs --version VERSION (the new version's name)")
        rolling = {key: value for key, value in (
            ("parallelism", args.parallelism), ("delay", args.delay), ("monitor", args.monitor),
            ("progressDeadline", args.progress_deadline), ("failureAction", args.failure_action))
            if value is not None}
        body = {"service": service, "image": args.image, "version": args.deploy_version, "replicas": args.replicas,
                "strategy": args.strategy, "pull": args.pull}
        if rolling:
            body["rolling"] = rolling
        answer = api.call("POST", "/v1/deploys", body)
    text = f"deploy {answer['id']} (revision {answer['revision']}): {answer['phase']}: {answer['reason']}"
    if "rollout" in answer:
        text += "\n" + render_text(answer["rollout"])
    return _print(args, answer, text)


def _revision_line(revision: dict[str, Any]) -> str:
    first = revision["history"][0] if revision["history"] else {"at": "", "why": ""}
    return (f"{revision['revision']:>3}  {first['at']}  {revision['image']} as {revision['version']} "
            f"({revision['strategy']}): {revision['phase']}: {revision['reason']}")


def add_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    rollout = sub.add_parser("rollout", parents=[client], help="canary and blue/green rollouts (controller)")
    rollout.add_argument("action", choices=["start", "status", "watch", "list", "history", *COMMANDS])
    rollout.add_argument("service", nargs="?")
    rollout.add_argument("--to", metavar="VERSION", help="start: the version to roll out")
    rollout.add_argument("--endpoints", nargs="+", metavar="HOST:PORT", help="start: the new version's endpoints")
    rollout.add_argument("--spec", metavar="FILE", help="start: a rollout spec (JSON or YAML) instead of the config's")
    rollout.add_argument("--full", action="store_true", help="promote: straight to 100 %%, skipping every step left")


def run(api: AdminClient, args: argparse.Namespace) -> int:
    if api.kind != "controller":
        raise ClientError("rollouts run in the controller: pass --controller URL or set TURNOUT_CONTROLLER_URL")
    action = args.action
    if action == "list":
        answer = api.call("GET", "/v1/rollouts")
        return _print(args, answer, _listing(answer))
    if not args.service:
        raise ClientError(f"rollout {action} needs a SERVICE")
    if action == "start":
        if not args.to:
            raise ClientError("rollout start needs --to VERSION")
        body: dict[str, Any] = {"service": args.service, "to": args.to}
        if args.endpoints:
            body["endpoints"] = args.endpoints
        if args.spec:
            body["spec"] = _spec(args.spec)
        answer = api.call("POST", "/v1/rollouts", body)
        return _print(args, answer, f"rollout {answer['id']} started: {answer['stable']} -> {answer['canary']} "
                                    f"({answer['strategy']}); turnout rollout watch {args.service}")
    if action == "status":
        answer = api.call("GET", f"/v1/rollouts/{args.service}")
        return _print(args, answer, render_text(answer))
    if action == "history":
        answer = api.call("GET", f"/v1/rollouts/{args.service}/history")
        lines = [f"{t['at']}  {t['who']:<12} {t['phase']:<11} step {t['step']:<3} {t['why']}"
                 for t in answer["history"]]
        return _print(args, answer, "\n".join(lines))
    if action == "watch":
        return watch(api, args.service, args.json)
    name = "promote-full" if action == "promote" and args.full else action
    answer = api.call("POST", f"/v1/rollouts/{args.service}/{name}")
    return _print(args, answer, f"rollout {answer['id']}: {answer['phase']} at step {answer['step']}: "
                                f"{answer['reason']}")


def _print(args: argparse.Namespace, answer: Any, text: str) -> int:
    print(json.dumps(answer, indent=2) if args.json else text)
    return 0


def _spec(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
        return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ClientError(f"cannot read {path}: {exc}") from None


def _listing(answer: dict[str, Any]) -> str:
    lines = [f"{'ROLLOUT':<16} {'SERVICE':<14} {'PHASE':<12} {'STEP':>4}  {'FROM -> TO':<18} REASON"]
    for r in answer["rollouts"]:
        lines.append(f"{r['id']:<16} {r['service']:<14} {r['phase']:<12} {r['step']:>4}  "
                     f"{r['stable'] + ' -> ' + r['canary']:<18} {r['reason']}")
    if not answer["rollouts"]:
        lines = ["no rollouts yet" + (f" (specs for: {', '.join(answer['specs'])})" if answer.get("specs") else "")]
    return "\n".join(lines)


def render_text(r: dict[str, Any]) -> str:
    """A rollout as plain text: what ``status`` prints and what the live view shows."""
    weights = "  ".join(f"{v} {w:g}%" for v, w in r["route"]["weights"].items())
    cohorts = f"  cohorts {', '.join(r['route']['cohorts'])} -> {r['canary']}" if r["route"]["cohorts"] else ""
    lines = [f"rollout {r['id']}  {r['service']}: {r['stable']} -> {r['canary']} ({r['strategy']})",
             f"phase {r['phase']}  step {r['step']}  {r['reason']}",
             f"desired: {weights}{cohorts}  ({'served by every live proxy' if r['applied'] else 'publishing'})"]
    if "pause_remaining" in r:
        lines.append(f"pause: {r['pause_remaining']:g}s left")
    if "warm_remaining" in r:
        lines.append(f"{r['stable']} stays warm for undo: {r['warm_remaining']:g}s left")
    lines.append("steps:")
    for step in r["steps"]:
        mark = ">" if step["current"] else ("x" if step["done"] else " ")
        lines.append(f"  {mark} {step['index']:>2}  {step['step']}")
    for run in r["analysis"]:
        lines.append(f"{run['label']}:")
        for m in run["metrics"]:
            last = m["last"]
            seen = f"last {last['result']}: {last['detail']}" if last else "no measurement yet"
            lines.append(f"  {m['metric']:<16} {m['condition']:<32} {m['measurements']} taken, "
                         f"{m['failed']}/{m['failure_limit']} failed; {seen}")
    lines.append("proxies: " + (", ".join(f"{p['proxy']} gen {p['generation']}"
                                          f"{'' if p['serves'] else ' (behind)'}{'' if p['live'] else ' (not live)'}"
                                          for p in r["proxies"]) or "none"))
    return "\n".join(lines)


def watch(api: AdminClient, service: str, as_json: bool) -> int:
    """Follow the rollout until it ends. On a terminal, a live view redrawn in place; otherwise one line
    each time the phase, step, reason or convergence changes."""
    live_view = sys.stdout.isatty() and not as_json
    if live_view:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        with Live(Text("reading the rollout..."), console=Console(), refresh_per_second=4) as screen:
            while True:
                r = api.call("GET", f"/v1/rollouts/{service}")
                screen.update(Text(render_text(r)))
                if r["phase"] in ("Succeeded", "Aborted"):
                    break
                time.sleep(WATCH_EVERY)
        return 0 if r["phase"] == "Succeeded" else 1
    last: tuple[Any, ...] | None = None
    while True:
        r = api.call("GET", f"/v1/rollouts/{service}")
        key = (r["phase"], r["step"], r["reason"], r["applied"])
        if key != last:
            last = key
            if as_json:
                print(json.dumps(r), flush=True)
            else:
                weights = " ".join(f"{v}={w:g}%" for v, w in r["route"]["weights"].items())
                print(f"{time.strftime('%H:%M:%S')} {r['id']} {r['phase']} step {r['step']}/{len(r['steps']) - 1} "
                      f"{weights}{' (publishing)' if not r['applied'] else ''}: {r['reason']}", flush=True)
        if r["phase"] in ("Succeeded", "Aborted"):
            return 0 if r["phase"] == "Succeeded" else 1
        time.sleep(WATCH_EVERY)
