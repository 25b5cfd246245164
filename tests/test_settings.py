"""Settings precedence (flags > env > file > defaults) and one-line errors."""

import contextlib
import os
import signal
import subprocess
import sys

import pytest

from collector.cli import main
from collector.errors import ConfigError
from collector.settings import Settings, load_settings
from collector.wiring import arguments, wire

pytestmark = pytest.mark.tier("unit")


def test_defaults_follow_the_contract():
    s = load_settings({}, {})
    assert s.base_url == "https://api.cloud.llamaindex.ai"
    assert (s.interval, s.listen, s.max_concurrency, s.session_series_limit) == (60.0, "0.0.0.0:9742", 8, 500)
    assert (s.shard, s.total_shards, s.expose_titles, s.state_path) == (0, 1, False, None)
    assert s.discovery is True
    assert (s.connect_timeout, s.read_timeout, s.label_value_limit) == (5.0, 30.0, 50)
    assert s.buckets.tokens[0] == 1 and s.buckets.tokens[-1] == 67108864
    assert [r.type for r in s.error_rules] == [
        "timeout",
        "rate_limit",
        "context_length",
        "auth",
        "not_found",
        "tool_error",
        "internal",
    ]


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("interval: 10\nmax_concurrency: 3\nsession_series_limit: 7\nproject_id: from-file\n")
    env = {"COLLECTOR_CONFIG": str(config), "COLLECTOR_INTERVAL": "20", "COLLECTOR_MAX_CONCURRENCY": "4"}
    s = load_settings({"interval": 30.0}, env)
    assert s.interval == 30.0  # flag beats env and file
    assert s.max_concurrency == 4  # env beats file
    assert s.session_series_limit == 7  # file beats default
    assert s.project_id == ("from-file",)  # a file's one project, as before several
    assert s.listen == "0.0.0.0:9742"  # default


def test_env_lists_and_discovery_switch():
    s = load_settings({}, {"COLLECTOR_SESSION_IDS": "a, b,,c", "COLLECTOR_INDEX_IDS": "i1"})
    assert s.session_ids == ("a", "b", "c") and s.index_ids == ("i1",)
    assert s.discovery is False
    assert load_settings({}, {"COLLECTOR_SESSION_IDS": "a", "COLLECTOR_DISCOVER": "true"}).discovery is True


def test_rules_and_buckets_from_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("error_rules:\n  - {type: quota, pattern: 'quota|billing'}\nbuckets:\n  turns: [1, 5, 10]\n")
    s = load_settings({"config": str(config)}, {})
    assert [(r.type, r.pattern) for r in s.error_rules] == [("quota", "quota|billing")]
    assert s.buckets.turns == (1, 5, 10) and s.buckets.duration[0] == 0.1


def test_key_from_env_or_file(tmp_path):
    assert wire(load_settings({}, {"LLAMA_CLOUD_API_KEY": "llx-abc"})).key.read() == "llx-abc"
    keyfile = tmp_path / "key"
    keyfile.write_text("llx-file\n")
    assert wire(load_settings({"api_key_file": str(keyfile)}, {})).key.read() == "llx-file"
    assert wire(load_settings({}, {"COLLECTOR_API_KEY_FILE": str(keyfile)})).key.read() == "llx-file"


