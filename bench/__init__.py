"""`make bench`: the full stack against bare FastMCP, measured side by side in one run."""
