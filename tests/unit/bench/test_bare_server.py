"""The benchmark's bare server runs the template's own tools, in-process.

``make bench`` compares the template against this server; when it stops answering, the
benchmark has no baseline. This is the cheapest place to notice.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from fastmcp import Client

from bench.servers import BARE_PRINCIPAL, bare_server
from server.authz.request_context import RequestInfo, bind_request
from server.capability import registry
from server.capability.declaration import SeedContext
from server.settings import Settings
from server.store.core import Store
from tools import CAPABILITIES
from tools.tickets import CAPABILITY as TICKETS


async def seeded_copy(url: str) -> None:
    """What the benchmark gives bare: a database the full stack created and seeded."""
    store = Store(url)
    await store.start(tables=registry.all_tables(CAPABILITIES))
    assert TICKETS.seed is not None
    await store.seed_if_empty(
        registry.capability_tables(TICKETS), partial(TICKETS.seed, SeedContext(None))
    )
    await store.close()


async def test_the_bare_server_lists_every_tool_and_reads_a_record_unauthorized(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bare.db'}"
    await seeded_copy(url)
    mcp = bare_server(Settings(transport="stdio", database_url=url))
    bind_request(RequestInfo(request_id="bare", principal=BARE_PRINCIPAL))
    async with Client(mcp) as client:
        listed = {tool.name for tool in await client.list_tools()}
        read = await client.call_tool("get_ticket", TICKETS.examples["get_ticket"])

    assert listed == {tool.__name__ for c in CAPABILITIES for tool in c.tools}
    assert read.structured_content is not None
    assert read.structured_content["id"] == TICKETS.examples["get_ticket"]["ticket_id"]
