"""Epinions (Tang, Gao & Liu 2012): ``rating.mat`` + ``trustnetwork.mat`` -> RecBole atomic files.

Raw layout (``../shared/data/epinions/SOURCE.md``): ``rating.mat`` variable ``rating`` is N x 4 int32
``userid, productid, categoryid, rating`` (the bundled README.txt claims a 5th ``helpfulness`` column;
it is kept as ``helpfulness:float`` if a file has it), ``trustnetwork.mat`` variable ``trustnetwork``
is M x 2 **uint16** ``truster, trustee`` (directed). All ids are 1-based.

Written:

* ``epinions.inter``: ``user_id:token item_id:token rating:float [helpfulness:float]``, every rating row
  (repeated (user, item) pairs are kept unless ``dedupe`` says otherwise: the paper counts all rows);
* ``epinions.item``: ``item_id:token category:token_seq``, the categories of the item's rating rows
  (several for a few items, sorted numerically);
* ``epinions.net``: ``source_id:token target_id:token``, directed trust truster -> trustee, without
  self loops, duplicate rows and links to users that have no rating.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ._common import (
    RANDOM_SPLIT_EVAL,
    Reporter,
    id_strings,
    join_tokens,
    number_column,
    render_dataset_yaml,
    write_atomic,
    write_relation,
    write_yaml,
)
from ._read import check_matrix_column, require_file

NAME = "epinions"
DEDUPE_CHOICES = ("none", "exact", "first")
RATING_COLUMNS = ("userid", "productid", "categoryid", "rating", "helpfulness")


def _load_mat_matrix(path: Path, variable: str, n_cols: tuple[int, ...]) -> np.ndarray:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=[variable])
    except Exception as e:  # scipy raises several types for a corrupt file
        raise ValueError(f"{path}: cannot read as a MATLAB v5 .mat file ({type(e).__name__}: {e})") from e
    if variable not in mat:
        raise ValueError(f"{path}: variable {variable!r} not found in the .mat file")
    arr = np.asarray(mat[variable])
    if arr.ndim != 2 or arr.shape[1] not in n_cols:
        want = " or ".join(str(n) for n in n_cols)
        raise ValueError(f"{path}: variable {variable!r} has shape {arr.shape}; expected N x {want} columns")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{path}: variable {variable!r} has non-numeric dtype {arr.dtype}")
    return arr


def dataset_yaml(has_helpfulness: bool = False) -> str:
    inter = ["user_id", "item_id", "rating"] + (["helpfulness"] if has_helpfulness else [])
    return render_dataset_yaml(
        NAME,
        "epinions",
        rating_field="rating",
        time_field=None,
        load_col={"inter": inter, "item": ["item_id", "category"]},
        aux_relations={"social": {"suffix": "net", "space": "user", "directed": True}},
        category_field="category",
        aux_tasks=["social", "category"],
        eval_args=RANDOM_SPLIT_EVAL,
    )


def convert_epinions(
    raw_dir: str | Path,
    out_dir: str | Path,
    yaml_dir: str | Path | Literal[False] | None = None,
    *,
    name: str = NAME,
    dedupe: str = "none",
    verbose: bool = False,
) -> dict:
    """Convert Epinions; returns the counts written (see module docstring for the files).

    ``dedupe``: ``none`` keeps every rating row (the paper's 922,267), ``exact`` drops rows that repeat
    an earlier (user, item, rating[, helpfulness]) row, ``first`` keeps the first row of each
    (user, item) pair.
    """
    if dedupe not in DEDUPE_CHOICES:
        raise ValueError(f"dedupe must be one of {DEDUPE_CHOICES}, not {dedupe!r}")
    rep = Reporter(name, verbose)
    raw_dir = Path(raw_dir)
    hint = "rating.mat and trustnetwork.mat (e.g. ../shared/data/epinions/raw)"
    rating_path = require_file(raw_dir, "rating.mat", NAME, hint)
    trust_path = require_file(raw_dir, "trustnetwork.mat", NAME, hint)
    out = Path(out_dir) / name

    rep.log(f"reading {rating_path.name}")
    rating = _load_mat_matrix(rating_path, "rating", (4, 5))
    cols = {}
    for j, field in enumerate(RATING_COLUMNS[: rating.shape[1]]):
        integer = field in ("userid", "productid", "categoryid")
        cols[field] = check_matrix_column(rating[:, j], rating_path, field, integer, 1 if integer else None)
    has_help = "helpfulness" in cols

    inter = pd.DataFrame(
        {"user_id": cols["userid"], "item_id": cols["productid"], "rating": number_column(cols["rating"])}
    )
    if has_help:
        inter["helpfulness"] = number_column(cols["helpfulness"])
    rep.note("rating rows in rating.mat", len(inter))
    rep.note("repeated (user, item) pairs", int(inter.duplicated(["user_id", "item_id"]).sum()))
    rep.note("rows repeating an earlier row exactly", int(inter.duplicated().sum()))
    if dedupe == "exact":
        dup = inter.duplicated()
        rep.drop("inter: exact duplicate row (dedupe=exact)", dup.sum())
        inter = inter[~dup]
    elif dedupe == "first":
        dup = inter.duplicated(["user_id", "item_id"])
        rep.drop("inter: repeated (user, item) pair (dedupe=first)", dup.sum())
        inter = inter[~dup]

    # items and their categories (from all rating rows), numerically sorted
    items = np.unique(cols["productid"])
    pairs = pd.DataFrame({"i": cols["productid"], "c": cols["categoryid"]}).drop_duplicates()
    pairs = pairs.sort_values(["i", "c"], kind="stable")
    n_cat_per_item = pairs.groupby("i").size()
    category = join_tokens(pairs["i"].to_numpy(), pairs["c"].to_numpy(), items)
    rep.note("items with several categories (all kept)", int((n_cat_per_item > 1).sum()))
    rep.note("distinct (item, category) pairs", len(pairs))

    rep.log(f"reading {trust_path.name}")
    trust = _load_mat_matrix(trust_path, "trustnetwork", (2,))
    src = check_matrix_column(trust[:, 0].astype(np.int64), trust_path, "truster_userid", True, 1)
    tgt = check_matrix_column(trust[:, 1].astype(np.int64), trust_path, "trustee_userid", True, 1)
    rep.note("trust rows in trustnetwork.mat", len(src))
    loop = src == tgt
    rep.drop("social: self-loop", loop.sum())
    src, tgt = src[~loop], tgt[~loop]
    users = np.unique(inter["user_id"].to_numpy())
    known = np.isin(src, users) & np.isin(tgt, users)
    rep.drop("social: user without ratings", (~known).sum())
    rep.note(
        "trust users without ratings",
        int(len(np.setdiff1d(np.union1d(src, tgt), users))),
    )
    src, tgt = src[known], tgt[known]
    links = pd.DataFrame({"s": src, "t": tgt})
    dup = links.duplicated()
    rep.drop("social: duplicate row", dup.sum())
    links = links[~dup]

    rep.log(f"writing {out}")
    inter_cols = [("user_id", "token"), ("item_id", "token"), ("rating", "float")]
    if has_help:
        inter_cols.append(("helpfulness", "float"))
    inter_data = {c: inter[c].to_numpy() for c, _ in inter_cols}
    inter_data["user_id"] = id_strings(inter_data["user_id"])
    inter_data["item_id"] = id_strings(inter_data["item_id"])
    c = rep.counts
    c["interactions"] = write_atomic(out / f"{name}.inter", inter_cols, inter_data)
    c["users"] = len(users)
    c["items"] = write_atomic(
        out / f"{name}.item",
        [("item_id", "token"), ("category", "token_seq")],
        {"item_id": id_strings(items), "category": category},
    )
    c["categories"] = int(pairs["c"].nunique())
    c["relations"]["social"] = write_relation(
        out / f"{name}.net", links["s"].to_numpy(), links["t"].to_numpy()
    )
    c["files"] += [str(out / f"{name}.{s}") for s in ("inter", "item", "net")]
    write_yaml(yaml_dir, name, dataset_yaml(has_help), rep, out)
    return rep.finish()
