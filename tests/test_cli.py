"""The command line: every subcommand on the bundled digits model, and one-line errors."""

from __future__ import annotations

import errno
import os
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


def test_evaluate_refuses_steps_that_cannot_fit(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 21: ``--n-steps 1000000000`` grew to 23 GB until the out-of-memory killer ended it.
    Now the curves' estimate (``(n_steps + 1) * (16 + 4 B)`` bytes) is refused in one line."""
    assert main(["evaluate", "--limit", "24", "--n-steps", str(10**12)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fastxai: n_steps=1000000000000: the curve's steps and scores need"), error
    assert error.count("\n") == 1


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


# The error contract: every user error below is one line on stderr and exit code 2, no traceback.

FACTORY = """
import torch


class PairOutput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(12, 3)

    def forward(self, x):
        return self.linear(x.flatten(1)), x  # (logits, extra), as many models return


def linear():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))


def pair():
    torch.manual_seed(0)
    return PairOutput()
"""


@pytest.fixture
def user_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model factory module (``cli_contract_models``) and data files in ``tmp_path``."""
    (tmp_path / "cli_contract_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "good.npy", rng.random((7, 3, 4), dtype=np.float32))
    torch.save((torch.rand(7, 3, 4), torch.randint(0, 3, (7,))), tmp_path / "good.pt")
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    (tmp_path / "corrupt.pt").write_bytes(b"not a torch file")
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    torch.save({"inputs": 3}, tmp_path / "not_a_tensor.pt")
    torch.save((torch.rand(7, 3, 4), torch.rand(7)), tmp_path / "float_labels.pt")
    torch.save((torch.rand(7, 3, 4), torch.full((7,), 10)), tmp_path / "label_10.pt")
    torch.save((torch.rand(7, 3, 4), torch.zeros(5, dtype=torch.long)), tmp_path / "five_labels.pt")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code = main(argv)
    error = capsys.readouterr().err
    assert code == 2, error
    assert message in error, error
    assert error.startswith("fastxai") and error.count("\n") == 1 and "Traceback" not in error, error


LINEAR = ["--model", "cli_contract_models:linear"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["attribute", *LINEAR, "--data", "good.npy", "--out", "a_file"], "is a file, not a folder"),
        (["attribute", *LINEAR, "--data", "corrupt.npy"], "cannot read corrupt.npy"),
        (["attribute", *LINEAR, "--data", "corrupt.pt"], "cannot read corrupt.pt"),  # torch's is 5 lines
        (["attribute", *LINEAR, "--data", "images"], "cannot read image"),
        (["attribute", *LINEAR, "--data", "text.npy"], "inputs must be numbers"),
        (["attribute", *LINEAR, "--data", "not_a_tensor.pt"], "inputs must be a real tensor"),
        (["attribute", *LINEAR, "--data", "float_labels.pt"], "labels must be a 1-d tensor of integer"),
        (["attribute", *LINEAR, "--data", "five_labels.pt"], "7 inputs but 5 labels"),
        (["attack", *LINEAR, "--data", "label_10.pt"], "labels must be class indices in [0, 3)"),
        (["attack", *LINEAR, "--data", "good.pt", "--eps", "-1"], "eps must be a finite number >= 0"),
        (["attribute", *LINEAR, "--data", "good.npy", "--limit", "-3"], "--limit must be >= 1, got -3"),
        (["attribute", *LINEAR, "--data", "good.npy", "--limit", "0"], "--limit must be >= 1, got 0"),
        (["attribute", "--method", "no_such_method"], "invalid choice"),  # argparse's, without usage
        (["attack", "--limit", "three"], "invalid int value"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    user_files: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(user_files)
    _one_line_error(
        capsys, [*argv, "--out", "out"] if argv[0] == "attribute" and "--out" not in argv else argv, message
    )
    assert not (user_files / "out").exists()  # refused before any work


def test_a_read_only_out_folder_is_one_line_and_exit_2(
    user_files: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = user_files / "read_only"
    out.mkdir()
    out.chmod(0o555)
    if os.access(out, os.W_OK):  # root writes anyway: answer as the kernel does for other users
        monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    try:
        argv = ["attribute", *LINEAR, "--data", str(user_files / "good.npy"), "--out", str(out)]
        _one_line_error(capsys, argv, "is not writable")
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize(
    ("code", "message"), [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied")]
)
def test_a_write_failing_mid_run_is_one_line_and_exit_2(
    user_files: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    message: str,
) -> None:
    """A full disk, or a folder made read-only after the check, fails the shard write itself."""
    from fastxai import runner

    def fail(stream: object, array: object) -> None:
        raise OSError(code, os.strerror(code), "shard.npy")

    monkeypatch.setattr(runner, "_save_array", fail)
    argv = ["attribute", *LINEAR, "--data", str(user_files / "good.npy"), "--method", "saliency"]
    _one_line_error(capsys, [*argv, "--out", str(user_files / "out"), "--no-report"], message)


def test_a_model_returning_a_tuple_is_read_as_every_method_reads_it(
    user_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its first element is the logits (``fastxai`` reads tuples so): same results as the plain model."""
    data = str(user_files / "good.pt")
    for name in ("linear", "pair"):
        argv = ["attribute", "--model", f"cli_contract_models:{name}", "--data", data]
        assert main([*argv, "--method", "saliency", "--out", str(user_files / name), "--no-report"]) == 0
        assert main(["attack", "--model", f"cli_contract_models:{name}", "--data", data, "--steps", "2"]) == 0
    plain, pair = (
        np.asarray(fx.load_attributions(user_files / n / "saliency")["attributions"])
        for n in ("linear", "pair")
    )
    np.testing.assert_array_equal(plain, pair)
    attacks = [line for line in capsys.readouterr().out.splitlines() if "clean accuracy" in line]
    assert len(attacks) == 2 and attacks[0].split(" in ")[0] == attacks[1].split(" in ")[0]


CONV_FACTORY = """
import torch


def conv():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 16, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 3),
    )
"""


@pytest.fixture
def conv_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small conv model factory (``cli_layer_models:conv``) and 6 images [1, 8, 8] in ``tmp_path``."""
    (tmp_path / "cli_layer_models.py").write_text(CONV_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "images.npy", np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32))
    return tmp_path


CONV = ["--model", "cli_layer_models:conv", "--data", "images.npy"]


def test_visualize_layer_writes_the_grid(conv_files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    out = conv_files / "layer.png"
    argv = [
        "visualize-layer",
        *CONV,
        "--layer",
        "2",
        "--out",
        str(out),
        "--max-units",
        "4",
        "--max-samples",
        "3",
    ]
    assert main(argv) == 0
    assert f"{out}: activation maps of layer '2' for 3 inputs" in capsys.readouterr().out
    assert Image.open(out).size == (600, 360)  # 5 columns x 3 rows of 1.2 inch at 100 dpi
    assert (
        main(["visualize-layer", *CONV, "--layer", "0", "--units", "0,5", "--limit", "2", "--out", str(out)])
        == 0
    )
    assert Image.open(out).size == (360, 240)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["visualize-layer", *CONV, "--out", "l.png"], "the following arguments are required: --layer"),
        (["visualize-layer", *CONV, "--layer", "nope", "--out", "l.png"], "layer 'nope' is not a submodule"),
        (["visualize-layer", *CONV, "--layer", "2", "--out", "l.jpg"], "--out must be a .png file"),
        (["visualize-layer", *CONV, "--layer", "2", "--out", "no_such_folder/l.png"], "does not exist"),
        (
            ["visualize-layer", *CONV, "--layer", "2", "--max-units", "0", "--out", "l.png"],
            "--max-units must be >= 1",
        ),
        (
            ["visualize-layer", *CONV, "--layer", "2", "--units", "a,b", "--out", "l.png"],
            "--units must be comma",
        ),
        (
            ["visualize-layer", *CONV, "--layer", "2", "--units", "0,99", "--out", "l.png"],
            "units must be in [0, 16)",
        ),
        (
            ["visualize-layer", *CONV, "--layer", "1", "--limit", "0", "--out", "l.png"],
            "--limit must be >= 1",
        ),
        (
            ["visualize-layer", *CONV, "--layer", "1", "--weights", "w.pt", "--out", "l.png"],
            "weights file not found",
        ),
    ],
)
def test_visualize_layer_errors_are_one_line_and_exit_2(
    conv_files: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    _one_line_error(capsys, argv, message)
    assert not (conv_files / "l.png").exists()
