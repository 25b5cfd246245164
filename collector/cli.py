"""Command line: ``run`` (default), ``demo``, ``simulate`` and ``check``.

Settings are built once here and passed down. A bad setting prints one line
and exits with status 2; SIGTERM and SIGINT stop cleanly with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import secrets
import signal
import sys
import types as types_
import typing
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import structlog

from collector import __version__, logs
from collector.app import CollectorService, make_client
from collector.build import REVISION
from collector.cadence import Deadline
from collector.errors import AuthError, CollectorError, ConfigError
from collector.llamacloud.client import LlamaCloudClient
from collector.memory import tune_allocator
from collector.selection import Found, in_shard, wanted
from collector.settings import CONFIG_ENV, OPTIONS, Settings, check_environment, load_settings, otlp_secrets
from collector.simulator.world import LAZY_FROM
from collector.webconfig import parse_web_config
from collector.wiring import arguments, wire

PROG = "llamacloud-collector"
COMMANDS = ("run", "demo", "simulate", "check")
DEMO_PROJECTS = 2
"""The demo's organization: two projects, both watched (``--all-projects``), as a platform team would."""
CHECK_SECONDS = 60.0
"""``check`` gives up after this long, whatever the API does."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _kind(name: str) -> dict[str, Any]:
    """argparse's part of a setting, from its type: a switch, a repeatable flag, a number or a string."""
    annotation = Settings.model_fields[name].annotation
    types = (
        [t for t in typing.get_args(annotation) if t is not type(None)]
        if isinstance(annotation, types_.UnionType) or typing.get_origin(annotation) is typing.Union
        else [annotation]
    )
    kind = types[0]
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(kind) is tuple:
        return {"action": "append"}
    if kind in (int, float):
        return {"type": kind}
    return {}


def add_setting(parser: argparse.ArgumentParser, name: str) -> None:
    """The flag of one ``Settings`` field, as its declaration says (help names the env var too)."""
    option = OPTIONS[name]
    if option.flag is not None:
        parser.add_argument(option.flag, *option.aliases, dest=name, help=f"{option.help} ({option.env})", **_kind(name))


def _collector_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help=f"YAML file with any setting ({CONFIG_ENV})")
    for name in OPTIONS:
        if name not in ("listen", "interval"):  # every command that serves has these two
            add_setting(parser, name)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Prometheus metrics for LlamaCloud chat.", argument_default=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__} (revision {REVISION})")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    run = sub.add_parser("run", help="run the collector (default)", argument_default=argparse.SUPPRESS)
    check = sub.add_parser("check", help="call the API once and print what would be watched", argument_default=argparse.SUPPRESS)
    demo = sub.add_parser(
        "demo", help="simulator with live traffic plus the collector, no key needed", argument_default=argparse.SUPPRESS
    )
    simulate = sub.add_parser("simulate", help="the fake LlamaCloud API alone")
    for p in (run, check, demo):
        add_setting(p, "listen")
        add_setting(p, "interval")
    for p in (run, check):
        _collector_flags(p)
    demo.add_argument("--seed", type=int)
    demo.add_argument("--sessions", type=int)
    demo.add_argument("--rate", type=float)
    add_setting(demo, "log_format")
    add_setting(demo, "semconv")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8000)
    simulate.add_argument("--sessions", type=int, default=40)
    simulate.add_argument("--runs", type=int, default=3, help="runs per session at start")
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--projects", type=int, default=1, help="projects of the organization, --sessions each")
    simulate.add_argument("--rate", type=float, default=2.0, help="live traffic: runs per second")
    simulate.add_argument(
        "--latency-ms", dest="latency_ms", type=float, default=0.0, help="delay added to every API answer, as a distant API has"
    )
    simulate.add_argument(
        "--lazy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the initial sessions' histories as seeds, generated when asked for: a million sessions in a few "
        f"GB (default: from {LAZY_FROM:,} sessions)",
    )
    return parser


def _flags(args: argparse.Namespace, exclude: Sequence[str] = ()) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k != "command" and k not in exclude}


