"""Shared fixtures: one thread, no pytest arguments leaking into RecBole's command-line parser, and every
run's log / checkpoint files inside a temporary folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import recbole_pmtrec  # noqa: E402,F401  (applies the compat shims)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).resolve().parent / "data"


def shared_data_dir() -> Path:
    """The real datasets: ``$RECBOLE_PMTREC_SHARED_DATA`` or ``../shared/data`` beside the project."""
    env = os.environ.get("RECBOLE_PMTREC_SHARED_DATA")
    return Path(env) if env else PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _no_pytest_arguments_for_recbole():
    """RecBole's Config parses ``sys.argv``: pytest's own arguments (``--ignore=...``) must not reach it, also
    in module- and session-scoped fixtures that build a Config before the per-test fixture runs."""
    saved = sys.argv
    sys.argv = [sys.argv[0]]
    yield
    sys.argv = saved


@pytest.fixture(autouse=True)
def _isolated_run(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])
    monkeypatch.chdir(tmp_path)
    # RecBole's trainers open a TensorBoard writer (relative path) and never close it: close the ones a test
    # made (RecBole's own functions included) while its folder is still the working directory
    from torch.utils.tensorboard import SummaryWriter

    writers = []
    original = SummaryWriter.__init__

    def remembered(self, *args, **kwargs):
        original(self, *args, **kwargs)
        writers.append(self)

    monkeypatch.setattr(SummaryWriter, "__init__", remembered)
    yield
    for writer in writers:
        writer.close()


@pytest.fixture
def fast_config(tmp_path):
    """Config entries that keep an end-to-end run short and its files in ``tmp_path``."""
    return {
        "epochs": 1,
        "show_progress": False,
        "checkpoint_dir": str(tmp_path / "saved"),
        "state": "WARNING",
        "use_gpu": False,
    }
