"""The README's client snippet runs, as printed, against a real server. (Its access table is
generated from the policy suites: tests/unit/ops/test_generated_files.py.)"""

from __future__ import annotations

import contextlib
import io
from typing import Any

from tests.support import ROOT, RunningServer

README = (ROOT / "README.md").read_text()


async def test_readme_client_snippet_runs(server: RunningServer) -> None:
    snippet = README.split("```python\n", 1)[1].split("```", 1)[0]
    body, _, tail = snippet.rpartition("\n\n\ntoken = ")
    assert "asyncio.run(main(token))" in tail  # the part replaced below: getting a token via make
    namespace: dict[str, Any] = {}
    exec(body.replace('"http://127.0.0.1:8000/mcp"', repr(server.url)), namespace)  # noqa: S102 - our README
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        await namespace["main"](server.token("alice"))
    assert "'create_ticket'" in output.getvalue() and "'tickets'" in output.getvalue()
