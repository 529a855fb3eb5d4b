"""Amazon Review Data 2018 (Ni, Li & McAuley 2019): ``<Category>_5.json.gz`` + ``meta_<Category>.json.gz``.

The same code reads the fixture Magazine_Subscriptions files (``../shared/data/amazon-magazine-2018``)
and the PMTRec paper's Video_Games files (``Video_Games_5.json.gz`` + ``meta_Video_Games.json.gz``).
Both are gzip JSON Lines (plain ``.json`` is accepted too). Reviews: ``reviewerID``, ``asin``,
``overall`` (1-5), ``unixReviewTime``; metadata: ``asin``, ``also_view`` / ``also_buy`` (lists of
ASINs), ``category`` (a path from the top category down), ``brand``. Metadata records may repeat
(byte-identical): the first record of an ASIN is used.

Written (``<name>`` defaults to ``amazon-magazine`` / ``amazon-videogames``):

* ``<name>.inter``: ``user_id:token item_id:token rating:float timestamp:float`` (every review row);
* ``<name>.item``: ``item_id:token category:token_seq brand:token`` for each reviewed item: the
  category path's levels as tokens (HTML entities decoded, spaces -> ``_``, in path order), the brand
  as one token (empty cells where an item has no metadata);
* ``<name>.coview`` / ``<name>.cobuy``: undirected item-item pairs from ``also_view`` / ``also_buy``,
  keeping only links whose both ends are reviewed items, once per unordered pair, no self loops.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ._common import (
    RANDOM_SPLIT_EVAL,
    Reporter,
    clean_text,
    clean_token,
    number_column,
    render_dataset_yaml,
    write_atomic,
    write_relation,
    write_yaml,
)
from ._read import iter_json_lines

KIND = "amazon-2018"
DEDUPE_CHOICES = ("none", "exact", "first")
DEFAULT_NAMES = {"Magazine_Subscriptions": "amazon-magazine", "Video_Games": "amazon-videogames"}
RELATIONS = (("coview", "also_view"), ("cobuy", "also_buy"))
_ASIN = re.compile(r"[^\s\"]+")


def default_name(category: str) -> str:
    """Output dataset name for an Amazon 2018 category (``Video_Games`` -> ``amazon-videogames``)."""
    return DEFAULT_NAMES.get(category, "amazon-" + re.sub(r"[^a-z0-9]+", "", category.lower()))


def find_files(raw_dir: Path, category: str | None) -> tuple[str, Path, Path]:
    """The category and its (reviews, metadata) files in ``raw_dir``."""
    raw_dir = Path(raw_dir)
    hint = (
        "pass --raw the folder holding <Category>_5.json.gz and meta_<Category>.json.gz "
        "(e.g. ../shared/data/amazon-magazine-2018/raw)"
    )
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{KIND}: raw folder {raw_dir} not found: {hint}")
    if category is None:
        found = sorted(
            {
                p.name[: -len(suffix)]
                for suffix in ("_5.json.gz", "_5.json")
                for p in raw_dir.glob(f"*{suffix}")
            }
        )
        if not found:
            raise FileNotFoundError(f"{KIND}: no *_5.json.gz reviews file in {raw_dir}: {hint}")
        if len(found) > 1:
            raise ValueError(f"{KIND}: several categories in {raw_dir} ({', '.join(found)}): pass --category")
        category = found[0]

    def pick(stem: str) -> Path:
        for suffix in (".json.gz", ".json"):
            path = raw_dir / f"{stem}{suffix}"
            if path.is_file():
                return path
        raise FileNotFoundError(f"{KIND}: raw file {raw_dir / (stem + '.json.gz')} not found: {hint}")

    return category, pick(f"{category}_5"), pick(f"meta_{category}")


def dataset_yaml(name: str) -> str:
    return render_dataset_yaml(
        name,
        "amazon_2018",
        rating_field="rating",
        time_field="timestamp",
        load_col={
            "inter": ["user_id", "item_id", "rating", "timestamp"],
            "item": ["item_id", "category", "brand"],
        },
        aux_relations={rel: {"suffix": rel, "space": "item", "directed": False} for rel, _ in RELATIONS},
        category_field="category",
        aux_tasks=[rel for rel, _ in RELATIONS],
        eval_args=RANDOM_SPLIT_EVAL,
        tasks_comment="the paper's tasks for Amazon 2018 Video Games",
        extra_command=f"{KIND} --name {name}",
    )


def _need(obj: dict, key: str, path: Path, n: int):
    if key not in obj:
        raise ValueError(f"{path}: line {n}: field {key!r} is missing")
    return obj[key]


def _number(value, kind: type, path: Path, n: int, field: str):
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = kind(value)
        if not np.isfinite(number):
            raise ValueError
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a finite number"
        raise ValueError(f"{path}: line {n}: field {field!r}: cannot parse {value!r} as {what}") from None
    return number


def _read_reviews(path: Path, rep: Reporter) -> pd.DataFrame:
    users, items, ratings, times = [], [], [], []
    for n, obj in rep.progress(iter_json_lines(path), f"reading {path.name}", unit="reviews"):
        user, asin = _need(obj, "reviewerID", path, n), _need(obj, "asin", path, n)
        rating, ts = _need(obj, "overall", path, n), _need(obj, "unixReviewTime", path, n)
        for field, value in (("reviewerID", user), ("asin", asin)):
            if not isinstance(value, str) or not _ASIN.fullmatch(value):
                raise ValueError(f"{path}: line {n}: field {field!r}: {value!r} is not an id string")
        rating = _number(rating, float, path, n, "overall")
        ts = _number(ts, int, path, n, "unixReviewTime")
        users.append(user)
        items.append(asin)
        ratings.append(rating)
        times.append(ts)
    return pd.DataFrame(
        {
            "user_id": np.array(users, dtype=object),
            "item_id": np.array(items, dtype=object),
            "rating": number_column(np.array(ratings, dtype=np.float64)),
            "timestamp": np.array(times, dtype=np.int64),
        }
    )


def _read_meta(path: Path, wanted: set[str], rep: Reporter) -> tuple[dict[str, dict], int, int]:
    """Metadata of the wanted ASINs (first record of each); also the record count and repeats."""
    meta: dict[str, dict] = {}
    seen: set[str] = set()
    records = repeats = 0
    for n, obj in rep.progress(iter_json_lines(path), f"reading {path.name}", unit="records"):
        asin = _need(obj, "asin", path, n)
        if not isinstance(asin, str) or not _ASIN.fullmatch(asin):
            raise ValueError(f"{path}: line {n}: field 'asin': {asin!r} is not an id string")
        records += 1
        if asin in seen:
            repeats += 1
            continue
        seen.add(asin)
        if asin not in wanted:
            continue
        entry = {}
        for key in ("also_view", "also_buy", "category"):
            value = obj.get(key, [])
            if value is None or value == "":
                value = []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(
                    f"{path}: line {n}: field {key!r}: expected a list of strings, got {value!r:.80}"
                )
            entry[key] = value
        brand = obj.get("brand", "")
        if not isinstance(brand, str | type(None)):
            raise ValueError(f"{path}: line {n}: field 'brand': expected a string, got {brand!r:.80}")
        entry["brand"] = brand or ""
        meta[asin] = entry
    return meta, records, repeats


def convert_amazon_2018(
    raw_dir: str | Path,
    out_dir: str | Path,
    yaml_dir: str | Path | Literal[False] | None = None,
    *,
    category: str | None = None,
    name: str | None = None,
    dedupe: str = "none",
    verbose: bool = False,
) -> dict:
    """Convert one Amazon 2018 category (5-core reviews + metadata); returns the counts written.

    ``category``: e.g. ``Magazine_Subscriptions`` or ``Video_Games`` (detected when the folder holds a
    single ``*_5.json.gz``). ``dedupe`` as for Epinions: ``none`` keeps every review row.
    """
    if dedupe not in DEDUPE_CHOICES:
        raise ValueError(f"dedupe must be one of {DEDUPE_CHOICES}, not {dedupe!r}")
    category, reviews_path, meta_path = find_files(Path(raw_dir), category)
    name = name or default_name(category)
    rep = Reporter(name, verbose)
    rep.note("category", category)
    out = Path(out_dir) / name

    inter = _read_reviews(reviews_path, rep)
    rep.note("review rows", len(inter))
    rep.note("repeated (user, item) pairs", int(inter.duplicated(["user_id", "item_id"]).sum()))
    if dedupe == "exact":
        dup = inter.duplicated()
        rep.drop("inter: exact duplicate row (dedupe=exact)", dup.sum())
        inter = inter[~dup]
    elif dedupe == "first":
        dup = inter.duplicated(["user_id", "item_id"])
        rep.drop("inter: repeated (user, item) pair (dedupe=first)", dup.sum())
        inter = inter[~dup]
    items = pd.unique(inter["item_id"])
    item_set = set(items.tolist())

    meta, records, repeats = _read_meta(meta_path, item_set, rep)
    rep.note("metadata records", records)
    rep.note("repeated metadata records (first kept)", repeats)
    rep.note("reviewed items without metadata", len(item_set - meta.keys()))

    # item features
    categories, brands = [], []
    for asin in items:
        entry = meta.get(asin)
        if entry is None:
            categories.append("")
            brands.append("")
            continue
        tokens = [t for t in (clean_token(level) for level in entry["category"]) if t]
        categories.append(" ".join(dict.fromkeys(tokens)))
        brands.append(clean_text(entry["brand"]))
    all_tokens = {t for cell in categories for t in cell.split()}
    rep.note(
        "distinct leaf categories (last path level)", len({cell.split()[-1] for cell in categories if cell})
    )
    rep.note("reviewed items with a category path", sum(1 for cell in categories if cell))
    rep.note("reviewed items with a brand", sum(1 for b in brands if b))

    # item-item relations among the reviewed items
    c = rep.counts
    for rel, key in RELATIONS:
        src, tgt = [], []
        for asin in items:
            entry = meta.get(asin)
            if entry is not None:
                src += [asin] * len(entry[key])
                tgt += entry[key]
        src_a, tgt_a = np.array(src, dtype=object), np.array(tgt, dtype=object)
        inside = np.array([t in item_set for t in tgt], dtype=bool)
        rep.note(f"{rel}: {key} entries of reviewed items", len(src))
        rep.drop(f"{rel}: target is not a reviewed item", (~inside).sum())
        src_a, tgt_a = src_a[inside], tgt_a[inside]
        loop = src_a == tgt_a
        rep.drop(f"{rel}: self-loop", loop.sum())
        links = pd.DataFrame({"s": src_a[~loop], "t": tgt_a[~loop]})
        dup = links.duplicated()
        rep.drop(f"{rel}: duplicate entry", dup.sum())
        links = links[~dup]
        lo = np.where(links["s"] <= links["t"], links["s"], links["t"])
        hi = np.where(links["s"] <= links["t"], links["t"], links["s"])
        pairs = pd.DataFrame({"s": lo, "t": hi})
        rev = pairs.duplicated()
        rep.drop(f"{rel}: reverse of a link already written (undirected)", rev.sum())
        pairs = pairs[~rev].sort_values(["s", "t"])
        c["relations"][rel] = write_relation(
            out / f"{name}.{rel}", pairs["s"].to_numpy(), pairs["t"].to_numpy()
        )
        rep.note(f"{rel}: items covered", int(pd.unique(pairs[["s", "t"]].to_numpy().ravel()).size))

    cols = [("user_id", "token"), ("item_id", "token"), ("rating", "float"), ("timestamp", "float")]
    c["interactions"] = write_atomic(out / f"{name}.inter", cols, {k: inter[k].to_numpy() for k, _ in cols})
    c["items"] = write_atomic(
        out / f"{name}.item",
        [("item_id", "token"), ("category", "token_seq"), ("brand", "token")],
        {
            "item_id": items,
            "category": np.array(categories, dtype=object),
            "brand": np.array(brands, dtype=object),
        },
    )
    c["users"] = int(inter["user_id"].nunique())
    c["categories"] = len(all_tokens)
    c["files"] += [str(out / f"{name}.{s}") for s in ("inter", "item", "coview", "cobuy")]
    write_yaml(yaml_dir, name, dataset_yaml(name), rep, out)
    return rep.finish()
