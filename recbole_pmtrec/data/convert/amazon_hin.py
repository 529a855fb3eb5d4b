"""Amazon HIN subset (librahu/HIN-Datasets-for-Recommendation-and-Network-Embedding, ``Amazon/``).

Raw layout (``../shared/data/amazon-hin/SOURCE.md``), no headers, 0-based re-indexed ids:
``user_item.dat`` (tab: user, item, rating, timestamp), ``item_view.dat`` (comma: item, view node),
``item_category.dat`` (comma: item, category), ``item_brand.dat`` (comma: item, brand). View ids are a
separate entity space: two items were co-viewed iff they share a view node.

Written:

* ``amazon-hin.inter``: ``user_id:token item_id:token rating:float timestamp:float``;
* ``amazon-hin.item``: ``item_id:token category:token_seq brand:token_seq`` for every item of the
  interactions (ids as tokens, sorted numerically);
* ``amazon-hin.coview``: undirected item-item pairs of items sharing a view node, once per unordered
  pair (source < target), no self loops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ._common import (
    RANDOM_SPLIT_EVAL,
    Reporter,
    join_tokens,
    number_column,
    render_dataset_yaml,
    undirected_pairs,
    write_atomic,
    write_relation,
    write_yaml,
)
from ._read import parse_float, parse_int, read_table, require_file

NAME = "amazon-hin"
FILES = {
    "user_item.dat": ("\t", ("user_id", "item_id", "rating", "timestamp")),
    "item_view.dat": (",", ("item_id", "view_id")),
    "item_category.dat": (",", ("item_id", "category_id")),
    "item_brand.dat": (",", ("item_id", "brand_id")),
}


def dataset_yaml() -> str:
    return render_dataset_yaml(
        NAME,
        "amazon_hin",
        rating_field="rating",
        time_field="timestamp",
        load_col={
            "inter": ["user_id", "item_id", "rating", "timestamp"],
            "item": ["item_id", "category", "brand"],
        },
        aux_relations={"coview": {"suffix": "coview", "space": "item", "directed": False}},
        category_field="category",
        aux_tasks=["coview", "category"],
        eval_args=RANDOM_SPLIT_EVAL,
        tasks_comment="auxiliary tasks for this dataset (not one of the paper's)",
    )


def _read(raw_dir: Path, fname: str, rep: Reporter) -> dict[str, np.ndarray]:
    sep, fields = FILES[fname]
    path = require_file(raw_dir, fname, NAME, f"{', '.join(FILES)} (e.g. ../shared/data/amazon-hin/raw)")
    rep.log(f"reading {fname}")
    df, line_no = read_table(path, fields, sep=sep)
    return {
        f: (parse_float(df, f, path, line_no) if f == "rating" else parse_int(df, f, path, line_no))
        for f in fields
    }


def convert_amazon_hin(
    raw_dir: str | Path,
    out_dir: str | Path,
    yaml_dir: str | Path | Literal[False] | None = None,
    *,
    name: str = NAME,
    verbose: bool = False,
) -> dict:
    """Convert the Amazon HIN subset; returns the counts written."""
    rep = Reporter(name, verbose)
    raw_dir = Path(raw_dir)
    ui = _read(raw_dir, "user_item.dat", rep)
    view = _read(raw_dir, "item_view.dat", rep)
    cat = _read(raw_dir, "item_category.dat", rep)
    brand = _read(raw_dir, "item_brand.dat", rep)
    out = Path(out_dir) / name
    c = rep.counts

    inter = pd.DataFrame(
        {
            "user_id": ui["user_id"],
            "item_id": ui["item_id"],
            "rating": number_column(ui["rating"]),
            "timestamp": ui["timestamp"],
        }
    )
    rep.note("repeated (user, item) pairs", int(inter.duplicated(["user_id", "item_id"]).sum()))
    items = np.unique(inter["item_id"].to_numpy())

    # item features: category / brand ids of the interaction items
    cat_known = np.isin(cat["item_id"], items)
    rep.drop("category: item_category.dat row with an item not in user_item.dat", (~cat_known).sum())
    cat_pairs = pd.DataFrame({"i": cat["item_id"][cat_known], "c": cat["category_id"][cat_known]})
    cat_pairs = cat_pairs.drop_duplicates().sort_values(["i", "c"], kind="stable")
    brand_known = np.isin(brand["item_id"], items)
    rep.drop("brand: item_brand.dat row with an item not in user_item.dat", (~brand_known).sum())
    brand_pairs = pd.DataFrame({"i": brand["item_id"][brand_known], "b": brand["brand_id"][brand_known]})
    brand_pairs = brand_pairs.drop_duplicates().sort_values(["i", "b"], kind="stable")
    category = join_tokens(cat_pairs["i"].to_numpy(), cat_pairs["c"].to_numpy(), items)
    brands = join_tokens(brand_pairs["i"].to_numpy(), brand_pairs["b"].to_numpy(), items)
    rep.note("items without a category", int((category == "").sum()))
    rep.note("items without a brand", int((brands == "").sum()))
    rep.note("items with several brands", int((brand_pairs.groupby("i").size() > 1).sum()))

    # co-view: items sharing a view node
    v_known = np.isin(view["item_id"], items)
    rep.drop("coview: item_view.dat row with an item not in user_item.dat", (~v_known).sum())
    iv = pd.DataFrame({"i": view["item_id"][v_known], "v": view["view_id"][v_known]}).drop_duplicates()
    rep.note("item-view rows", len(view["item_id"]))
    rep.note("view nodes", int(iv["v"].nunique()))
    rep.note("items with a view node", int(iv["i"].nunique()))
    joined = iv.merge(iv, on="v", suffixes=("_a", "_b"))
    joined = joined[joined["i_a"] < joined["i_b"]]  # drops self pairs and keeps one direction
    src, tgt, _, repeats = undirected_pairs(joined["i_a"].to_numpy(), joined["i_b"].to_numpy())
    rep.note("coview: item pairs sharing more than one view node (written once)", repeats)
    c["relations"]["coview"] = write_relation(out / f"{name}.coview", src, tgt)
    rep.note("coview: items covered", int(np.unique(np.concatenate([src, tgt])).size))

    cols = [("user_id", "token"), ("item_id", "token"), ("rating", "float"), ("timestamp", "float")]
    c["interactions"] = write_atomic(out / f"{name}.inter", cols, {k: inter[k].to_numpy() for k, _ in cols})
    c["users"] = int(inter["user_id"].nunique())
    c["items"] = write_atomic(
        out / f"{name}.item",
        [("item_id", "token"), ("category", "token_seq"), ("brand", "token_seq")],
        {"item_id": items, "category": category, "brand": brands},
    )
    c["categories"] = int(cat_pairs["c"].nunique())
    c["notes"]["brands"] = int(brand_pairs["b"].nunique())
    c["files"] += [str(out / f"{name}.{s}") for s in ("inter", "item", "coview")]
    write_yaml(yaml_dir, name, dataset_yaml(), rep, out)
    return rep.finish()
