"""The ``turnout`` command.

    turnout proxy  [--config FILE] [--workers N]            serve (also: python -m proxy)
    turnout controller [--config FILE]                      the release controller (also: python -m controller)
    turnout check  [--config FILE]                          validate a config file and exit
    turnout status                                          services, versions, rules, splits
    turnout proxies                                         the proxies following the controller
    turnout weights set SERVICE v1=90 v2=10 [--rule R]      change a split (--dry-run: who would move)
    turnout explain --host H [--path P] [-H 'Name: value']  which rule, bucket, version, endpoint
    turnout versions set SERVICE VERSION HOST:PORT... [--draining HOST:PORT...]   add or replace endpoints
    turnout versions drain SERVICE VERSION HOST:PORT...     stop new requests to endpoints (in flight finish)
    turnout generations                                     who changed what, when
    turnout diff A B                                        what changed between two generations
    turnout rollback GENERATION                             a new generation equal to an old one
    turnout reload                                          re-read the config file and certificates
    turnout reset SERVICE... [--flag KEY] | --all           drop admin changes: the file shows through again
    turnout flags list                                      feature flags and their rollouts
    turnout flags set KEY on=20 off=80                      change a flag's percentage rollout
    turnout flags set KEY --file FLAG.json                  create or replace a flag
    turnout flags enable|disable|kill KEY                   switch a flag (kill: off for everyone, now)
    turnout rollout start|status|watch|list|history|pause|resume|promote|abort|retry|undo   (cli/rollouts.py)
    turnout deploy SERVICE --image IMG:TAG --version V [--replicas N] [--strategy canary|blueGreen] [--pull]

The client commands talk to the controller (``--controller URL`` or TURNOUT_CONTROLLER_URL) or to a
proxy's admin API (``--admin URL`` or TURNOUT_ADMIN_URL); with neither, to the demo's controller when
config/controller.token exists, else to http://127.0.0.1:9901; ``--config FILE`` (or TURNOUT_CONFIG) finds
the API and token a config file describes (see ``client.resolve``). ``--json`` (before or after the
command) prints the API's answer as it is. Any failure: one line, exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from proxy import config as config_module
from turnout.core.errors import ConfigError

from . import rollouts
from .client import AdminClient, ClientError, resolve

__all__ = ["main"]

DEFAULT_CONFIG = "config/turnout.yaml"


def _proxy_main() -> Callable[[list[str]], int]:
    from proxy.main import main as proxy_main  # imported when used: client commands need neither server

    return proxy_main


def _controller_main() -> Callable[[list[str]], int]:
    from controller.main import main as controller_main

    return controller_main


SERVERS: dict[str, Callable[[], Callable[[list[str]], int]]] = {"proxy": _proxy_main, "controller": _controller_main}


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] and given[0] in SERVERS:
        # Either server starts the same way: its own entry point parses the rest of the arguments.
        return SERVERS[given[0]]()(given[1:])
    parser = argparse.ArgumentParser(prog="turnout", description="Traffic-splitting reverse proxy.")
    parser.add_argument("--version", action="version", version=f"turnout {_version()}")
    parser.add_argument("--json", action="store_true", dest="json_first", help="print the API's JSON answer")
    sub = parser.add_subparsers(dest="command", required=True)
    # Listed for --help; main() hands their arguments to the server's own parser before parsing here.
    sub.add_parser("proxy", help="run the proxy (turnout proxy --help)", add_help=False)
    sub.add_parser("controller", help="run the release controller (turnout controller --help)", add_help=False)
    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("--config", default=DEFAULT_CONFIG)

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--controller", help="controller URL (default $TURNOUT_CONTROLLER_URL; the demo's if it "
                        "ran here: config/controller.token)")
    client.add_argument("--admin", help="a proxy's admin API URL (default $TURNOUT_ADMIN_URL or http://127.0.0.1:9901)")
    client.add_argument("--token", help="admin token (default $TURNOUT_ADMIN_TOKEN or the token file)")
    client.add_argument("--token-file", help="file holding the admin token (default config/admin.token)")
    client.add_argument("--json", action="store_true", help="print the API's JSON answer")
    client.add_argument("--config", dest="client_config", metavar="FILE",
                        help="a proxy's or controller's config: talk to the API it describes (default $TURNOUT_CONFIG)")
    sub.add_parser("status", parents=[client], help="show the routing state")
    sub.add_parser("proxies", parents=[client], help="the proxies following the controller")
    weights = sub.add_parser("weights", parents=[client], help="change a split's weights")
    weights.add_argument("action", choices=["set"])
    weights.add_argument("service")
    weights.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT")
    weights.add_argument("--rule", default="default", help="the split rule (default: default)")
    weights.add_argument("--if-match", type=int, metavar="GENERATION", help="fail if the state moved on")
    weights.add_argument("--dry-run", action="store_true", help="only show which sticky users would move")
    explain = sub.add_parser("explain", parents=[client], help="explain how a request would be routed")
    explain.add_argument("--host", default="")
    explain.add_argument("--path", default="/")
    explain.add_argument("--method", default="GET")
    explain.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                         help="a request header, as curl writes it ('Name: value') or Name=value")
    explain.add_argument("--cookie", action="append", default=[], metavar="NAME=VALUE")
    explain.add_argument("--query", default="")
    versions = sub.add_parser("versions", parents=[client], help="a version's endpoints")
    versions.add_argument("action", choices=["set", "drain"])
    versions.add_argument("service")
    versions.add_argument("version")
    versions.add_argument("endpoints", nargs="+", metavar="HOST:PORT")
    versions.add_argument("--draining", nargs="+", default=[], metavar="HOST:PORT",
                          help="set: endpoints that take no new requests (in flight finish)")
    sub.add_parser("generations", parents=[client], help="list recent generations")
    diff = sub.add_parser("diff", parents=[client], help="compare two generations")
    diff.add_argument("before", type=int)
    diff.add_argument("after", type=int)
    rollback = sub.add_parser("rollback", parents=[client], help="roll back to a generation")
    rollback.add_argument("generation", type=int)
    sub.add_parser("reload", parents=[client], help="re-read the config file and certificates")
    reset = sub.add_parser("reset", parents=[client], help="drop admin changes so the config file shows through")
    reset.add_argument("services", nargs="*", metavar="SERVICE")
    reset.add_argument("--flag", action="append", default=[], metavar="KEY", help="a flag to reset (repeatable)")
    reset.add_argument("--all", action="store_true", help="every service and flag")
    flags = sub.add_parser("flags", parents=[client], help="feature flags")
    flags.add_argument("action", choices=["list", "set", "enable", "disable", "kill"])
    flags.add_argument("key", nargs="?")
    flags.add_argument("rollout", nargs="*", metavar="VARIANT=PERCENT")
    flags.add_argument("--file", help="a JSON file with the whole flag (the config's flag syntax)")
    rollouts.add_parser(sub, client)
    rollouts.add_deploy_parser(sub, client)
    args = parser.parse_args(argv)
    if hasattr(args, "json"):
        args.json = args.json or args.json_first

    if args.command == "check":
        try:
            cfg = config_module.load(args.config)
            config_module.check_tokens(cfg)
        except ConfigError as exc:
            print(f"turnout: {exc}", file=sys.stderr)
            return 2
        print(f"{args.config}: ok ({len(cfg.services)} services)")
        return 0
    try:
        return _client_command(args)
    except ClientError as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 1


def _client_command(args: argparse.Namespace) -> int:
    api = AdminClient(*resolve(args.admin, args.token, args.token_file, args.controller, args.client_config))
    if args.command == "rollout":
        return rollouts.run(api, args)
    if args.command == "deploy":
        return rollouts.run_deploy(api, args)
    answer: Any
    if args.command == "status":
        answer = api.call("GET", "/v1/state")
        text = _status(answer)
    elif args.command == "proxies":
        answer = api.call("GET", "/v1/proxies")
        text = _proxies(answer)
    elif args.command == "weights":
        given = {}
        for item in args.weights:
            version, sep, value = item.partition("=")
            if not sep or not value.strip().isdigit():
                raise ClientError(f"weights are VERSION=INTEGER, got {item!r}")
            given[version] = int(value)
        path = f"/v1/services/{args.service}/rules/{args.rule}/weights" + ("?dry_run=true" if args.dry_run else "")
        answer = api.call("PUT", path, {"weights": given}, args.if_match)
        if args.dry_run:
            text = "\n".join(
                f"{split['service']}/{split['rule']}: {split.get('moved_percent', 0)}% of sticky users would move"
                + "".join(f"\n  {m['from']} -> {m['to']}: {m['buckets']} buckets ({m['percent']}%)"
                          for m in split.get("moves", []))
                for split in answer["splits"])
        else:
            text = f"generation {answer['generation']}: {answer['what']}"
    elif args.command == "explain":
        answer = api.call("POST", "/v1/explain", {
            "host": args.host, "path": args.path, "method": args.method, "query": args.query,
            "headers": dict(_header(h) for h in args.header), "cookies": dict(_pair(c) for c in args.cookie)})
        text = _explained(answer)
    elif args.command == "generations":
        answer = api.call("GET", "/v1/generations")
        text = "\n".join(f"{g['generation']:>5}  {g['at']}  {g['who']:<12}  {g['what']}" for g in answer["generations"])
    elif args.command == "diff":
        answer = api.call("GET", f"/v1/generations/{args.before}/diff/{args.after}")
        text = "\n".join(f"{c['path']}: {json.dumps(c['before'])} -> {json.dumps(c['after'])}"
                         for c in answer["changes"]) or "no differences"
    elif args.command == "flags":
        answer, text = _flags(api, args)
    elif args.command == "versions":
        answer, text = _versions(api, args)
    elif args.command == "reload":
        answer = api.call("POST", "/v1/reload")
        text = f"generation {answer['generation']}: {answer['what']}"
    elif args.command == "reset":
        if args.all == bool(args.services or args.flag):
            raise ClientError("reset needs SERVICE names and/or --flag KEY, or --all alone")
        answer = api.call("POST", "/v1/reset", {"all": True} if args.all
                          else {"services": args.services, "flags": args.flag})
        text = f"generation {answer['generation']}: {answer['what']}"
    else:
        answer = api.call("POST", "/v1/rollback", {"generation": args.generation})
        text = f"generation {answer['generation']}: {answer['what']}"
        if answer.get("differs_from_file"):
            text += "\ndiffers from the config file (turnout reset to drop): " + ", ".join(answer["differs_from_file"])
    print(json.dumps(answer, indent=2) if args.json else text)
    return 0


def _flag_line(key: str, flag: dict[str, Any]) -> str:
    state = "on " if flag["enabled"] else "off"
    rollout = " ".join(f"{v}={p:g}%" for v, p in flag.get("rollout", {}).items()) or "-"
    return f"flag {key:<20} {state} default={flag['default']:<10} rules={flag['rules']}  rollout {rollout}"


def _flags(api: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    if args.action == "list":
        answer = api.call("GET", "/v1/flags")
        return answer, "\n".join(_flag_line(key, flag) for key, flag in answer["flags"].items()) or "no flags"
    if not args.key:
        raise ClientError(f"flags {args.action} needs a flag key")
    if args.action == "set":
        if args.file:
            try:
                with open(args.file, encoding="utf-8") as handle:
                    flag = json.load(handle)
            except (OSError, ValueError) as exc:
                raise ClientError(f"cannot read {args.file}: {exc}") from None
            answer = api.call("PUT", f"/v1/flags/{args.key}", flag)
        elif args.rollout:
            shares: dict[str, float] = {}
            for item in args.rollout:
                variant, value = _pair(item)
                try:
                    shares[variant] = float(value.rstrip("%"))
                except ValueError:
                    raise ClientError(f"percentages are numbers, got {item!r}") from None
            answer = api.call("PUT", f"/v1/flags/{args.key}/rollout", {"rollout": shares})
        else:
            raise ClientError("flags set needs VARIANT=PERCENT pairs or --file")
    else:
        answer = api.call("POST", f"/v1/flags/{args.key}/{args.action}")
    return answer, f"generation {answer['generation']}: {answer['what']}"


def _versions(api: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    path = f"/v1/services/{args.service}/versions/{args.version}"
    if args.action == "set":
        answer = api.call("PUT", path, {"endpoints": args.endpoints, "draining": args.draining})
        return answer, f"generation {answer['generation']}: {answer['what']}"
    state = api.call("GET", "/v1/state")
    entry = state["services"].get(args.service, {}).get("versions", {}).get(args.version)
    if entry is None:
        raise ClientError(f"no version {args.version!r} of service {args.service!r}")
    health = entry.get("health", {})
    draining = [e for e, status in health.items() if status == "draining"]
    missing = [e for e in args.endpoints if e not in entry["endpoints"]]
    if missing:
        raise ClientError(f"{', '.join(missing)}: not an endpoint of {args.service}/{args.version} "
                          f"(endpoints: {', '.join(entry['endpoints']) or 'none'})")
    body = {"endpoints": entry["endpoints"], "draining": sorted({*draining, *args.endpoints})}
    answer = api.call("PUT", path, body, state["generation"])
    return answer, f"generation {answer['generation']}: draining {', '.join(args.endpoints)} of {args.service}/" \
                   f"{args.version}"


def _header(text: str) -> tuple[str, str]:
    """A header as curl writes it ('Name: value'), or Name=value."""
    colon, equals = text.find(":"), text.find("=")
    if colon > 0 and (equals == -1 or colon < equals):
        return text[:colon].strip(), text[colon + 1:].strip()
    return _pair(text)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from proxy import build

    try:
        installed = version("turnout")
    except PackageNotFoundError:
        installed = "(not installed)"
    return f"{installed} ({build.current().describe()})"


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ClientError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _explained(answer: dict[str, Any]) -> str:
    if answer.get("service") is None:
        return str(answer["why"])
    lines = [f"service {answer['service']}, generation {answer['generation']}"]
    for tried in answer["rules"]:
        verdict = "matched" if tried["matched"] else "no match"
        lines.append(f"  rule {tried['rule']}: {verdict}")
        for check in tried["checks"]:
            mark = "ok " if check["ok"] else "no "
            lines.append(f"    {mark} {check['on']} {check['name']} {json.dumps(check['condition'])}"
                         f" (got {json.dumps(check['value'])})")
    lines.append(answer["why"])
    if answer.get("version"):
        lines.append(f"-> version {answer['version']}, endpoint {answer.get('next_endpoint')}")
    return "\n".join(lines)


def _proxies(answer: dict[str, Any]) -> str:
    lines = [f"generation {answer['generation']}",
             f"{'PROXY':<20} {'ADDRESS':<22} {'GEN':>5} {'LAG':>4}  {'LIVE':<5} {'SEEN':>6}  REFUSED"]
    for proxy in answer["proxies"]:
        refused = proxy.get("refused")
        lines.append(f"{proxy['proxy']:<20} {proxy['address']:<22} {proxy['generation']:>5} {proxy['lag']:>4}  "
                     f"{'yes' if proxy['live'] else 'no':<5} {proxy['last_seen']:>5.1f}s  "
                     + (f"{refused['generation']}: {refused['reason']}" if refused else "-"))
    return "\n".join(lines) if answer["proxies"] else lines[0] + "\nno proxies follow this controller yet"


def _status(state: dict[str, Any]) -> str:
    if "proxies" in state:  # a controller
        live = [p for p in state["proxies"] if p["live"]]
        behind = [f"{p['proxy']} at {p['generation']}" for p in live if p["generation"] != state["generation"]]
        lines = [f"generation {state['generation']}, {len(live)} live prox{'y' if len(live) == 1 else 'ies'}"
                 + (f" ({', '.join(behind)})" if behind else "")]
    else:
        workers = state["workers"]
        behind = [f"worker {w['pid']} at {w['generation']}" for w in workers if w["generation"] != state["generation"]]
        lines = [f"generation {state['generation']}, {len(workers)} worker{'' if len(workers) == 1 else 's'}"
                 + (f" ({', '.join(behind)})" if behind else "")]
    for name, service in state["services"].items():
        lines.append(f"\nservice {name}  hosts {' '.join(service['hosts'])}  path {service['path_prefix']}")
        if "overridden" in service:
            lines.append(_overridden(service["overridden"]))
        for version, entry in service["versions"].items():
            health = entry.get("health", {})
            draining = [e for e, status in health.items() if status == "draining"]
            serving = [e + ("" if health.get(e, "up") == "up" else f" ({health[e]})") for e in entry["endpoints"]
                       if e not in draining]
            lines.append(f"  version {version:<10} {' '.join(serving) or '(no endpoints)'}"
                         + (f"  draining {' '.join(draining)}" if draining else ""))
        for rule in service["rules"]:
            match = json.dumps(rule["match"], separators=(",", ":")) if "match" in rule else "(default)"
            if "version" in rule:
                target = f"-> {rule['version']}"
            else:
                split = " ".join(f"{v}={w}" for v, w in rule["split"].items())
                owned = " ".join(f"{v}:{n}" for v, n in rule["buckets"].items())
                target = f"split {split}  sticky {json.dumps(rule['sticky'])}  buckets {owned}"
            lines.append(f"  rule {rule['name']:<14} {match:<40} {target}")
    if state.get("flags"):
        lines.append("")
        lines.extend(_flag_line(key, flag) for key, flag in state["flags"].items())
    flagged = {where: entry for where, entry in state.get("overridden", {}).items()
               if not where.startswith("services.") or where.removeprefix("services.") not in state["services"]}
    if flagged:
        lines.append("")
        lines.extend(f"{where}: {_overridden(entry).strip()}" for where, entry in flagged.items())
    return "\n".join(lines)


def _overridden(entry: dict[str, Any]) -> str:
    return (f"  admin changes since generation {entry['since']} override the config file: "
            f"{', '.join(entry['parts'])} (turnout reset drops them)")


if __name__ == "__main__":
    sys.exit(main())
