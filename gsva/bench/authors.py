"""The authors' measurement beside ours, in the same invocation, on the same machine.

The authors' code (an extracted copy, ``--official-dir``) is never imported by this project: their
benchmark harness (``--official-harness``, the folder holding its ``bench_data.py``,
``bench_model.py``, ``bench_model_gpu.py`` and ``make_fixture.py``) runs in a child process with
``GSVA_OFFICIAL_DIR`` pointing at the code, and prints one JSON line that is read back. A ratio
is only ever computed between two figures measured here, back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsva.bench.workload import log


class AuthorsRunError(RuntimeError):
    """The authors' benchmark did not finish (its command and the tail of its output are named)."""


HARNESS_SCRIPTS = ("bench_data.py", "bench_model.py", "bench_model_gpu.py", "make_fixture.py")
"""The harness scripts the benchmarks run (data path, evaluation, training step, fixture)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--official-dir", type=Path, default=None,
                        help="extracted copy of the authors' code: also time their code on the same shapes "
                             "(needs --official-harness)")
    parser.add_argument("--official-harness", type=Path, default=None,
                        help=f"folder of the authors' benchmark harness ({', '.join(HARNESS_SCRIPTS)})")


@dataclass(frozen=True)
class AuthorsHarness:
    code_dir: Path
    harness_dir: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace, parser: argparse.ArgumentParser) -> "AuthorsHarness | None":
        """The harness the arguments name, or None; a parser error when only one folder is given
        or a folder lacks what is needed."""
        if args.official_dir is None and args.official_harness is None:
            return None
        if args.official_dir is None or args.official_harness is None:
            parser.error("--official-dir and --official-harness go together")
        if not (args.official_dir / "model").is_dir():
            parser.error(f"--official-dir {args.official_dir}: no model/ folder (an extracted copy of the authors' code?)")
        missing = [script for script in HARNESS_SCRIPTS if not (args.official_harness / script).is_file()]
        if missing:
            parser.error(f"--official-harness {args.official_harness}: no {', '.join(missing)} (the authors' benchmark harness folder?)")
        return cls(args.official_dir.resolve(), args.official_harness.resolve())

    def run(self, script: str, arguments: list[str]) -> dict[str, Any]:
        """Run ``script`` of the harness with ``arguments``; its JSON line."""
        command = [sys.executable, str(self.harness_dir / script), *arguments]
        log(f"[authors] {' '.join(command)}")
        environment = {**os.environ, "GSVA_OFFICIAL_DIR": str(self.code_dir)}
        result = subprocess.run(command, capture_output=True, text=True, env=environment)
        if result.returncode != 0:
            raise AuthorsRunError(f"{' '.join(command)} exited with {result.returncode}:\n{result.stderr[-3000:]}")
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        measured["command"] = " ".join(command)
        return measured

    def fixture(self, work_dir: Path) -> Path:
        """The harness's gRefCOCO fixture under ``work_dir`` (written once)."""
        folder = work_dir / "authors_fixture"
        if not (folder / "fixture_meta.json").is_file():
            self.run("make_fixture.py", [str(folder)])
        return folder


def ratio(ours: float, theirs: float) -> float:
    """How many times faster ours is, from two durations (or two rates inverted by the caller)."""
    return round(theirs / ours, 2)
