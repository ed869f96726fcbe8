"""`framelab bench NAME [--json PATH]`: each NAME is a module here with `main(argv) -> int`."""
from __future__ import annotations

import importlib
import pkgutil
import sys


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: framelab bench {{{','.join(names)}}} [--json PATH]")
        return 0 if argv else 2
    if argv[0] not in names:
        print(f"framelab: error: unknown benchmark {argv[0]!r}; choose one of {', '.join(names)}",
              file=sys.stderr)
        return 2
    return int(importlib.import_module(f"{__name__}.{argv[0]}").main(argv[1:]) or 0)
