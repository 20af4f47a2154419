"""Human output (aligned rich tables) and machine output (``--json``) for the CLI."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

_console = Console(highlight=False, soft_wrap=True)


def emit_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def table(columns: list[str], rows: list[list]) -> None:
    t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, no_wrap=True)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    _console.print(t)


def kv(pairs: dict) -> None:
    table(["KEY", "VALUE"], [[k, json.dumps(v) if isinstance(v, (dict, list)) else v] for k, v in pairs.items()])


def error(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)
