"""The start-up check names the broken torch/torchvision pairing and the fix."""
import builtins

from framelab.environment import check_torch_pairing


def test_working_pair_reports_nothing():
    assert check_torch_pairing() is None


def test_broken_torchvision_is_one_line_with_the_fix(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    message = check_torch_pairing()
    assert message is not None and "\n" not in message
    assert "torchvision::nms does not exist" in message
    assert "python3 -m venv .venv" in message and "pip install -e '.[dev]'" in message
