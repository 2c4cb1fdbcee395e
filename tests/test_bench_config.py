"""Experiment configs: every method has a runnable default, and bad configs get clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

import reference_impls as ri  # noqa: E402
from bench_support import tiny_config, write_config  # noqa: E402

from peft_atlas.bench.config import ConfigError, load_config, with_overrides  # noqa: E402
from peft_atlas.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "benchmarks" / "experiments"


@pytest.mark.parametrize("method", ri.list_methods(backbone="vit"))
def test_every_method_has_a_default_config(method: str) -> None:
    path = EXPERIMENTS / method / "default.yaml"
    assert path.is_file(), f"{path} is missing: run benchmarks/experiments/make_defaults.py"
    config = load_config(path)
    assert config.method.name == method
    assert config.data.kind == "vtab-1k"


def _error(tmp_path: Path, config: dict) -> str:
    path = write_config(tmp_path / "bad.yaml", config)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_unknown_method_lists_valid_ones(tmp_path: Path) -> None:
    message = _error(tmp_path, tiny_config(None, method={"name": "lorra"}))
    assert "bad.yaml:" in message and "method.name" in message and "'lorra'" in message
    assert all(name in message for name in ri.list_methods(backbone="vit"))


def test_a_vision_language_method_is_refused_saying_why(tmp_path: Path) -> None:
    message = _error(tmp_path, tiny_config(None, method={"name": "coop"}))
    assert "method.name" in message and "'coop' acts on clip models" in message and "timm vision transformers" in message


def test_unknown_field_names_file_field_and_valid_fields(tmp_path: Path) -> None:
    config = tiny_config(None)
    config["train"]["epoch"] = 3
    message = _error(tmp_path, config)
    assert "bad.yaml:" in message and "train.epoch" in message
    assert "unknown field 'epoch'" in message and "epochs" in message and "batch_size" in message


def test_wrong_type_names_field_expected_and_given(tmp_path: Path) -> None:
    config = tiny_config(None)
    config["train"]["epochs"] = "2"
    config["train"]["lr"] = "1e-3"
    message = _error(tmp_path, config)
    assert "train.epochs: Input should be a valid integer (got '2', str)" in message
    assert "train.lr" in message and "write 1.0e-3" in message


def test_method_option_errors_come_from_the_method(tmp_path: Path) -> None:
    message = _error(tmp_path, tiny_config(None, method={"name": "lora", "options": {"rank": 4}}))
    assert "method.options" in message and "'rank'" in message and "valid fields: r," in message


def test_overrides_are_validated(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "ok.yaml", tiny_config(tmp_path)))
    assert with_overrides(config, seed=7, data_root="/elsewhere").seed == 7
    with pytest.raises(ConfigError, match="seed"):
        with_overrides(config, seed=-1)


def test_cli_reports_config_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_config(tmp_path / "bad.yaml", tiny_config(None, method={"name": "nope"}))
    assert main(["bench", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "unknown method 'nope'" in err and "Traceback" not in err


def test_the_other_commands_never_import_torch() -> None:
    code = "import sys, peft_atlas.cli as c; c.build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "False"


def test_prepare_batches_is_a_positive_int(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path / "ok.yaml", tiny_config(None))).method.prepare_batches == 8
    message = _error(tmp_path, tiny_config(None, method={"name": "lora", "prepare_batches": 0}))
    assert "bad.yaml:" in message and "method.prepare_batches: Input should be greater than or equal to 1" in message


def test_config_errors_carry_the_line_of_the_field(tmp_path: Path) -> None:
    """The same translation as the knowledge-base validator: file, line, dotted field, message."""
    config = tiny_config(None)
    config["train"]["epochs"] = "2"
    path = write_config(tmp_path / "bad.yaml", config)
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith("epochs:"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.field) == (str(path), line, "train.epochs")
    assert problem.message == "Input should be a valid integer (got '2', str)"
