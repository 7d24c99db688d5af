"""``lens config check`` / ``mimir config check``: the effective settings, secrets masked, and every problem.

Run before a deploy (or in CI against the deploy's environment): exit status 1 means the
service would refuse to start in staging/production, or is misconfigured in development.
"""

from __future__ import annotations

import json

from pydantic_settings import BaseSettings
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infra.settings import effective_config, load_settings, problems


def run_check(settings_cls: type[BaseSettings], service: str, *, as_json: bool, console: Console) -> int:
    """Print the report; returns the exit status (0 clean, 1 problems)."""
    settings, found = load_settings(settings_cls)
    rows = effective_config(settings) if settings is not None else []
    if settings is not None:
        found = problems(settings)
    environment = getattr(settings, "environment", None)
    if as_json:
        report = {
            "service": service,
            "environment": environment,
            "settings": rows,
            "problems": found,
            "ok": not found,
        }
        print(json.dumps(report, default=str))
        return 1 if found else 0
    if rows:
        table = Table(title=f"{service} configuration ({environment})")
        table.add_column("setting", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("source")
        for row in rows:
            value = row["value"]
            shown = "" if value is None else str(value)
            table.add_row(row["setting"], Text(shown), row["source"])
        console.print(table)
    for problem in found:
        console.print(Text.assemble(("problem: ", "red"), problem), soft_wrap=True)
    if not found:
        console.print("[green]no problems found[/green]")
    return 1 if found else 0
