"""TLS at the edge and to upstreams, over real sockets, with certificates made by trustme per test."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from aiohttp.test_utils import TestServer

from proxy import config as config_module
from proxy.worker import Worker

from ..conftest import Upstream
from ..helpers import parse_response


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def write_pair(cert: trustme.LeafCert, directory: Path, stem: str) -> dict[str, str]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    return {"cert": str(cert_path), "key": str(key_path)}


def client_context(ca: trustme.CA, check_hostname: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = check_hostname
    return context


async def tls_upstream(name: str, server_context: ssl.SSLContext) -> tuple[Upstream, TestServer]:
    upstream = Upstream(name)
    server = TestServer(upstream.app(), host="127.0.0.1")
    await server.start_server(ssl=server_context)
    upstream.server = server
    return upstream, server


def edge_config(listeners: list[dict[str, Any]], services: dict[str, Any]) -> str:
    return yaml.safe_dump({"listeners": listeners, "services": services})


async def start(text: str, tmp_path: Path) -> Worker:
    path = tmp_path / "turnout.yaml"
    path.write_text(text)
    worker = Worker(config_module.load(path))
    await worker.start()
    return worker


async def peer_names(port: int, server_name: str | None, context: ssl.SSLContext) -> list[str]:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_name)
    cert = writer.get_extra_info("peercert")
    writer.close()
    return [value for kind, value in cert["subjectAltName"] if kind == "DNS"]


async def test_https_to_plain_and_to_tls_upstreams(upstreams, ca: trustme.CA, tmp_path: Path) -> None:
    plain = await upstreams("plain")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    secure, server = await tls_upstream("secure", server_context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    worker = await start(edge_config(
        [{"name": "https", "listen": "127.0.0.1:0", "tls": {"certificates": [
            write_pair(ca.issue_cert("shop.test"), tmp_path, "shop")]}}],
        {"s": {"versions": {
            "plain": [plain.address],
            "secure": {"endpoints": [f"https://127.0.0.1:{secure.port}"], "tls": {"ca": "ca.pem"}},
        }, "rules": [
            {"name": "to-secure", "match": {"headers": {"x-secure": "1"}}, "version": "secure"},
            {"name": "default", "version": "plain"},
        ]}},
    ), tmp_path)
    url = f"https://127.0.0.1:{worker.port}/hello"
    async with aiohttp.ClientSession() as session:
        for headers, expected in (({}, "plain"), ({"X-Secure": "1"}, "secure"), ({"X-Secure": "1"}, "secure")):
            async with session.get(url, ssl=client_context(ca), server_hostname="shop.test",
                                   headers={"Host": "shop.test", **headers}) as response:
                assert response.status == 200
                echoed = await response.json()
                assert echoed["version"] == expected
                assert ["X-Forwarded-Proto", "https"] in echoed["headers"]
    # The TLS upstream's connection was pooled and reused like a plain one.
    assert len({entry["peer_port"] for entry in secure.seen}) == 1
    await worker.close()
    await server.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_sni_picks_the_certificate_and_falls_back_to_the_default(upstreams, ca, tmp_path) -> None:
    up = await upstreams("v1")
    worker = await start(edge_config(
        [{"name": "https", "listen": "127.0.0.1:0", "tls": {"certificates": [
            write_pair(ca.issue_cert("default.test"), tmp_path, "default"),
            write_pair(ca.issue_cert("shop.test"), tmp_path, "shop"),
            write_pair(ca.issue_cert("*.api.test"), tmp_path, "api"),
            {**write_pair(ca.issue_cert("other.test"), tmp_path, "named"), "names": ["named.test"]},
        ]}}],
        {"s": {"versions": {"v1": [up.address]}, "version": "v1"}},
    ), tmp_path)
    loose = client_context(ca, check_hostname=False)
    assert await peer_names(worker.port, "shop.test", client_context(ca)) == ["shop.test"]
    assert await peer_names(worker.port, "eu.api.test", client_context(ca)) == ["*.api.test"]
    assert await peer_names(worker.port, "named.test", loose) == ["other.test"]  # names from config win
    assert await peer_names(worker.port, "unknown.test", loose) == ["default.test"]
    assert await peer_names(worker.port, None, loose) == ["default.test"]
    # Modern defaults only: TLS 1.1 is refused.
    old = client_context(ca, check_hostname=False)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await peer_names(worker.port, "shop.test", old)
    await worker.close()


async def test_plain_listener_redirects_to_https(upstreams, ca, tmp_path) -> None:
    up = await upstreams("v1")
    worker = await start(edge_config(
        [{"name": "http", "listen": "127.0.0.1:0", "redirect_https": 8443},
         {"name": "http443", "listen": "127.0.0.1:0", "redirect_https": 443}],
        {"s": {"versions": {"v1": [up.address]}, "version": "v1"}},
    ), tmp_path)
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{worker.ports['http']}/a/b?c=1&d=%20"
        async with session.post(url, data=b"x", headers={"Host": "Shop.Test:8080"},
                                allow_redirects=False) as response:
            assert response.status == 308
            assert response.headers["Location"] == "https://shop.test:8443/a/b?c=1&d=%20"
        url = f"http://127.0.0.1:{worker.ports['http443']}/"
        async with session.get(url, headers={"Host": "shop.test"}, allow_redirects=False) as response:
            assert response.headers["Location"] == "https://shop.test/"
    assert up.seen == []
    await worker.close()


@pytest.mark.parametrize("problem", ["untrusted", "wrong-name"])
async def test_upstream_certificate_failures_are_502_with_a_reason(upstreams, ca, tmp_path, caplog,
                                                                   problem: str) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issuer = trustme.CA() if problem == "untrusted" else ca
    issuer.issue_cert("elsewhere.test" if problem == "wrong-name" else "127.0.0.1").configure_cert(server_context)
    upstream, server = await tls_upstream("secure", server_context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    worker = await start(edge_config(
        [{"name": "http", "listen": "127.0.0.1:0"}],
        {"s": {"versions": {"v1": {"endpoints": [f"https://127.0.0.1:{upstream.port}"],
                                   "tls": {"ca": str(tmp_path / "ca.pem")}}}, "version": "v1"}},
    ), tmp_path)
    with caplog.at_level(logging.WARNING, logger="turnout"):
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{worker.port}/") as response:
            assert response.status == 502
    assert upstream.seen == []
    reasons = " ".join(record.getMessage() for record in caplog.records)
    expected = "certificate verify failed" if problem == "untrusted" else "IP address mismatch"
    assert expected in reasons and f"127.0.0.1:{upstream.port}" in reasons
    await worker.close()
    await server.close()


async def test_mtls_upstream_requires_the_client_certificate(ca, tmp_path) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    upstream, server = await tls_upstream("mtls", server_context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = write_pair(ca.issue_cert("turnout.client"), tmp_path, "client")
    endpoint = f"https://127.0.0.1:{upstream.port}"
    worker = await start(edge_config(
        [{"name": "http", "listen": "127.0.0.1:0"}],
        {"s": {"versions": {
            "with": {"endpoints": [endpoint], "tls": {"ca": "ca.pem", **client}},
            "without": {"endpoints": [endpoint], "tls": {"ca": "ca.pem"}},
        }, "rules": [
            {"name": "anon", "match": {"headers": {"x-anon": "1"}}, "version": "without"},
            {"name": "default", "version": "with"},
        ]}},
    ), tmp_path)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{worker.port}/") as response:
            assert response.status == 200
        async with session.get(f"http://127.0.0.1:{worker.port}/", headers={"X-Anon": "1"}) as response:
            assert response.status == 502
    assert len(upstream.seen) == 1
    await worker.close()
    await server.close()


async def https_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, headers, _ = parse_response(head)
    await reader.readexactly(int(headers["content-length"]))
    return status


async def test_certificates_reload_on_sighup_without_dropping_connections(upstreams, ca, tmp_path,
                                                                          spawn_proxy) -> None:
    up = await upstreams("v1")
    pair = write_pair(ca.issue_cert("shop.test", "old.test"), tmp_path, "edge")
    text = edge_config(
        [{"name": "https", "listen": "127.0.0.1:0", "tls": {"certificates": [pair]}}],
        {"s": {"versions": {"v1": [up.address]}, "version": "v1"}},
    )
    process = spawn_proxy(text)
    context = client_context(ca)
    reader, writer = await asyncio.open_connection("127.0.0.1", process.port, ssl=context,
                                                   server_hostname="shop.test")
    assert await https_get(reader, writer, "/before") == 200

    # A new certificate for the same name: new handshakes get it, the open connection carries on.
    write_pair(ca.issue_cert("shop.test", "new.test"), tmp_path, "edge")
    process.signal(signal.SIGHUP)
    for _ in range(100):
        if "generation 2" in process.output():
            break
        await asyncio.sleep(0.05)
    assert "old.test" not in await peer_names(process.port, "shop.test", context)
    assert await https_get(reader, writer, "/during") == 200

    # A key that does not match: refused, and the certificate in force keeps being served.
    Path(pair["key"]).write_bytes(ca.issue_cert("x.test").private_key_pem.bytes())
    process.signal(signal.SIGHUP)
    for _ in range(100):
        if "reload refused" in process.output():
            break
        await asyncio.sleep(0.05)
    assert "listeners[0].tls.certificates[0].key" in process.output()
    assert "does not match the certificate" in process.output()
    assert "new.test" in await peer_names(process.port, "shop.test", context)
    assert await https_get(reader, writer, "/after") == 200
    writer.close()
    assert [entry["path_qs"] for entry in up.seen] == ["/before", "/during", "/after"]


def test_bad_tls_config_refuses_to_start_with_the_field(ca, tmp_path) -> None:
    pair = write_pair(ca.issue_cert("shop.test"), tmp_path, "edge")
    other = write_pair(ca.issue_cert("other.test"), tmp_path, "other")
    cases = {
        "missing": ({**pair, "cert": "nope.pem"}, "listeners[0].tls.certificates[0].cert: cannot read"),
        "mismatch": ({**pair, "key": other["key"]}, "listeners[0].tls.certificates[0].key:"),
        "not-pem": ({**pair, "cert": pair["key"]}, "listeners[0].tls.certificates[0]"),
    }
    for name, (certificate, message) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(edge_config(
            [{"name": "https", "listen": "127.0.0.1:0", "tls": {"certificates": [certificate]}}],
            {"s": {"versions": {"v1": ["127.0.0.1:1"]}, "version": "v1"}},
        ))
        result = subprocess.run([sys.executable, "-m", "proxy", "--config", str(path)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, name
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (name, lines)


async def test_upstream_server_name_can_be_overridden(ca, tmp_path) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.internal").configure_cert(server_context)
    upstream, server = await tls_upstream("named", server_context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    worker = await start(edge_config(
        [{"name": "http", "listen": "127.0.0.1:0"}],
        {"s": {"versions": {"v1": {"endpoints": [f"https://127.0.0.1:{upstream.port}"],
                                   "tls": {"ca": "ca.pem", "server_name": "api.internal"}}}, "version": "v1"}},
    ), tmp_path)
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{worker.port}/") as response:
        assert response.status == 200  # SNI and the hostname check used api.internal, not 127.0.0.1
    await worker.close()
    await server.close()
