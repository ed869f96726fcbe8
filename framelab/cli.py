"""The `framelab` console script.

    framelab fit|validate|test|predict [experiment=NAME] [overrides] [-m] [--cfg job]
    framelab data ...        (datasets: synth, pack; see `framelab data --help`)
    framelab convert ...     (checkpoint conversions)
    framelab bench NAME ...  (measured comparisons; NAME is a module of framelab.benchmarks)
    framelab agent ...       (the video agent on one video; see `framelab agent --help`)
"""
from __future__ import annotations

import importlib
import sys

from framelab.environment import check_torch_pairing

VERBS = ("fit", "validate", "test", "predict")
# subcommand -> module whose `main(argv: list[str]) -> int` takes the rest of the command line
TOOLS = {
    "data": "framelab.datamodules.commands",
    "convert": "framelab.convert",
    "bench": "framelab.benchmarks",
    "agent": "framelab.agent.command",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    problem = check_torch_pairing()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command in VERBS:
        from framelab.run import run_verb
        return run_verb(command, rest)
    if command in TOOLS:
        from framelab.errors import UserError

        try:
            return int(importlib.import_module(TOOLS[command]).main(rest) or 0)
        except UserError as exc:
            print(f"framelab: error: {exc}", file=sys.stderr)
            return 2
    if "=" in command or command.startswith("-"):
        # overrides alone: the verb comes from `verb=...` (how DDP re-launches ranks), else fit
        from framelab.run import run_verb
        verbs = [a.split("=", 1)[1] for a in argv if a.startswith("verb=")]
        rest = [a for a in argv if not a.startswith("verb=")]
        return run_verb(verbs[-1] if verbs else "fit", rest)
    print(f"framelab: error: unknown command {command!r}; choose one of "
          f"{', '.join(VERBS + tuple(TOOLS))}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
