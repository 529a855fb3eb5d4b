"""HetRec 2011 Last.fm (hetrec2011-lastfm-2k) -> RecBole atomic files.

Raw layout (``../shared/data/lastfm-hetrec2011/SOURCE.md``): tab separated files with one header line
and raw ids: ``user_artists.dat`` (userID, artistID, weight = listening count), ``user_friends.dat``
(userID, friendID; stored in both directions), ``user_taggedartists.dat`` (userID, artistID, tagID,
day, month, year), ``tags.dat`` (tagID, tagValue; **Latin-1**). ``artists.dat`` (UTF-8 with stray
quotes) is not needed: artists are identified by id.

Written:

* ``lastfm.inter``: ``user_id:token item_id:token weight:float`` (no rating field);
* ``lastfm.item``: ``item_id:token tags:token_seq`` for every artist of the interactions: the tag ids
  any user assigned to the artist (sorted numerically; an empty cell for untagged artists);
* ``lastfm.net``: undirected friendships, once per unordered pair (source < target).
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

NAME = "lastfm"
FILES = {
    "user_artists.dat": (("userID", "artistID", "weight"), "utf-8"),
    "user_friends.dat": (("userID", "friendID"), "utf-8"),
    "user_taggedartists.dat": (("userID", "artistID", "tagID", "day", "month", "year"), "utf-8"),
    "tags.dat": (("tagID", "tagValue"), "latin-1"),
}


def dataset_yaml() -> str:
    return render_dataset_yaml(
        NAME,
        "lastfm",
        rating_field=None,
        time_field=None,
        load_col={"inter": ["user_id", "item_id", "weight"], "item": ["item_id", "tags"]},
        aux_relations={"social": {"suffix": "net", "space": "user", "directed": False}},
        category_field="tags",
        aux_tasks=["social", "category"],
        eval_args=RANDOM_SPLIT_EVAL,
        tasks_comment="auxiliary tasks for this dataset (not one of the paper's)",
    )


def _read(raw_dir: Path, fname: str, rep: Reporter, ints: tuple[str, ...]) -> tuple[dict, pd.DataFrame]:
    fields, encoding = FILES[fname]
    path = require_file(
        raw_dir, fname, NAME, f"{', '.join(FILES)} (e.g. ../shared/data/lastfm-hetrec2011/raw)"
    )
    rep.log(f"reading {fname}")
    df, line_no = read_table(path, fields, sep="\t", header=fields, encoding=encoding)
    cols = {f: parse_int(df, f, path, line_no) for f in ints}
    if "weight" in fields:
        cols["weight"] = parse_float(df, "weight", path, line_no)
    return cols, df


def convert_lastfm(
    raw_dir: str | Path,
    out_dir: str | Path,
    yaml_dir: str | Path | Literal[False] | None = None,
    *,
    name: str = NAME,
    verbose: bool = False,
) -> dict:
    """Convert HetRec 2011 Last.fm; returns the counts written."""
    rep = Reporter(name, verbose)
    raw_dir = Path(raw_dir)
    ua, _ = _read(raw_dir, "user_artists.dat", rep, ("userID", "artistID"))
    uf, _ = _read(raw_dir, "user_friends.dat", rep, ("userID", "friendID"))
    uta, _ = _read(raw_dir, "user_taggedartists.dat", rep, ("userID", "artistID", "tagID"))
    tags, _ = _read(raw_dir, "tags.dat", rep, ("tagID",))
    out = Path(out_dir) / name
    c = rep.counts

    inter = pd.DataFrame(
        {"user_id": ua["userID"], "item_id": ua["artistID"], "weight": number_column(ua["weight"])}
    )
    rep.note("repeated (user, item) pairs", int(inter.duplicated(["user_id", "item_id"]).sum()))
    users = np.unique(inter["user_id"].to_numpy())
    items = np.unique(inter["item_id"].to_numpy())

    # tags of each artist (by any user)
    pairs = pd.DataFrame({"i": uta["artistID"], "t": uta["tagID"]}).drop_duplicates()
    rep.note("tag assignments", len(uta["tagID"]))
    rep.note("distinct (artist, tag) pairs", len(pairs))
    known_tag = np.isin(pairs["t"].to_numpy(), tags["tagID"])
    rep.drop("tags: tag id not in tags.dat", (~known_tag).sum())
    pairs = pairs[known_tag]
    known_item = np.isin(pairs["i"].to_numpy(), items)
    rep.drop("tags: (artist, tag) pair whose artist is not in user_artists.dat", (~known_item).sum())
    pairs = pairs[known_item].sort_values(["i", "t"], kind="stable")
    tag_cells = join_tokens(pairs["i"].to_numpy(), pairs["t"].to_numpy(), items)
    rep.note("tags in tags.dat", len(tags["tagID"]))
    rep.note("artists with tags", int((tag_cells != "").sum()))
    rep.note("artists without tags (empty cell)", int((tag_cells == "").sum()))

    # friendships: symmetric in the file, written once per pair
    src, tgt = uf["userID"], uf["friendID"]
    rep.note("friend rows in user_friends.dat", len(src))
    pair_set = pd.DataFrame({"s": src, "t": tgt})
    reverse = pd.DataFrame({"s": tgt, "t": src})
    rep.note(
        "friend rows without their reverse row",
        int(
            len(
                pair_set.merge(reverse.drop_duplicates(), how="left", indicator=True).query(
                    "_merge == 'left_only'"
                )
            )
        ),
    )
    known = np.isin(src, users) & np.isin(tgt, users)
    rep.drop("social: user not in user_artists.dat", (~known).sum())
    src, tgt, loops, repeats = undirected_pairs(src[known], tgt[known])
    rep.drop("social: self-loop", loops)
    rep.drop("social: reverse (or repeat) of a pair already written (undirected)", repeats)

    cols = [("user_id", "token"), ("item_id", "token"), ("weight", "float")]
    c["interactions"] = write_atomic(out / f"{name}.inter", cols, {k: inter[k].to_numpy() for k, _ in cols})
    c["users"] = len(users)
    c["items"] = write_atomic(
        out / f"{name}.item",
        [("item_id", "token"), ("tags", "token_seq")],
        {"item_id": items, "tags": tag_cells},
    )
    c["categories"] = int(pairs["t"].nunique())
    c["relations"]["social"] = write_relation(out / f"{name}.net", src, tgt)
    c["files"] += [str(out / f"{name}.{s}") for s in ("inter", "item", "net")]
    write_yaml(yaml_dir, name, dataset_yaml(), rep, out)
    return rep.finish()
