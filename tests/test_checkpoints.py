"""Checkpoint retention."""

from gsva.engine.checkpointing import prune_checkpoints


def test_prune_checkpoints_keeps_the_newest_and_latest(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / f"step{step}").mkdir()
    (tmp_path / "latest").write_text("step8")
    prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("step*")) == ["step6", "step8"]
    (tmp_path / "latest").write_text("step6")
    prune_checkpoints(tmp_path, keep_last=1)
    assert sorted(p.name for p in tmp_path.glob("step*")) == ["step6", "step8"]
