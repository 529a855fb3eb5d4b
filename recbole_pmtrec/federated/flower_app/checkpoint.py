"""The ServerApp's files in the output folder: each finished round's server state, and what it received.

``rounds/round_<r>.npz`` holds the strategy's state (``state/<name>``) and what every client loads next
(``download/<scenario>/<name>``); ``rounds/round_<r>.json`` the RunRecord up to that round. A round's two
files are written before its number becomes the last finished one (``rounds/last``), so a run stopped at
any moment resumes from a complete round. Clients keep their private state on their own nodes
(``client_app.py``); nothing private is here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recbole_pmtrec.federated.results import RunRecord


@dataclass
class Resumed:
    last_round: int
    strategy_state: dict[str, np.ndarray]
    downloads: dict[str, dict[str, np.ndarray]]
    record: RunRecord


def run_tag(out: Path) -> str:
    """Names a run's client-state folder on every node: one per output folder, so ``--resume`` finds it
    whatever else (rounds, knobs) changed."""
    return hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:12]


def _write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_round(
    out: Path, server_round: int, strategy_state: dict, downloads: dict, record: RunRecord
) -> None:
    folder = out / "rounds"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {f"state/{k}": v for k, v in strategy_state.items()}
    arrays.update({f"download/{s}/{k}": v for s, d in downloads.items() for k, v in d.items()})

    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    _write(folder / f"round_{server_round:04d}.npz", write_npz)
    _write(folder / f"round_{server_round:04d}.json", lambda tmp: record.save(tmp))
    _write(folder / "last", lambda tmp: tmp.write_text(str(server_round)))


def load_last(out: Path) -> Resumed | None:
    """The last finished round's state, or None when the output folder holds none."""
    last_file = out / "rounds" / "last"
    return load_round(out, int(last_file.read_text())) if last_file.exists() else None


def load_round(out: Path, server_round: int) -> Resumed:
    """A finished round's server state, what each client loaded after it, and the record up to it."""
    strategy_state: dict = {}
    downloads: dict = {}
    with np.load(out / "rounds" / f"round_{server_round:04d}.npz") as saved:
        for key in saved.files:
            kind, _, rest = key.partition("/")
            if kind == "state":
                strategy_state[rest] = saved[key]
            else:
                scenario, _, name = rest.partition("/")
                downloads.setdefault(scenario, {})[name] = saved[key]
    record = RunRecord.load(out / "rounds" / f"round_{server_round:04d}.json")
    return Resumed(server_round, strategy_state, downloads, record)


def save_received(out: Path, received: dict[str, set[str]]) -> None:
    """Every array name the ServerApp received, per scenario (``<record>/<array name>``)."""
    data = {scenario: sorted(names) for scenario, names in received.items()}
    (out / "received_arrays.json").write_text(json.dumps(data, indent=1, sort_keys=True))
