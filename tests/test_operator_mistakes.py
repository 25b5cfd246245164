"""Every operator mistake is one line and exit 2, naming the setting, never a secret (issue "Every operator
mistake is one line"). Each case runs through the real command line."""

from __future__ import annotations

import pytest

from collector.cli import main
from collector.webconfig import parse_web_config
from tests.test_settings import alias_bomb, at_most

pytestmark = pytest.mark.tier("unit")

KEY = {"LLAMA_CLOUD_API_KEY": "llx-test-key-0123456789"}


def run(capsys, argv, env):
    code = main(argv, {**KEY, **env})
    err = capsys.readouterr().err
    return code, err


def config(tmp_path, content: bytes | str) -> str:
    path = tmp_path / "config.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


CASES = {
    "yaml nested 100k deep": (b"interval: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nests deeper"),
    "an integer of 5,000 digits": (b"interval: " + b"9" * 5000 + b"\n", "too large to read"),
    "non-string keys beside an unknown key": (b"1: a\nintervall: 5\n", "setting names must be strings"),
    "a Latin-1 file": ("title: caf\xe9\n".encode("latin-1"), "is not UTF-8"),
    "interval .inf": (b"interval: .inf\n", "interval (--interval, COLLECTOR_INTERVAL)"),
    "interval 1e300": (b"interval: 1e300\n", "interval (--interval, COLLECTOR_INTERVAL)"),
    "interval under a second": (b"interval: 0.001\n", "greater than or equal to 1"),
    "duplicate keys": (b"interval: 5\ninterval: 10\n", "duplicate key 'interval'"),
    "a NaN bucket bound": (b"buckets:\n  duration: [1, .nan, 3]\n", "must be finite"),
    "an infinite bucket bound": (b"buckets:\n  duration: [1, 2, .inf]\n", "must be finite"),
    "a file over 1 MiB": (b"# " + b"x" * (2 << 20) + b"\n", "is over 1048576 bytes"),
    "aliases nested 9 deep under a known key": (alias_bomb("buckets").encode(), "YAML aliases are not accepted"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path, capsys, name):
    content, fragment = CASES[name]
    with at_most(60):  # generous: a regression fails instead of running for minutes
        code, err = run(capsys, ["check", "--config", config(tmp_path, content)], {})
    assert code == 2 and err.count("\n") == 1 and err.startswith("llamacloud-collector: error:"), err[:300]
    assert fragment in err and "Traceback" not in err


def nested_aliases(head: str) -> bytes:
    """Nine anchors, each a list of nine aliases of the one before, under ``head``."""
    lines = [f"    - &a [{', '.join(['x'] * 9)}]"]
    lines += [f"    - &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
    return (head + "\n" + "\n".join(lines) + "\n").encode()


WEB_CASES = {
    "aliases nested 9 deep under cipher_suites": (
        nested_aliases("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites:"),
        "tls_server_config.cipher_suites.0: Input should be a valid string",
    ),
    "aliases nested 9 deep under a user": (
        nested_aliases("basic_auth_users:\n  prom:"),
        "basic_auth_users.prom: Input should be a valid string",
    ),
    "yaml nested 100k deep": (b"basic_auth_users: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "too deeply nested"),
    "a file over 1 MiB": (b"# " + b"x" * (2 << 20) + b"\n", "is over 1048576 bytes"),
}


@pytest.mark.parametrize("name", list(WEB_CASES))
def test_a_bad_web_config_is_one_line_and_exit_2(tmp_path, capsys, name):
    """The web config accepts YAML aliases, as Go's exporter-toolkit does; its schema is flat, so nothing
    walks what they expand to, and a bomb costs what its bytes do."""
    content, fragment = WEB_CASES[name]
    path = tmp_path / "web.yml"
    path.write_bytes(content)
    with at_most(60):
        code, err = run(capsys, ["check", "--web-config", str(path)], {})
    assert code == 2 and err.count("\n") == 1 and err.startswith("llamacloud-collector: error: web_config:"), err[:300]
    assert fragment in err and "Traceback" not in err


def test_an_alias_in_a_web_config_is_read_as_go_reads_it(tmp_path):
    hashed = "$2b$04$" + "a" * 53
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prom: &h '{hashed}'\n  grafana: *h\n")
    assert parse_web_config(path).basic_auth_users == {"prom": hashed, "grafana": hashed}


@pytest.mark.parametrize(
    "env,fragment,secret",
    [
        ({"HTTPS_PROXY": "http://user:S3cr#tPW@proxy.example:3128"}, "HTTPS_PROXY: not a valid proxy URL", "S3cr"),
        ({"HTTPS_PROXY": "socks5://user:S3cretPW@proxy.example:1080"}, "socks5:// proxies are not supported", "S3cretPW"),
        ({"LLAMA_CLOUD_BASE_URL": "https://user:SECRETPW@api.example"}, "holds credentials", "SECRETPW"),
        ({"LLAMA_CLOUD_BASE_URL": "https://api.example/\r\nX-Evil: 1"}, "control characters", "X-Evil"),
        ({"SSL_CERT_FILE": "/nonexistent/ca.pem"}, "SSL_CERT_FILE: cannot load CA certificates", None),
    ],
)
def test_a_bad_environment_is_one_line_and_exit_2_without_the_secret(tmp_path, capsys, env, fragment, secret):
    code, err = run(capsys, ["check"], env)
    assert code == 2 and err.count("\n") == 1 and fragment in err and "Traceback" not in err, err[:300]
    assert secret is None or secret not in err


def test_a_certificate_file_that_is_not_pem_is_refused(tmp_path, capsys):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    code, err = run(capsys, ["check"], {"SSL_CERT_FILE": str(bad)})
    assert code == 2 and "SSL_CERT_FILE" in err and err.count("\n") == 1


def test_plain_http_to_a_far_host_is_warned_about_once():
    from collector.app import plain_http_far

    assert plain_http_far("http://api.example.com") and plain_http_far("http://10.0.0.7:8080")
    assert not plain_http_far("http://127.0.0.1:8000") and not plain_http_far("http://localhost:1")
    assert not plain_http_far("http://[::1]:8000") and not plain_http_far("https://api.example.com")


def test_check_gives_up_by_its_deadline_whatever_retry_after_says(capsys):
    import asyncio
    import threading

    from aiohttp import web

    async def busy(_):
        return web.json_response({"detail": "slow down"}, status=429, headers={"Retry-After": "86400"})

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", busy)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        code, err = run(capsys, ["check", "--base-url", f"http://127.0.0.1:{port}"], {})
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())  # its listening socket, then the loop: none left to the GC
        loop.close()
    assert code == 1 and err.count("\n") == 1 and "HTTP 429" in err  # at once: a day's wait is past the deadline
