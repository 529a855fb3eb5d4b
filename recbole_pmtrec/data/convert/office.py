"""Amazon Office (GraphAU split, the PMTRec paper's "Office"): train/val/test -> RecBole pre-split files.

Raw layout (``../shared/data/amazon-office-graphau/SOURCE.md``): ``train.txt``, ``val.txt``,
``test.txt``, comma separated, no header, ``user_id,item_id,rating``, 0-based ids shared by the three
files (the test part keeps only ratings > 3).

Written: ``office.train.inter``, ``office.valid.inter``, ``office.test.inter`` with
``user_id:token item_id:token rating:float`` (RecBole's ``benchmark_filename: [train, valid, test]``).
No relation or item file: the paper's tasks here (DirectAU alignment/uniformity, rating regression)
use the ratings only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ._common import Reporter, number_column, render_dataset_yaml, write_atomic, write_yaml
from ._read import parse_float, parse_int, read_table, require_file

NAME = "office"
PARTS = (("train", "train.txt"), ("valid", "val.txt"), ("test", "test.txt"))
FIELDS = ("user_id", "item_id", "rating")


def dataset_yaml() -> str:
    return render_dataset_yaml(
        NAME,
        "office",
        rating_field="rating",
        time_field=None,
        load_col={"inter": ["user_id", "item_id", "rating"]},
        benchmark_filename=[part for part, _ in PARTS],
        aux_relations={},
        category_field=None,
        aux_tasks=["directau", "rating"],
        eval_args={"order": "RO", "group_by": "user", "mode": "full"},
    )


def convert_office(
    raw_dir: str | Path,
    out_dir: str | Path,
    yaml_dir: str | Path | Literal[False] | None = None,
    *,
    name: str = NAME,
    verbose: bool = False,
) -> dict:
    """Convert the pre-split Office ratings; returns the counts written."""
    rep = Reporter(name, verbose)
    raw_dir = Path(raw_dir)
    hint = "train.txt, val.txt and test.txt (e.g. ../shared/data/amazon-office-graphau/raw)"
    paths = {part: require_file(raw_dir, fname, NAME, hint) for part, fname in PARTS}
    out = Path(out_dir) / name
    frames = {}
    for part, path in paths.items():
        rep.log(f"reading {path.name}")
        df, line_no = read_table(path, FIELDS, sep=",")
        frames[part] = pd.DataFrame(
            {
                "user_id": parse_int(df, "user_id", path, line_no),
                "item_id": parse_int(df, "item_id", path, line_no),
                "rating": number_column(parse_float(df, "rating", path, line_no)),
            }
        )
    everything = pd.concat(frames.values(), ignore_index=True)
    rep.note(
        "repeated (user, item) pairs across the parts",
        int(everything.duplicated(["user_id", "item_id"]).sum()),
    )
    train_items = set(frames["train"]["item_id"].tolist())
    unseen = set(everything["item_id"].tolist()) - train_items
    rep.note("items in valid/test but not in train", len(unseen))
    c = rep.counts
    c["splits"] = {}
    cols = [("user_id", "token"), ("item_id", "token"), ("rating", "float")]
    for part, frame in frames.items():
        path = out / f"{name}.{part}.inter"
        c["splits"][part] = write_atomic(path, cols, {k: frame[k].to_numpy() for k, _ in cols})
        c["files"].append(str(path))
    c["users"] = int(everything["user_id"].nunique())
    c["items"] = int(everything["item_id"].nunique())
    c["interactions"] = len(everything)
    c["notes"]["users in test"] = int(frames["test"]["user_id"].nunique())
    c["notes"]["lowest rating in test"] = (
        float(np.min(frames["test"]["rating"])) if len(frames["test"]) else None
    )
    write_yaml(yaml_dir, name, dataset_yaml(), rep, out)
    return rep.finish()