@pytest.mark.parametrize(
    "flags,env,config,fragment",
    [
        ({"interval": -1.0}, {}, None, "interval (--interval, COLLECTOR_INTERVAL): Input should be greater than or equal to 1"),
        ({}, {"COLLECTOR_LISTEN": "9742"}, None, "listen (--listen, COLLECTOR_LISTEN): must be host:port"),
        ({}, {"COLLECTOR_LISTEN": "host:99999"}, None, "listen"),
        ({"shard": 3, "total_shards": 3}, {}, None, "shard (--shard, COLLECTOR_SHARD) must be less than total_shards"),
        ({}, {"COLLECTOR_MAX_CONCURRENCY": "many"}, None, "max_concurrency (--max-concurrency"),
        ({}, {"LLAMA_CLOUD_BASE_URL": "ftp://x"}, None, "base_url"),
        ({}, {}, "interval: [1\n", "is not valid YAML at line"),
        ({}, {}, "intervall: 5\n", "unknown setting 'intervall'"),
        ({}, {}, "- a\n- b\n", "must hold a mapping"),
        ({}, {}, "api_key: llx-secret\n", "api_key is not accepted in a file"),
        ({}, {}, "error_rules:\n  - {type: x, pattern: '(unclosed'}\n", "error_rules.0.pattern: invalid regular"),
        ({}, {}, "buckets:\n  turns: [3, 2]\n", "strictly increasing"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path, flags, env, config, fragment):
    if config is not None:
        path = tmp_path / "c.yaml"
        path.write_text(config)
        flags = {**flags, "config": str(path)}
    with pytest.raises(ConfigError) as err:
        load_settings(flags, env)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)
    assert "llx-secret" not in str(err.value)


def alias_bomb(key: str) -> str:
    """About 400 bytes under a known key: nine anchors, each a list of nine aliases of the one before, so
    9**9 values to any walk of the expanded tree (issue 27, item 8: over 100 s of CPU in `check`)."""
    names = "abcdefghi"
    lines = [f"{key}:"]
    for i, name in enumerate(names):
        items = ["x"] * 9 if i == 0 else [f"*{names[i - 1]}"] * 9
        head = f"  {name}: " if key == "buckets" else "  - "
        lines.append(f"{head}&{name} [{', '.join(items)}]")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def at_most(seconds: float):
    """A generous bound, so that a regression fails instead of walking 9**9 values for many minutes:
    SIGALRM interrupts the Python loop in this (the main) thread."""

    def expired(*_):
        raise TimeoutError(f"still loading after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    "text",
    [
        "interval: &i 5\nread_timeout: *i\n",
        "defaults: &d {interval: 5}\n<<: *d\n",
        alias_bomb("buckets"),
        alias_bomb("error_rules"),
    ],
)
def test_yaml_aliases_in_the_settings_file_are_refused(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught, at_most(60):
        load_settings({"config": str(path)}, {})
    message = str(caught.value)
    assert message.startswith(f"config: {path}: YAML aliases are not accepted (*") and "\n" not in message


def test_an_anchor_that_no_alias_uses_is_harmless_and_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("buckets:\n  turns: &t [1, 2, 3]\n")
    assert load_settings({"config": str(path)}, {}).buckets.turns == (1, 2, 3)


def test_empty_shard_from_the_downward_api_is_an_error():
    with pytest.raises(ConfigError, match="needs Kubernetes 1.28"):
        load_settings({}, {"COLLECTOR_SHARD": "", "COLLECTOR_TOTAL_SHARDS": "3"})
    assert load_settings({}, {"COLLECTOR_SHARD": "2", "COLLECTOR_TOTAL_SHARDS": "3"}).shard == 2


def test_missing_or_unreadable_key(tmp_path):
    with pytest.raises(ConfigError, match="missing API key: set LLAMA_CLOUD_API_KEY"):
        wire(load_settings({}, {})).key.read()
    with pytest.raises(ConfigError, match=r"api_key_file \(--api-key-file, COLLECTOR_API_KEY_FILE\): cannot read"):
        wire(load_settings({"api_key_file": str(tmp_path / "nope")}, {})).key.read()


def test_an_explicit_key_file_wins_over_the_environment_and_must_be_readable(tmp_path):
    env = {"LLAMA_CLOUD_API_KEY": "llx-from-env"}
    key_file = tmp_path / "key"
    key_file.write_text("llx-from-file\n")
    assert wire(load_settings({"api_key_file": str(key_file)}, env)).key.read() == "llx-from-file"
    assert wire(load_settings({}, {**env, "COLLECTOR_API_KEY_FILE": str(key_file)})).key.read() == "llx-from-file"
    with pytest.raises(ConfigError, match="cannot read"):  # never a silent fall-back to the env key
        wire(load_settings({"api_key_file": str(tmp_path / "missing")}, env)).key.read()
    with pytest.raises(ConfigError, match="cannot read"):
        wire(load_settings({"api_key_file": str(tmp_path)}, env)).key.read()


@pytest.mark.parametrize("key", ["llx-a\r\nX-Injected: 1", "llx-a\nb", "llx-ключ", "llx a", "llx-\x00", "llx-\x7f"])
def test_a_key_that_cannot_go_in_a_header_is_a_bad_setting(tmp_path, key, capsys):
    with pytest.raises(ConfigError, match="cannot go in an HTTP header") as caught:
        wire(load_settings({}, {"LLAMA_CLOUD_API_KEY": key})).key.read()
    assert key.strip() not in str(caught.value)
    key_file = tmp_path / "key"
    key_file.write_bytes(key.encode("utf-8"))
    with pytest.raises(ConfigError, match="cannot go in an HTTP header"):
        wire(load_settings({"api_key_file": str(key_file)}, {})).key.read()
    assert main(["check"], {"LLAMA_CLOUD_API_KEY": key}) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and key.strip() not in err


def test_a_key_file_that_is_not_utf8_is_refused(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_bytes(b"llx-\xff\xfe")
    with pytest.raises(ConfigError, match="cannot go in an HTTP header"):
        wire(load_settings({"api_key_file": str(key_file)}, {})).key.read()


def test_state_path_must_be_a_regular_file_or_absent(tmp_path):
    (tmp_path / "real").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert load_settings({"state_path": str(tmp_path / "new.db")}, {}).state_path == tmp_path / "new.db"
    assert load_settings({"state_path": str(tmp_path / "real")}, {}).state_path == tmp_path / "real"
    for path, fragment in (
        (tmp_path, "is a directory"),
        ("/dev/null", "not a regular file"),
        (tmp_path / "link", "symbolic link"),
        (tmp_path / "no" / "x.db", "does not exist"),
    ):
        with pytest.raises(ConfigError, match=rf"state_path \(--state-path, COLLECTOR_STATE_PATH\): .*{fragment}"):
            load_settings({"state_path": str(path)}, {})
    assert os.path.isdir(tmp_path) and (tmp_path / "link").is_symlink()  # nothing was moved aside
    assert not list(tmp_path.glob("*corrupt*"))


@pytest.mark.parametrize(
    "argv,env,fragment",
    [
        (["run", "--interval", "-5"], {"LLAMA_CLOUD_API_KEY": "k"}, "interval"),
        (["--interval", "abc"], {"LLAMA_CLOUD_API_KEY": "k"}, "--interval"),
        (["run"], {}, "missing API key"),
        (["run", "--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        (["check", "--listen", "nowhere"], {"LLAMA_CLOUD_API_KEY": "k"}, "listen"),
    ],
)
def test_cli_exits_2_with_one_line(capsys, argv, env, fragment):
    assert main(argv, env) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llamacloud-collector: error:") and fragment in err


@pytest.mark.parametrize("case", ["shard", "aliases"])
@pytest.mark.tier("process")
def test_cli_process_bad_setting_no_traceback(tmp_path, case):
    bomb = tmp_path / "c.yaml"
    bomb.write_text(alias_bomb("error_rules"))
    args, fragment = {
        "shard": (["--shard", "2", "--total-shards", "2"], "shard"),
        "aliases": (["check", "--config", str(bomb)], f"{bomb}: YAML aliases are not accepted"),
    }[case]
    result = subprocess.run(
        [sys.executable, "-m", "collector", *args],  # a generous timeout: never a timing
        capture_output=True,
        text=True,
        timeout=60,
        env={"LLAMA_CLOUD_API_KEY": "llx-canary-123", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert fragment in result.stderr and "llx-canary-123" not in result.stderr


@pytest.mark.parametrize(
    "field,flag,env",
    [("session_ids", "--session-id", "COLLECTOR_SESSION_IDS"), ("index_ids", "--index-id", "COLLECTOR_INDEX_IDS")],
)
def test_a_bad_repeatable_value_names_the_real_flag(field, flag, env):
    with pytest.raises(ConfigError) as caught:
        load_settings({field: [["not", "a", "string"]]}, {})
    assert f"({flag}, {env})" in str(caught.value)


def test_names_users_bring_from_prometheus_exporters_are_accepted(tmp_path):
    from collector.cli import build_parser

    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {}\n")
    args = build_parser().parse_args(["run", "--web.config.file", str(web), "--log-level", "warn"])
    settings = load_settings({k: v for k, v in vars(args).items() if k != "command"}, {})
    assert settings.web_config == web and settings.log_level == "warning"
    assert load_settings({}, {"COLLECTOR_LOG_LEVEL": "WARN"}).log_level == "warning"


def test_chat_help_says_the_values_are_as_of_the_last_poll():
    from prometheus_client import CollectorRegistry, generate_latest

    from collector.aggregates import Aggregates
    from collector.metrics import SnapshotCollector
    from collector.state import CollectorState, PollStatus, one_project, take_snapshot
    from tests.fakes import BUCKETS

    state = CollectorState(Aggregates(BUCKETS, 5), synced=True)
    registry = CollectorRegistry()
    registry.register(
        SnapshotCollector(lambda: one_project(take_snapshot(state, PollStatus(), 10)), **arguments(wire(Settings()).exposition))
    )
    helps = [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("# HELP llamacloud_chat_") and "_session_" not in line
    ]
    assert helps and all(line.endswith("as of the last poll, not of this scrape.") for line in helps), helps
