"""Start-up check: torch and torchvision must import together (lightning imports torchvision)."""
from __future__ import annotations

FIX = ("reinstall torch and torchvision together in a fresh virtual environment: "
       "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]'")


def check_torch_pairing() -> str | None:
    """Return one line saying what is broken and how to fix it, or None when the pair works."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
        return f"framelab: error: torch does not import ({exc}); {FIX}"
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"framelab: error: torchvision does not work with torch {torch.__version__} "
                f"({first}); {FIX}")
    return None