async def _until_signalled(*services: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    log = structlog.get_logger("collector")
    loop.set_exception_handler(
        lambda _, context: log.error(
            "unhandled error in the event loop", error=repr(context.get("exception")), message=context.get("message")
        )
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloadable = [s for s in services if hasattr(s, "reload")]

    def reload() -> None:
        for service in reloadable:
            service.reload()

    loop.add_signal_handler(signal.SIGHUP, reload)

    def ignored(sig: signal.Signals) -> None:
        log.info("signal ignored", signal=sig.name)

    for sig in (signal.SIGUSR1, signal.SIGUSR2):  # commonly sent, never meant to kill: ignored, said once
        loop.add_signal_handler(sig, ignored, sig)
    try:
        for service in services:
            await service.start()
        await stop.wait()
    finally:
        for service in reversed(services):
            await service.stop()


async def _run(settings: Settings, key: str) -> int:
    await _until_signalled(CollectorService(settings, key))
    return 0


async def _demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from collector.simulator.service import SimulatorService  # a collector that only runs never loads it

    key = secrets.token_urlsafe(24)
    sim = SimulatorService(
        sessions=getattr(args, "sessions", 40),
        seed=getattr(args, "seed", 1),
        rate=getattr(args, "rate", 2.0),
        api_key=key,
        projects=DEMO_PROJECTS,
    )
    await sim.start()
    flags = {
        "interval": 5.0,
        "all_projects": True,
        "semconv": "both",  # the demo shows every family: ours, and the GenAI names of the same counts
        **_flags(args, ("seed", "sessions", "rate")),
        "base_url": sim.base_url,
    }
    settings = load_settings(flags, {k: v for k, v in environ.items() if not k.startswith("LLAMA_CLOUD_")})
    collector = CollectorService(settings, key)
    try:
        await _until_signalled(collector)
    finally:
        await sim.stop()
    return 0


async def _simulate(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from collector.simulator.service import SimulatorService

    sim = SimulatorService(
        sessions=args.sessions,
        runs=args.runs,
        seed=args.seed,
        rate=args.rate,
        api_key=environ.get("LLAMA_CLOUD_API_KEY") or "simulator",
        address=f"{args.host}:{args.port}",
        latency=max(0.0, args.latency_ms) / 1000.0,
        projects=max(1, args.projects),
        lazy=args.lazy,
    )
    await _until_signalled(sim)
    return 0


async def _discover(client: LlamaCloudClient, settings: Settings) -> tuple[Sequence[Found], list[str]]:
    """What ``check`` would watch, and what the listing got over on its way: the whole listing (one pass of the
    poller's listing loop, read to its end: it ends and fails as a poller's pass does), or each configured ID's
    summary (this shard's)."""
    config = wire(settings).poll
    deadline = Deadline.after(CHECK_SECONDS)  # one for the whole check, whatever the API answers
    if settings.discovery:
        listing = await client.list_sessions(deadline, functools.partial(wanted, config))
        return listing.sessions, listing.problems
    found: list[Found] = []
    for session_id in settings.session_ids:
        if in_shard(config, session_id):
            summary = await client.summary(session_id, deadline)
            if wanted(config, summary):
                found.append(summary)
    return found, []


async def _projects(client: LlamaCloudClient, settings: Settings) -> list[tuple[str | None, str]]:
    """The projects ``run`` would watch, as (ID, name): every one of the organization (``--all-projects``), the
    configured ones, or the key's default (None: named by the listing when it answers)."""
    if not settings.all_projects:
        return [(p, "") for p in settings.project_id] or [(None, "")]
    listing = await client.list_projects(Deadline.after(CHECK_SECONDS))
    return [(p.id, p.name) for p in listing.projects]


async def _check(settings: Settings, key: str) -> int:
    base = make_client(wire(settings).client, key)
    found: list[tuple[str | None, str, Sequence[Found], list[str]]] = []
    try:
        for project, name in await _projects(base, settings):
            client = base if project is None else base.for_project(project)
            try:
                found.append((project, name, *await _discover(client, settings)))
            except CollectorError as exc:
                if project is None or isinstance(exc, AuthError):
                    raise
                raise CollectorError(f"project {project[:80]}: {exc}") from None
    except AuthError as exc:
        raise CollectorError(
            f"check failed: HTTP {exc.status} from {settings.base_url}: the API key was "
            "refused; fix LLAMA_CLOUD_API_KEY (or the file in COLLECTOR_API_KEY_FILE)"
        ) from None
    except CollectorError as exc:
        raise CollectorError(f"check failed: {settings.base_url}: {exc}") from None
    finally:
        await base.aclose()
    mode = "discovery" if settings.discovery else f"{len(settings.session_ids)} configured session IDs"
    total = sum(len(sessions) for _, _, sessions, _ in found)
    where = "" if len(found) == 1 else f" in {len(found)} projects"
    print(
        f"OK: {settings.base_url} answered; {total} sessions would be watched{where} ({mode}, "
        f"shard {settings.shard} of {settings.total_shards})"
    )
    for project, name, sessions, problems in found:
        if len(found) > 1 or project is not None:
            print(f"project {name or project} ({project}): {len(sessions)} sessions")
        for problem in problems:  # in the poller's words: its cycle would be partial for the same reason
            print(f"  warning: {problem}")
        for summary in sorted(sessions, key=lambda s: s.last_updated_at, reverse=True)[:50]:
            print(f"  {summary.session_id}  updated {summary.last_updated_at}  indexes {','.join(summary.index_ids) or '-'}")
        if len(sessions) > 50:
            print(f"  ... and {len(sessions) - 50} more")
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    tune_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "run")
    try:
        args = build_parser().parse_args(argv)
        if args.command == "simulate":
            logs.configure("info", None)
            return asyncio.run(_simulate(args, environ))
        if args.command == "demo":
            logs.configure("info", getattr(args, "log_format", None))
            return asyncio.run(_demo(args, environ))
        settings = load_settings(_flags(args), environ)
        wiring = wire(settings)
        key = wiring.key.read()
        secrets = check_environment(environ) + otlp_secrets(environ)
        if wiring.endpoints.web_config is not None:  # its password hashes are credentials too: never in a log line
            secrets += list(parse_web_config(wiring.endpoints.web_config).basic_auth_users.values())
        logs.configure(**arguments(wiring.logs), secrets=[key, *secrets])
        if args.command == "check":
            return asyncio.run(_check(settings, key))
        return asyncio.run(_run(settings, key))
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except CollectorError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception:  # noqa: BLE001 - a bug: one redacted log line with the traceback, not a raw dump
        structlog.get_logger("collector").exception("fatal error")
        return 1
