"""Strict input (issue 12, parts 2 and 3): malformed atomic rows are errors naming file, line, field and
value; rows RecBole's filters drop are counted in the log; a converted dataset is found from any working
directory (its yaml lies beside the atomic files); relation files no config declares are named in a warning;
a raw file whose last line is cut is an error. Everything on tiny files written into tmp_path."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import recbole
from recbole.data.dataset import Dataset
from recbole.utils import FeatureSource

from recbole_pmtrec import Config, create_dataset, run_recbole_pmtrec
from recbole_pmtrec.data import AuxDataset
from recbole_pmtrec.data.atomic import read_atomic, strict_dataset_class
from recbole_pmtrec.data.convert import convert_lastfm
from recbole_pmtrec.data.convert.__main__ import main as convert_main
from recbole_pmtrec.data.convert._read import check_last_line
from recbole_pmtrec.data.multilabel import MultiLabelDataset

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
GOOD_ROWS = [f"u{u}\ti{i}\t{(u + i) % 5 + 1}\t{100 * u + i}" for u in range(1, 6) for i in range(1, 6)]
ITEM = "item_id:token\tgenre:token_seq\tprice:float\n" + "".join(
    f"i{i}\tg{i % 2} g9\t{i}.5\n" for i in range(1, 6)
)
LOAD_COL = {"inter": ["user_id", "item_id", "rating", "timestamp"], "item": ["item_id", "genre", "price"]}


def write_dataset(root: Path, name: str = "toy", inter: str | None = None, **files: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    text = inter if inter is not None else INTER_HEADER + "\n".join(GOOD_ROWS) + "\n"
    (folder / f"{name}.inter").write_bytes(text.encode("utf-8"))
    for suffix, content in {"item": ITEM, **files}.items():
        (folder / f"{name}.{suffix}").write_bytes(content.encode("utf-8"))
    return folder


def toy_config(fast_config, root: Path, model: str = "BPR", name: str = "toy", **overrides) -> Config:
    config_dict = {**fast_config, "data_path": str(root), "load_col": LOAD_COL, **overrides}
    return Config(model, name, config_dict=config_dict)


def inter_with(row: str, at: int = 3, end: str = "\n") -> str:
    """The good .inter file with ``row`` replacing data row ``at`` (file line ``at + 2``)."""
    rows = list(GOOD_ROWS)
    rows[at] = row
    return INTER_HEADER + "\n".join(rows) + end


# ---------------------------------------------------------------------------------- malformed rows


@pytest.mark.parametrize(
    ("row", "message"),
    [
        # missing last column: RecBole would fill the timestamp with the column mean
        (
            "u1\ti4\t3",
            r"toy\.inter: line 5: 3 fields where the header has 4 .*field 'timestamp' is missing \(or an earlier one, shifting the rest left\) in 'u1\\ti4\\t3'",
        ),
        # missing middle column (the item): RecBole would shift it to item "3", rating 881250949
        (
            "u1\t3\t881250949",
            r"toy\.inter: line 5: 3 fields .*field 'timestamp' is missing \(or an earlier one, shifting the rest left\) in 'u1\\t3\\t881250949'",
        ),
        (
            "u1\ti4\t3\t104\t7",
            r"toy\.inter: line 5: 5 fields where the header has 4 .*extra field after 'timestamp'",
        ),
        ("\ti4\t3\t104", r"toy\.inter: line 5: field 'user_id' is empty"),
        ("u1\t\t3\t104", r"toy\.inter: line 5: field 'item_id' is empty"),
        (
            "u1\tNA\t3\t104",
            r"toy\.inter: line 5: field 'item_id' = 'NA' is a missing-value marker, not an id",
        ),
        ("u1\ti4\tthree\t104", r"toy\.inter: line 5: field 'rating' = 'three' is not a finite number"),
        ("u1\ti4\t3\t1e400", r"toy\.inter: line 5: field 'timestamp' = '1e400' is not a finite number"),
        ("u1\ti4\t\t104", r"toy\.inter: line 5: field 'rating' = '' is missing .*fill_nan_float: mean"),
    ],
)
def test_malformed_inter_row_names_file_line_field_value(fast_config, tmp_path, row, message):
    write_dataset(tmp_path, inter=inter_with(row))
    config = toy_config(fast_config, tmp_path)
    with pytest.raises(ValueError, match=message):
        create_dataset(config)
    plain = Config(
        "BPR", "toy", config_dict={**fast_config, "data_path": str(tmp_path), "load_col": LOAD_COL}
    )
    with pytest.raises(ValueError, match=message):  # a plugin dataset class reads through the same reader
        AuxDataset(plain)


def test_cut_last_line_is_named(fast_config, tmp_path):
    write_dataset(tmp_path, inter=inter_with("u5\ti5\t4", at=len(GOOD_ROWS) - 1, end=""))
    line = len(GOOD_ROWS) + 1
    with pytest.raises(
        ValueError, match=rf"toy\.inter: line {line}: 3 fields .*'timestamp' is missing.*looks cut"
    ):
        create_dataset(toy_config(fast_config, tmp_path))
    # a complete last line without a newline is fine
    write_dataset(tmp_path, inter=inter_with(GOOD_ROWS[-1], at=len(GOOD_ROWS) - 1, end=""))
    assert create_dataset(toy_config(fast_config, tmp_path)).inter_num == len(GOOD_ROWS)


@pytest.mark.parametrize(
    ("suffix", "content", "message"),
    [
        ("item", "item_id:token\tgenre:token_seq\tprice:float\ni1\tg1\t1\ni2\tg2\n", r"toy\.item: line 3: 2 fields"),
        ("item", "item_id:token\tgenre:token_seq\tprice:float\ni1\tg1\t1\ni2\tg2\tcheap\n", r"toy\.item: line 3: field 'price' = 'cheap'"),
        ("item", "item_id:token\tgenre:token_seq\tprice:float\n\tg1\t1\n", r"toy\.item: line 2: field 'item_id' is empty"),
        ("item", "item_id:token\tgenre:tokens\tprice:float\ni1\tg1\t1\n", r"toy\.item: line 1 \(header\): field 'genre' has unknown type 'tokens'"),
        ("user", "user_id:token\tage:float\nu1\t20\nu2\t3O\n", r"toy\.user: line 3: field 'age' = '3O' is not a finite number"),
        ("user", "user_id:token\tscores:float_seq\nu1\t1 2\nu2\t1 x\n", r"toy\.user: line 3: field 'scores' = '1 x' holds 'x'"),
    ],
)  # fmt: skip
def test_malformed_item_and_user_rows(fast_config, tmp_path, suffix, content, message):
    write_dataset(tmp_path, **{suffix: content})
    config = toy_config(fast_config, tmp_path, load_col={**LOAD_COL, "user": "*"})
    with pytest.raises(ValueError, match=message):
        create_dataset(config)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "source_id:token\ttarget_id:token\nu1\tu2\nu2\n",
            r"toy\.net: line 3: 1 fields where the header has 2",
        ),
        (
            "source_id:token\ttarget_id:token\nu1\tu2\nu2\tu3\tu4\n",
            r"toy\.net: line 3: 3 fields .*extra field",
        ),
        ("source_id:token\ttarget_id:token\nu1\t\n", r"toy\.net: line 2: field 'target_id' is empty"),
        (
            "source_id:token\ttarget_id:token\tweight:float\nu1\tu2\tx\n",
            r"toy\.net: line 2: field 'weight' = 'x'",
        ),
        (
            "source_id:token\ttarget_id:token\tweight:float\nu1\tu2\t\n",
            r"toy\.net: line 2: field 'weight' = '' is missing",
        ),
        ("source_id:token\ttarget_id:token\nu1\tu2\nu2\tu3", None),  # complete last line, no newline: fine
    ],
)
def test_relation_file_goes_through_the_same_reader(fast_config, tmp_path, content, message):
    write_dataset(tmp_path, net=content)
    social = {"social": {"suffix": "net", "space": "user", "directed": True}}
    config = toy_config(fast_config, tmp_path, aux_relations=social, aux_tasks=["social"])
    if message is None:
        assert len(AuxDataset(config).relations["social"]) == 2
        return
    with pytest.raises(ValueError, match=message):
        AuxDataset(config)


def test_multilabel_dataset_reads_strictly(fast_config, tmp_path):
    header = "user_id:token\titem_id:token\tclick:float\tbuy:float\n"
    rows = [f"u{u}\ti{i}\t{(u + i) % 2}\t0" for u in range(1, 4) for i in range(1, 4)]
    rows[4] = "u2\ti2\t1"
    write_dataset(tmp_path, name="mtl", inter=header + "\n".join(rows) + "\n")
    config = Config(
        "MMoE",
        "mtl",
        config_dict={
            **fast_config,
            "data_path": str(tmp_path),
            "load_col": {"inter": ["user_id", "item_id", "click", "buy"]},
            "LABEL_FIELD": "click",
            "task_labels": ["click", "buy"],
        },
    )
    with pytest.raises(ValueError, match=r"mtl\.inter: line 6: 3 fields .*field 'buy' is missing"):
        MultiLabelDataset(config)


# ---------------------------------------------------------------------------------- fill_nan_float


def test_fill_nan_float_policies(fast_config, tmp_path):
    write_dataset(tmp_path, inter=inter_with("u1\ti4\t\t104"))
    ratings = [float(r.split("\t")[2]) for i, r in enumerate(GOOD_ROWS) if i != 3]

    mean = create_dataset(toy_config(fast_config, tmp_path, fill_nan_float="mean"))
    row = _row(mean, "u1", "i4")
    assert row["rating"] == pytest.approx(np.mean(ratings))  # RecBole's own fill, asked for
    zero = create_dataset(toy_config(fast_config, tmp_path, fill_nan_float="zero"))
    assert _row(zero, "u1", "i4")["rating"] == 0.0
    with pytest.raises(ValueError, match="fill_nan_float must be one of error, mean, zero, not 'median'"):
        create_dataset(toy_config(fast_config, tmp_path, fill_nan_float="median"))


def _row(dataset, user, item):
    frame = dataset.inter_feat
    users = dataset.field2id_token["user_id"][frame["user_id"].to_numpy()]
    items = dataset.field2id_token["item_id"][frame["item_id"].to_numpy()]
    return frame[(users == user) & (items == item)].iloc[0]


# ---------------------------------------------------------------------------------- RecBole's frames


def test_a_clean_file_reads_as_recbole_reads_it(fast_config, tmp_path):
    """Same frame as RecBole's own ``_load_feat`` (dtypes, token strings, NaN tokens, sequences), also with
    blank lines, CRLF, quoted cells, missing non-id tokens and repeated spaces inside a token_seq."""
    item = (
        "item_id:token\ttitle:token_seq\tbrand:token\tprice:float\tvec:float_seq\r\n"
        'i1\tThe  Big "One"\tacme\t1.25\t0.5 1\r\n'
        "i2\t\tNA\t2\t\r\n"
        "\r\n"
        'i3\t"quoted\ttab"\t\t3e2\t-1 2.5e-3\r\n'
        "i4\tx y z\tNone\t0.1\t3\r\n"
    )
    write_dataset(tmp_path, item=item)
    config = toy_config(fast_config, tmp_path, load_col={"inter": LOAD_COL["inter"], "item": "*"})
    ours = strict_dataset_class(Dataset).__new__(strict_dataset_class(Dataset))
    theirs = Dataset.__new__(Dataset)
    for dataset in (ours, theirs):
        dataset.config, dataset.dataset_name, dataset.logger = config, "toy", logging.getLogger()
        dataset._get_preset()
        dataset._get_field_from_config()
    path = tmp_path / "toy" / "toy.item"
    mine, recboles = (
        ours._load_feat(str(path), FeatureSource.ITEM),
        theirs._load_feat(str(path), FeatureSource.ITEM),
    )
    assert list(mine.columns) == list(recboles.columns) and list(mine.dtypes) == list(recboles.dtypes)
    for column in mine:
        for a, b in zip(mine[column], recboles[column]):
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and a.tolist() == b.tolist(), column
            else:
                assert (a == b) or (pd.isna(a) and pd.isna(b)), (column, a, b)
    assert mine["title"][2].tolist() == ["quoted\ttab"]  # a quoted cell may hold the separator
    assert mine["title"][0].tolist() == ["The", "Big", '"One"']  # a quote inside a cell is a character
    for attr in ("field2type", "field2source", "field2seqlen", "field2bucketnum"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr


def test_ml100k_files_parse_strictly():
    """ml-100k as shipped in RecBole's wheel (token_seq titles and classes) passes the strict reader."""
    folder = Path(recbole.__file__).parent / "dataset_example" / "ml-100k"
    suffixes = ("inter", "item", "user", "kg", "link")
    sizes = {suffix: len(read_atomic(folder / f"ml-100k.{suffix}").frame) for suffix in suffixes}
    assert sizes == {"inter": 100_000, "item": 1_682, "user": 943, "kg": 91_631, "link": 1_598}
    item = read_atomic(folder / "ml-100k.item")
    assert [(n, t.value) for n, t in item.header] == [
        ("item_id", "token"),
        ("movie_title", "token_seq"),
        ("release_year", "token"),
        ("class", "token_seq"),
    ]


