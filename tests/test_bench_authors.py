"""The benchmarks' --official-dir / --official-harness arguments: bad folders get a message that
names what is missing (the authors' code itself is never needed here)."""

import argparse

import pytest

from gsva.bench.authors import HARNESS_SCRIPTS, AuthorsHarness, add_arguments, ratio


def parse(argv: list[str]) -> AuthorsHarness | None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return AuthorsHarness.from_args(parser.parse_args(argv), parser)


def parse_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        parse(argv)
    return capsys.readouterr().err


def test_no_folders_means_no_comparison():
    assert parse([]) is None


def test_bad_folders_are_named(tmp_path, capsys):
    code, harness = tmp_path / "code", tmp_path / "harness"
    (code / "model").mkdir(parents=True)
    harness.mkdir()
    (harness / "bench_model.py").touch()
    assert "--official-dir and --official-harness go together" in parse_error(["--official-dir", str(code)], capsys)
    message = parse_error(["--official-dir", str(tmp_path), "--official-harness", str(harness)], capsys)
    assert f"--official-dir {tmp_path}: no model/ folder" in message
    message = parse_error(["--official-dir", str(code), "--official-harness", str(harness)], capsys)
    assert f"--official-harness {harness}: no bench_data.py, bench_model_gpu.py, make_fixture.py" in message
    for script in HARNESS_SCRIPTS:
        (harness / script).touch()
    assert parse(["--official-dir", str(code), "--official-harness", str(harness)]) == AuthorsHarness(code.resolve(), harness.resolve())


def test_ratio_is_how_many_times_faster_ours_is():
    assert ratio(ours=2.0, theirs=5.0) == 2.5
