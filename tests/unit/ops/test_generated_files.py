"""Generated files are what `make generate` writes from the declarations, the settings model and
the policy suites: a drift fails here and names the command and the file it writes."""

from __future__ import annotations

import pytest

from ops import generate
from ops.policy_suites import ROOT

OUTPUTS = generate.outputs()


@pytest.mark.parametrize("output", OUTPUTS, ids=[str(o.path.relative_to(ROOT)) for o in OUTPUTS])
def test_generated_file_is_current(output: generate.Output) -> None:
    wanted = output.render()
    current = output.path.read_text() if output.path.exists() else None
    where = output.path.relative_to(ROOT)
    if wanted is None:
        assert current is None, f"{where} is left over: run `{generate.COMMAND}` (it removes it)"
    else:
        assert current == wanted, f"{where} is stale: run `{generate.COMMAND}` (it writes it)"


def test_the_readme_table_lists_every_registered_component_once() -> None:
    table = generate.access_table().splitlines()[2:]
    names = [row.split("|")[1].strip() for row in table]
    assert len(names) == len(set(names))
    assert "list_tickets" in names and "prompt `refund_review`" in names
    assert not any(probe in row for row in table for probe in generate.UNREGISTERED_PROBES.values())