# ---------------------------------------------------------------------------------- filter counts


def test_rows_dropped_by_recbole_filters_are_counted_per_reason(fast_config, tmp_path, caplog):
    rows = list(GOOD_ROWS)  # 5 users x 5 items, ratings (u + i) % 5 + 1
    rows += ["u1\ti1\t2\t999", "u1\ti2\t2\t998"]  # 2 repeated (user, item) pairs
    rows += ["u6\ti9\t4\t1"]  # item i9 has no row in .item
    rows += ["u7\ti1\t5\t1"]  # user u7: one interaction, below the interval [2, inf)
    write_dataset(tmp_path, inter=INTER_HEADER + "\n".join(rows) + "\n", item=ITEM + "i1\tg1\t9\n")
    caplog.set_level(logging.INFO)
    config = toy_config(
        fast_config,
        tmp_path,
        rm_dup_inter="first",
        val_interval={"rating": "[2,inf)"},
        user_inter_num_interval="[2,inf)",
    )
    dataset = create_dataset(config)
    below = sum(1 for r in GOOD_ROWS if float(r.split("\t")[2]) < 2)  # 5 rows of rating 1
    counts = dataset.filter_counts
    assert counts["toy.inter"] == {
        "repeated (user, item) pair (rm_dup_inter)": 2,
        "outside val_interval": below,
        "user or item without a row in .user / .item (filter_inter_by_user_or_item)": 1,
        "interaction-count filter / k-core (user_inter_num_interval, item_inter_num_interval)": 1,
    }
    assert counts["toy.item"] == {"repeated item_id (first row kept)": 1}
    assert dataset.inter_num == len(GOOD_ROWS) - below
    text = "\n".join(r.getMessage() for r in caplog.records)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    total = 2 + below + 1 + 1
    assert (
        f"Rows dropped from toy.inter: {total} (2 repeated (user, item) pair (rm_dup_inter), {below} outside val_interval"
        in plain
    )
    assert (
        "1 user or item without a row in .user / .item" in plain
        and "1 interaction-count filter / k-core" in plain
    )
    assert "Rows dropped from toy.item: 1 (1 repeated item_id (first row kept))" in plain
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "toy.inter" in r.getMessage()]
    assert warned  # ids missing from .item are a data inconsistency: a warning


