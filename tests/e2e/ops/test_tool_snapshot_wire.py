"""The reviewed tool snapshot is what a client really receives: dave's ``tools/list`` over HTTP
from a real server (real PDP, OpenBao), field for field."""

from __future__ import annotations

from ops import tool_snapshot
from tests.support import RunningServer


async def test_the_snapshot_equals_daves_tools_list_on_the_wire(server: RunningServer) -> None:
    async with server.client(tool_snapshot.VIEWER) as client:
        listed = await client.list_tools()
    wire = sorted(
        (
            tool_snapshot.normalised(t.model_dump(by_alias=True, exclude_none=True, mode="json"))
            for t in listed
        ),
        key=lambda t: str(t["name"]),
    )
    assert tool_snapshot.differences(tool_snapshot.recorded(), wire) == []
    assert wire == tool_snapshot.recorded()
