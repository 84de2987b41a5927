"""scripts/check_data.py: present, missing (exact path) and unreadable files, per dataset."""

import subprocess
import sys
from pathlib import Path

import pytest

from gsva.data.catalog import DATASETS, check_dataset
from gsva.data.doctor import spread
from tests.conftest import REPO
from tests.formats import write_every_dataset


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    write_every_dataset(tmp_path)
    return tmp_path


def test_every_dataset_is_ready_with_counts(dataset_dir: Path):
    reports = {name: check_dataset(name, dataset_dir) for name in DATASETS}
    assert all(report.ok for report in reports.values()), {n: r.unreadable or r.missing for n, r in reports.items()}
    assert reports["grefcoco"].counts["val/no-target"] == 1 and reports["grefcoco"].counts["val/multi"] == 1
    assert reports["refzom"].counts["test/no-target"] == 2
    assert reports["ade20k"].counts["classes"] == 150
    assert reports["reason_seg"].counts["train/explained"] == 1
    assert all(report.files_checked > 0 for report in reports.values())


def test_missing_files_are_named_with_the_expected_path(dataset_dir: Path):
    refs = dataset_dir / "refer_seg" / "refcocog" / "refs(umd).p"
    refs.unlink()
    report = check_dataset("refcocog", dataset_dir)
    assert not report.ok and str(refs) in report.missing
    labels = dataset_dir / "ade20k" / "annotations" / "training"
    for label in labels.iterdir():
        label.unlink()
    labels.rmdir()
    report = check_dataset("ade20k", dataset_dir)
    assert str(labels) in report.missing


def test_unreadable_images_are_reported_and_the_script_fails(dataset_dir: Path):
    image = next((dataset_dir / "refer_seg" / "images" / "mscoco" / "images" / "train2014").glob("*.jpg"))
    image.write_bytes(b"not a jpeg")
    reports = [check_dataset(name, dataset_dir) for name in ("refcoco", "refcoco+", "refcocog", "grefcoco", "refzom")]
    assert any(str(image) in problem for report in reports for problem in report.unreadable)
    done = subprocess.run(
        [sys.executable, "scripts/check_data.py", "--dataset-dir", str(dataset_dir), "--datasets", "ade20k", "refcoco", "refcoco+", "refcocog", "grefcoco", "refzom"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "UNREADABLE" in done.stdout and "ade20k (sem_seg): OK" in done.stdout


def test_spread_reads_evenly_spaced_files():
    files = [(Path(str(i)), lambda: None) for i in range(10)]
    assert [int(str(path)) for path, _ in spread(files, 4)] == [0, 2, 5, 7]
    assert len(spread(files, None)) == 10