def test_knowledge_graph_filters_are_counted_too(fast_config, caplog):
    """A built-in knowledge-based model (CKE) gets RecBole's KnowledgeBasedDataset behind the strict reader;
    interactions whose item has no entity in ml-100k.link are counted."""
    caplog.set_level(logging.INFO)
    dataset = create_dataset(Config("CKE", "ml-100k", config_dict=fast_config))
    assert type(dataset).__name__ == "StrictKnowledgeBasedDataset"
    assert dataset.filter_counts == {
        "ml-100k.inter": {"item without an entity in .link": 100_000 - dataset.inter_num}
    }
    assert dataset.inter_num < 100_000
    from recbole.data.dataset import SequentialDataset

    from recbole_pmtrec.data import atomic

    # any RecBole dataset class has its strict twin by name (a pickled strict dataset unpickles anywhere)
    assert atomic.StrictSequentialDataset.__mro__[1:3] == (atomic.StrictAtomicMixin, SequentialDataset)
    assert any("Rows dropped from ml-100k.inter" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------- undeclared relations


def test_undeclared_relation_files_are_named_in_a_warning(fast_config, tmp_path, caplog):
    write_dataset(
        tmp_path,
        net="source_id:token\ttarget_id:token\nu1\tu2\n",
        cobuy="source_id:token\ttarget_id:token\ni1\ti2\n",
    )
    caplog.set_level(logging.WARNING)
    create_dataset(toy_config(fast_config, tmp_path))
    warnings = [
        re.sub(r"\x1b\[[0-9;]*m", "", r.getMessage())
        for r in caplog.records
        if "not loaded" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert (
        str(tmp_path / "toy" / "toy.net") in warnings[0]
        and str(tmp_path / "toy" / "toy.cobuy") in warnings[0]
    )
    assert "toy.coview" not in warnings[0]

    caplog.clear()  # declared: no warning for that file
    social = {"social": {"suffix": "net", "space": "user", "directed": True}}
    create_dataset(toy_config(fast_config, tmp_path, aux_relations=social, aux_tasks=["social"]))
    warnings = [r.getMessage() for r in caplog.records if "Relation files not loaded" in r.getMessage()]
    assert len(warnings) == 1 and "toy.net" not in warnings[0] and "toy.cobuy" in warnings[0]


# ---------------------------------------------------------------------------------- converted data anywhere


def write_lastfm_raw(raw: Path, cut: bool = False) -> Path:
    """A tiny HetRec Last.fm: 8 users x 6 artists each (of 12), friends in a ring, tags on 8 artists."""
    raw.mkdir(parents=True, exist_ok=True)
    listens = [(u, 100 + (u + k) % 12, 10 * u + k + 1) for u in range(1, 9) for k in range(6)]
    text = "userID\tartistID\tweight\n" + "".join(f"{u}\t{a}\t{w}\n" for u, a, w in listens)
    if cut:
        text = text[: text.rstrip("\n").rfind("\t")]  # the last line loses its weight and its newline
    (raw / "user_artists.dat").write_text(text)
    friends = [(u, u % 8 + 1) for u in range(1, 9)]
    (raw / "user_friends.dat").write_text(
        "userID\tfriendID\n" + "".join(f"{a}\t{b}\n{b}\t{a}\n" for a, b in friends)
    )
    tagged = [(1 + a % 8, 100 + a, 1 + a % 3) for a in range(8)]
    (raw / "user_taggedartists.dat").write_text(
        "userID\tartistID\ttagID\tday\tmonth\tyear\n"
        + "".join(f"{u}\t{a}\t{t}\t1\t1\t2009\n" for u, a, t in tagged)
    )
    (raw / "tags.dat").write_bytes("tagID\ttagValue\n1\trock\n2\tm\xe9tal\n3\tjazz\n".encode("latin-1"))
    return raw


def test_converted_dataset_runs_from_another_directory(fast_config, tmp_path, monkeypatch):
    """Convert from one folder, run PMTRec from another: the yaml beside the atomic files brings the social
    relation (no shipped yaml knows the name ``toyfm``; without it PMTRec would train main + DirectAU)."""
    from recbole_pmtrec.model import PMTRec

    raw = write_lastfm_raw(tmp_path / "raw")
    converting = tmp_path / "converting"
    converting.mkdir()
    monkeypatch.chdir(converting)
    assert convert_main(["lastfm", "--raw", str(raw), "--out", "converted", "--name", "toyfm", "-q"]) == 0
    folder = converting / "converted" / "toyfm"
    assert (folder / "toyfm.yaml").is_file() and (folder / "toyfm.net").is_file()
    assert not (converting / "properties").exists()

    running = tmp_path / "running"
    running.mkdir()
    monkeypatch.chdir(running)
    built = []
    original = PMTRec.__init__

    def remember(self, config, dataset):
        original(self, config, dataset)
        built.append(self)

    monkeypatch.setattr(PMTRec, "__init__", remember)
    settings = {
        **fast_config,
        "data_path": str(converting / "converted"),
        "embedding_size": 8,
        "train_batch_size": 16,
        "eval_batch_size": 64,
        "topk": [5],
        "metrics": ["Recall"],
        "valid_metric": "Recall@5",
    }
    result = run_recbole_pmtrec("PMTRec", "toyfm", config_dict=settings, saved=False)
    assert "social" in built[0].task_names and "category" in built[0].task_names
    assert result["test_result"]["recall@5"] >= 0

    config = Config("PMTRec", "toyfm", config_dict={**settings, "aux_tasks": ["social"]})
    assert config["aux_relations"] == {"social": {"suffix": "net", "space": "user", "directed": False}}
    assert config["aux_tasks"] == ["social"]  # the config dict stays above the dataset folder's yaml


def test_dataset_folder_yaml_sits_above_the_shipped_one(fast_config, tmp_path):
    """``lastfm`` has a shipped yaml; a converted copy's own yaml (here edited) wins, a config file wins over it."""
    folder = tmp_path / "lastfm"
    folder.mkdir()
    (folder / "lastfm.yaml").write_text("aux_tasks: [social]\ncategory_field: ~\n")
    config = Config("PMTRec", "lastfm", config_dict={**fast_config, "data_path": str(tmp_path)})
    assert config["aux_tasks"] == ["social"] and config["category_field"] is None
    assert config["aux_relations"]["social"]["suffix"] == "net"  # the shipped yaml's keys still apply
    other = tmp_path / "mine.yaml"
    other.write_text("aux_tasks: [directau]\n")
    config = Config(
        "PMTRec", "lastfm", config_file_list=[str(other)], config_dict={"data_path": str(tmp_path)}
    )
    assert config["aux_tasks"] == ["directau"]


def test_cut_raw_file_is_an_error(tmp_path):
    raw = write_lastfm_raw(tmp_path / "raw", cut=True)
    with pytest.raises(
        ValueError, match=r"user_artists\.dat: line 49: .*field 'weight' is missing.*looks cut"
    ):
        convert_lastfm(raw, tmp_path / "out")
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("a,b,click\n1,2,0\n3,4")
    with pytest.raises(
        ValueError, match=r"labels\.csv: line 3: the last line has 2 of 3 fields and no newline"
    ):
        check_last_line(csv_file, ",", 3)
    csv_file.write_text("a,b,click\n1,2,0\n3,4,1")  # complete, no newline: fine (the Ali-CCP samples end so)
    check_last_line(csv_file, ",", 3)
