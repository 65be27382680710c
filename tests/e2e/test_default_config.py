"""The default config does what the README says: a 90/10 sticky split of the demo service and the
``new-checkout`` flag injected for 20 % of users, through the demo apps Turnout starts itself."""

from __future__ import annotations

import asyncio
import re
import socket
from collections import Counter
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_default_config_splits_and_injects_the_demo_flag(spawn_proxy) -> None:
    text = (ROOT / "config" / "turnout.yaml").read_text()
    for fixed in ("8080", "9901"):  # the README's ports stay free for `make run`
        text = text.replace(f"127.0.0.1:{fixed}", "127.0.0.1:0")
    for fixed in ("9001", "9002"):
        text = text.replace(f"127.0.0.1:{fixed}", f"127.0.0.1:{free_port()}")
    process = spawn_proxy(text)
    seen: Counter[tuple[str, str]] = Counter()
    async with aiohttp.ClientSession() as session:
        for _ in range(100):  # the demo apps may still be binding their ports
            async with session.get(f"http://127.0.0.1:{process.port}/") as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.05)
        for i in range(1000):
            async with session.get(f"http://127.0.0.1:{process.port}/", headers={"X-User-Id": f"u{i}"}) as response:
                body = await response.text()
            found = re.fullmatch(r"hello from (v\d) \(GET /\) \[new-checkout=(on|off)\]\n", body)
            assert found is not None, body
            seen[(found.group(1), found.group(2))] += 1
    versions = Counter(version for version, _ in seen.elements())
    flags = Counter(flag for _, flag in seen.elements())
    assert abs(versions["v2"] - 100) < 5 * (1000 * 0.1 * 0.9) ** 0.5
    assert abs(flags["on"] - 200) < 5 * (1000 * 0.2 * 0.8) ** 0.5
