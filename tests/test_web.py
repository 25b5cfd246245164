"""TLS and basic auth from an exporter-toolkit web config, re-read on change; log redaction."""

import io
import json
import os
import ssl
import subprocess

import bcrypt
import httpx
import pytest
import structlog

from collector import logs
from collector.app import SimulatorService
from collector.errors import ConfigError
from collector.llamacloud.transport import LeanTransport
from collector.webconfig import WebConfig
from tests.helpers import collector_for, run_async


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
                   check=True, capture_output=True)
    return folder


def test_tls_and_basic_auth_and_reload(tmp_path, certificate):
    config = tmp_path / "web.yml"
    config.write_text(f"tls_server_config:\n  cert_file: {certificate / 'cert.pem'}\n"
                      f"  key_file: {certificate / 'key.pem'}\nbasic_auth_users:\n  prom: '{hashed('s3cret')}'\n")

    async def scenario():
        sim = SimulatorService(sessions=2, runs=1, rate=0)
        await sim.start()
        collector = collector_for(sim, web_config=str(config))
        await collector.start(schedule=False)
        url = f"https://127.0.0.1:{collector.port}/metrics"
        verify = ssl.create_default_context(cafile=str(certificate / "cert.pem"))
        try:
            async with httpx.AsyncClient(verify=verify) as http:
                assert (await http.get(url)).status_code == 401
                assert (await http.get(url, auth=("prom", "wrong"))).status_code == 401
                assert (await http.get(url, auth=("prom", "s3cret"))).status_code == 200
                config.write_text(config.read_text().replace("prom:", "other:"))
                os.utime(config, (1, 1))  # a different mtime, even within the same second
                assert (await http.get(url, auth=("prom", "s3cret"))).status_code == 401
                assert (await http.get(url, auth=("other", "s3cret"))).status_code == 200
            lean = LeanTransport(ssl_context=verify)
            async with httpx.AsyncClient(transport=lean) as http:
                assert (await http.get(url, auth=("other", "s3cret"))).status_code == 200
            async with httpx.AsyncClient() as plain:
                with pytest.raises(httpx.TransportError):
                    await plain.get(url.replace("https", "http"))
        finally:
            await collector.stop()
            await sim.stop()
    run_async(scenario())


@pytest.mark.parametrize("text,fragment", [
    ("nonsense: 1\n", "unknown key 'nonsense'"),
    ("basic_auth_users:\n  a: plain\n", "must be a bcrypt hash"),
    ("tls_server_config:\n  cert_file: x.pem\n", "needs both cert_file and key_file"),
    ("tls_server_config:\n  cert_file: x.pem\n  key_file: y.pem\n", "cannot load TLS"),
    (": : :\n", "not valid YAML"),
])
def test_bad_web_config_is_a_config_error(tmp_path, text, fragment):
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        WebConfig(path)


def test_logs_redact_the_key_everywhere():
    stream = io.StringIO()
    logs.configure("debug", "json", ["llx-topsecret"], stream=stream)
    log = structlog.get_logger("t")
    log.info("calling", url="https://x/?k=llx-topsecret", headers={"Authorization": "Bearer abc"},
             nested=["llx-topsecret"])
    try:
        raise RuntimeError("failed with llx-topsecret")
    except RuntimeError:
        log.exception("boom")
    out = stream.getvalue()
    assert "llx-topsecret" not in out and "Bearer abc" not in out
    first = json.loads(out.splitlines()[0])
    assert first["url"] == "https://x/?k=[REDACTED]" and first["headers"]["Authorization"] == "[REDACTED]"


def test_stdlib_logging_goes_through_the_same_redaction():
    import logging

    stream = io.StringIO()
    logs.configure("info", "json", ["llx-topsecret"], stream=stream)
    logging.getLogger("apscheduler.executors").warning("job raised: key llx-topsecret")
    try:
        raise ValueError("llx-topsecret")
    except ValueError:
        logging.getLogger("asyncio").error("task failed", exc_info=True)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "job raised: key [REDACTED]" and lines[0]["level"] == "warning"
    assert "llx-topsecret" not in stream.getvalue() and "ValueError" in lines[1]["event"]
