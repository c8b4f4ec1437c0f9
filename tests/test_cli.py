"""The command line: every subcommand on the bundled digits model, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fastxai as fx
from fastxai import cli
from fastxai.cli import main

sklearn = pytest.importorskip("sklearn")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the cached digits model inside the test's folder."""
    original = cli.digits_model
    monkeypatch.setattr(cli, "digits_model", lambda: original(cache=tmp_path / "cache"))


def test_backends_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends"]) == 0
    output = capsys.readouterr().out
    for name in ("reference", "triton", "native"):
        assert name in output


def test_attribute_with_no_model_and_no_data_runs_the_digits_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["attribute", "--limit", "20", "--out", str(tmp_path / "out")]) == 0
    output = capsys.readouterr().out
    for method in cli.MAIN_METHODS:
        assert method in output
        loaded = fx.load_attributions(tmp_path / "out" / method)
        assert loaded["attributions"].shape == (20, 1, 8, 8)
    assert (tmp_path / "cache" / "digits_cnn.pt").is_file()


def test_attribute_a_user_model_and_npy_data(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    torch.save(model.state_dict(), weights)
    data = tmp_path / "inputs.npy"
    np.save(data, np.random.default_rng(0).random((7, 3, 4), dtype=np.float32))
    spec = "tests_cli_factory:make"
    (tmp_path / "tests_cli_factory.py").write_text(
        "import torch\n\n"
        "def make():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        code = main(
            [
                "attribute",
                "--model",
                spec,
                "--weights",
                str(weights),
                "--data",
                str(data),
                "--method",
                "saliency",
                "--out",
                str(tmp_path / "out"),
            ]
        )
    finally:
        sys.path.remove(str(tmp_path))
    assert code == 0
    loaded = fx.load_attributions(tmp_path / "out" / "saliency")
    x = torch.from_numpy(np.load(data))
    expected = fx.saliency(model, x)
    np.testing.assert_allclose(loaded["attributions"], expected.numpy(), rtol=1e-6)


def test_attack_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attack", "--limit", "50", "--eps", "0.2", "--steps", "5"]) == 0
    assert "clean accuracy" in capsys.readouterr().out


def test_demo_runs_and_reports_timings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--samples", "4", "--points", "2", "--repeats", "1"]) == 0
    output = capsys.readouterr().out
    assert "integrated_gradients n=2" in output and "ratio to floor" in output
    assert float(output.split("test accuracy ")[1].split()[0]) > 0.9


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["attribute", "--model", "no_such_module:factory"], "cannot load model factory"),
        (["attribute", "--model", "nocolon"], "package.module:factory"),
        (["attribute", "--data", "/no/such/file.npy"], "data not found"),
        (["attribute", "--weights", "w.pt"], "--weights needs --model"),
        (["attack", "--data", "{npy}"], "attack needs data with labels"),
        (["attribute", "--data", "{npy}"], "does not accept inputs of shape"),
        (["demo", "--samples", "0"], "--samples must be >= 1"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    data = tmp_path / "bad.npy"
    np.save(data, np.zeros((3, 5), dtype=np.float32))
    argv = [arg.replace("{npy}", str(data)) for arg in argv]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "Traceback" not in error


def test_evaluate_prints_a_faithfulness_table_against_random(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--limit", "24", "--n-steps", "4", "--method", "input_x_gradient"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| input_x_gradient") or line.startswith("| random")]
    assert len(rows) == 2
    method_auc, random_auc = (float(row.split("|")[2]) for row in rows)
    assert method_auc < random_auc  # a trained CNN's input x gradient beats a random ordering


def test_evaluate_rejects_bad_steps(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--n-steps", "0"]) == 2
    assert "--n-steps must be >= 1" in capsys.readouterr().err


def test_a_folder_in_use_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another run holds the output folder: the CLI says so in one line, exit code 2, no traceback."""
    from fastxai import _run_store

    folder = tmp_path / "out" / "saliency"
    folder.mkdir(parents=True)
    with _run_store.folder_lock(folder):
        code = main(["attribute", "--limit", "8", "--method", "saliency", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("fastxai: another run holds") and error.count("\n") == 1, error
