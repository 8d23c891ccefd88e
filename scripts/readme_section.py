"""The command line shared by the README reference generators: print, --check or --write a marked section."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def run(argv: list[str], *, section: str, script: str, table: Callable[[], str]) -> int:
    """`<script>` prints the table; `--check FILE` fails when FILE's section differs; `--write FILE` refreshes it.
    The section sits between `<!-- <section>:begin -->` and `<!-- <section>:end -->`."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    if argv[:1] not in (["--check"], ["--write"]):
        print(table())
        return 0
    path = Path(argv[1])
    before, rest = path.read_text().split(begin, 1)
    current, after = rest.split(end, 1)
    if argv[0] == "--check":
        if current.strip() != table():
            print(f"README {section} is stale: run `python {script} --write {path}`")
            return 1
        return 0
    path.write_text(f"{before}{begin}\n{table()}\n{end}{after}")
    return 0
