"""Canary scan, run last: the unique secrets seeded in Vault at the start of the session appear
nowhere the suite left traces (logs at DEBUG with tracebacks, every HTTP response body the
servers sent, spans, PDP decision logs, databases, every other file of the session), in plain,
URL-encoded, hex or base64 form.

Run with the whole suite, it reads what every other test left. Run alone (``pytest -k canary``)
it has material all the same: it first calls every tool as every demo principal, with the
capabilities' example arguments, so allowed, denied, failed and secret-reading paths all ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import CANARIES, HTTP_TRANSCRIPT, SPANS, RunningServer, find_canaries
from tools import CAPABILITIES

DEMO_PRINCIPALS = ("alice", "bob", "carol", "dave", "erin", "mallory")

# OpenBao's own console log: the dev server prints its root token and unseal key there by design.
VAULTS_OWN_LOG = "bao.log"


def span_texts() -> list[tuple[str, str]]:
    texts = []
    for span in SPANS.get_finished_spans():
        parts = [span.name, repr(dict(span.attributes or {})), str(span.status.description)]
        parts += [f"{e.name} {dict(e.attributes or {})}" for e in span.events]
        texts.append((f"span {span.name}", " ".join(parts)))
    return texts


def file_texts(base: Path) -> list[tuple[str, str]]:
    return [
        (str(path.relative_to(base)), path.read_bytes().decode("latin-1"))
        for path in base.rglob("*")
        if path.is_file() and path.name != VAULTS_OWN_LOG
    ]


async def exercise(server: RunningServer) -> None:
    """Every tool as every principal: lists, allowed and denied calls, record denials, Vault
    reads (the signed notifications) and decryptions, invalid arguments."""
    for who in DEMO_PRINCIPALS:
        async with server.client(who) as client:
            await client.list_tools()
            for capability in CAPABILITIES:
                for name, arguments in capability.examples.items():
                    await client.call_tool(name, dict(arguments), raise_on_error=False)
                    await client.call_tool(name, {"unexpected": "x"}, raise_on_error=False)


@pytest.mark.last
async def test_no_canary_secret_appears_anywhere_the_suite_left_traces(
    tmp_path_factory: pytest.TempPathFactory, server: RunningServer
) -> None:
    await exercise(server)
    base = tmp_path_factory.getbasetemp()
    files = file_texts(base)
    spans = span_texts()
    transcript = [("http response", b.decode("latin-1")) for b in HTTP_TRANSCRIPT]

    # The scan has material to look at, and something to look for.
    assert len([c for c in CANARIES if c.startswith("canary-")]) >= 3
    assert any(name == "session.log" and "server.vault.identities" in text for name, text in files)
    assert any(name.endswith("audit.log") for name, _ in files)
    assert any(s.name == "vault read" for s in SPANS.get_finished_spans())
    assert len(transcript) > 100

    leaks = find_canaries([*files, *spans, *transcript], CANARIES)
    assert leaks == []
