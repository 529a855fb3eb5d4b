"""Tuning trials on Ray (``--workers``): the same trials and the same table as the sequential search, and a
failing trial reported with its parameters while the others finish. Ray runs on this machine, loopback only,
and is shut down by the runner."""

from __future__ import annotations

import pytest
import yaml
from conftest import TEST_DATA

from recbole_pmtrec.tuning import tune


@pytest.fixture
def grid(tmp_path):
    config = {
        "data_path": str(TEST_DATA),
        "load_col": {"inter": ["user_id", "item_id"]},
        "epochs": 2,
        "state": "ERROR",
        "show_progress": False,
        "use_gpu": False,
        "checkpoint_dir": str(tmp_path / "saved"),
        "metrics": ["Recall", "NDCG"],
        "topk": [5],
        "valid_metric": "NDCG@5",
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "grid.hyper").write_text("learning_rate choice [0.01,0.005]\nembedding_size choice [8,16]\n")
    return tmp_path


def _table(path) -> list[str]:
    """The table's lines, sorted: RecBole's exhaustive search visits the grid in a random order (hyperopt's
    fmin draws from an unseeded generator), so two searches list the same rows in different orders."""
    return sorted(path.read_text().splitlines()[1:])


def test_ray_grid_gives_the_sequential_table(grid):
    files = [str(grid / "run.yaml")]
    seq = tune("BPR", "ml-mtl-tiny", str(grid / "grid.hyper"), files, output=str(grid / "seq.md"))
    par = tune("BPR", "ml-mtl-tiny", str(grid / "grid.hyper"), files, output=str(grid / "par.md"), workers=2)
    assert _table(grid / "par.md") == _table(grid / "seq.md")
    assert sum(line.startswith("| embedding_size:") for line in _table(grid / "seq.md")) == 4
    assert par["best_params"] == seq["best_params"] and par["best_score"] == seq["best_score"]


def test_a_failing_trial_is_reported_and_the_others_finish(grid, capsys):
    (grid / "bad.hyper").write_text("embedding_size choice [8,-3]\n")  # a negative width cannot be built
    tune(
        "BPR",
        "ml-mtl-tiny",
        str(grid / "bad.hyper"),
        [str(grid / "run.yaml")],
        output=str(grid / "bad.md"),
        workers=2,
    )
    table = (grid / "bad.md").read_text()
    assert table.count("\n| embedding_size:") == 1 and "| embedding_size:8 |" in table
    assert "failed trials:" in table and "embedding_size:-3" in table
    out = capsys.readouterr().out
    assert "FAILED" in out and "Traceback" in out
