"""The command line: ``fastxai backends`` and the quick-start demo on a few images."""

from __future__ import annotations

import pytest

from fastxai.__main__ import main


def test_backends_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends"]) == 0
    output = capsys.readouterr().out
    for name in ("reference", "triton", "native"):
        assert name in output


def test_demo_runs_and_reports_timings(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sklearn")
    assert main(["demo", "--samples", "4", "--points", "2", "--repeats", "1"]) == 0
    output = capsys.readouterr().out
    assert "test accuracy" in output
    assert "integrated_gradients n=2" in output and "ratio to floor" in output
    accuracy = float(output.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.9


def test_bad_arguments_exit_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--samples", "0"])
    assert exit_info.value.code != 0
    assert "--samples must be >= 1" in capsys.readouterr().err
