"""Converters raw -> RecBole atomic files (recbole_pmtrec.data.convert).

Real-data tests run each converter on ``../shared/data/<dataset>/raw`` (or ``$RECBOLE_PMTREC_SHARED_DATA``)
and compare the counts with the numbers stated in that dataset's SOURCE.md, hard-coded here as the
independent reference. They skip when the data is absent. Bad-input tests use tiny files in tmp_path.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from recbole_pmtrec.data.convert import (
    CONVERTERS,
    convert_amazon_2018,
    convert_amazon_hin,
    convert_epinions,
    convert_lastfm,
    convert_office,
)
from recbole_pmtrec.data.convert.__main__ import main as cli_main
from recbole_pmtrec.data.convert._common import undirected_pairs
from recbole_pmtrec.data.convert._read import read_table
from recbole_pmtrec.data.convert.amazon_2018 import default_name

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMMITTED_YAML = PROJECT_ROOT / "properties" / "dataset"
ATOMIC_TYPES = {"token", "token_seq", "float", "float_seq"}


def shared_data() -> Path:
    env = os.environ.get("RECBOLE_PMTREC_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def raw_dir(folder: str) -> Path:
    path = shared_data() / folder / "raw"
    if not path.is_dir():
        pytest.skip(
            f"real dataset {folder!r} not found at {path} (expected ../shared/data beside the project root, "
            "or set RECBOLE_PMTREC_SHARED_DATA)"
        )
    return path


# --------------------------------------------------------------------------------------------------
# reading atomic files back the way RecBole 1.2.1 does (Dataset._load_feat)


def read_atomic(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Header ``name:type`` cells, tab separated body, default quoting, token -> str, float -> float64,
    token_seq split on spaces (an empty cell is an empty list). Same pandas call as RecBole's
    ``_load_feat`` except the (faster, equivalent) C engine."""
    with open(path, encoding="utf-8") as f:
        head = f.readline()
    assert head.endswith("\n") and not head.endswith("\r\n"), f"{path}: header must end with LF"
    types = {}
    for cell in head[:-1].split("\t"):
        name, ftype = cell.split(":")
        assert ftype in ATOMIC_TYPES, f"{path}: unsupported type {ftype!r}"
        types[name] = ftype
    dtype = {f"{n}:{t}": (np.float64 if t == "float" else str) for n, t in types.items()}
    df = pd.read_csv(path, delimiter="\t", dtype=dtype, encoding="utf-8")
    df.columns = list(types)
    for name, ftype in types.items():
        if ftype == "token_seq":
            df[name] = [list(filter(None, v.split(" "))) for v in df[name].fillna("").values]
        elif ftype == "token":
            assert not df[name].isna().any() or name not in ("user_id", "item_id", "source_id", "target_id")
    return df, types


def check_relation(path: Path, ids: set[str], directed: bool) -> pd.DataFrame:
    df, types = read_atomic(path)
    assert types == {"source_id": "token", "target_id": "token"}
    assert set(df["source_id"]) <= ids and set(df["target_id"]) <= ids, f"{path}: id not in .inter"
    assert not (df["source_id"] == df["target_id"]).any(), f"{path}: self loop"
    assert not df.duplicated().any(), f"{path}: duplicate row"
    if not directed:  # once per unordered pair
        key = np.where(df["source_id"] < df["target_id"], df["source_id"] + "|" + df["target_id"], "")
        rev = np.where(df["source_id"] > df["target_id"], df["target_id"] + "|" + df["source_id"], "")
        both = pd.Series(np.concatenate([key[key != ""], rev[rev != ""]]))
        assert not both.duplicated().any(), f"{path}: a pair is written in both directions"
    return df


def check_yaml(yaml_dir: Path, name: str, files: dict[str, Path]) -> dict:
    """The generated yaml parses, names loadable fields, matches the committed one; the converter wrote it
    beside the atomic files too (where runs find it), with the same text."""
    text = (yaml_dir / f"{name}.yaml").read_text(encoding="utf-8")
    beside = next(iter(files.values())).parent / f"{name}.yaml"
    assert beside.read_text(encoding="utf-8") == text
    conf = yaml.safe_load(text)
    for source, cols in conf["load_col"].items():
        suffix = "train.inter" if (source == "inter" and conf.get("benchmark_filename")) else source
        _, types = read_atomic(files[suffix])
        assert set(cols) <= set(types), f"{name}.yaml load_col {source}: {cols} not all in {types}"
    for rel, spec in (conf.get("aux_relations") or {}).items():
        assert set(spec) == {"suffix", "space", "directed"} and spec["space"] in ("user", "item")
        assert files[spec["suffix"]].is_file(), rel
    if conf.get("category_field"):
        _, types = read_atomic(files["item"])
        assert types[conf["category_field"]] == "token_seq"
    assert "/work" not in text and "\\" not in text  # no absolute paths of this machine
    committed = COMMITTED_YAML / f"{name}.yaml"
    assert committed.is_file(), f"commit the generated {committed.name} under properties/dataset/"
    assert committed.read_text(encoding="utf-8") == text, (
        f"properties/dataset/{name}.yaml is stale: regenerate it"
    )
    return conf


# --------------------------------------------------------------------------------------------------
# real data


@pytest.fixture(scope="module")
def epinions(tmp_path_factory):
    raw = raw_dir("epinions")
    out = tmp_path_factory.mktemp("epinions")
    counts = convert_epinions(raw, out / "dataset", out / "yaml")
    return counts, out


def test_epinions_counts_match_source(epinions):
    counts, out = epinions
    # Reference: ../shared/data/epinions/SOURCE.md ("Counts" and "File formats")
    assert counts["users"] == 22_164  # distinct users with ratings (max id 22,166; 20819 and 21354 absent)
    assert counts["items"] == 296_277
    assert counts["interactions"] == 922_267  # every row kept: the paper's Table 1 count
    assert counts["notes"]["repeated (user, item) pairs"] == 922_267 - 912_441  # 9,826 repeats
    assert counts["categories"] == 27
    assert counts["notes"]["distinct (item, category) pairs"] == 296_877
    assert counts["notes"]["items with several categories (all kept)"] == 577
    assert counts["notes"]["trust rows in trustnetwork.mat"] == 355_754
    assert counts["dropped"]["social: duplicate row"] == 27
    assert counts["dropped"]["social: self-loop"] == 224
    assert counts["notes"]["trust users without ratings"] == 1
    assert counts["dropped"]["social: user without ratings"] > 0
    assert counts["relations"]["social"] + sum(counts["dropped"].values()) == 355_754
    assert "helpfulness" not in (out / "dataset/epinions/epinions.inter").open().readline()  # 4 columns only


def test_epinions_files_parse_back(epinions):
    _, out = epinions
    d = out / "dataset" / "epinions"
    inter, types = read_atomic(d / "epinions.inter")
    assert types == {"user_id": "token", "item_id": "token", "rating": "float"}
    assert len(inter) == 922_267
    assert sorted(inter["rating"].value_counts().items()) == [
        (1.0, 52_967),
        (2.0, 68_807),
        (3.0, 119_763),
        (4.0, 290_952),
        (5.0, 389_778),
    ]  # SOURCE.md rating counts
    item, types = read_atomic(d / "epinions.item")
    assert types == {"item_id": "token", "category": "token_seq"}
    assert set(item["item_id"]) == set(inter["item_id"]) and item["item_id"].is_unique
    n_cat = item["category"].map(len)
    assert (n_cat >= 1).all() and int(n_cat.sum()) == 296_877 and int((n_cat > 1).sum()) == 577
    assert {c for cats in item["category"] for c in cats} == {str(i) for i in range(1, 28)}
    net = check_relation(d / "epinions.net", set(inter["user_id"]), directed=True)
    assert len(net) == epinions[0]["relations"]["social"]
    check_yaml(out / "yaml", "epinions", {s: d / f"epinions.{s}" for s in ("inter", "item", "net")})


def test_epinions_dedupe_options(epinions, tmp_path):
    counts = convert_epinions(raw_dir("epinions"), tmp_path, dedupe="first")
    assert counts["interactions"] == 912_441  # SOURCE.md: distinct (user, item) pairs
    assert counts["dropped"]["inter: repeated (user, item) pair (dedupe=first)"] == 9_826


@pytest.fixture(scope="module")
def office(tmp_path_factory):
    raw = raw_dir("amazon-office-graphau")
    out = tmp_path_factory.mktemp("office")
    return convert_office(raw, out / "dataset", out / "yaml"), out


def test_office_counts_and_files(office):
    counts, out = office
    # Reference: ../shared/data/amazon-office-graphau/SOURCE.md ("Counts"): the paper's 4,905 / 2,420 / 51,441
    assert (counts["users"], counts["items"], counts["interactions"]) == (4_905, 2_420, 51_441)
    assert counts["splits"] == {"train": 30_372, "valid": 10_466, "test": 10_603}
    assert counts["notes"]["items in valid/test but not in train"] == 7
    assert counts["notes"]["users in test"] == 4_606
    d = out / "dataset" / "office"
    parts = {}
    for part in ("train", "valid", "test"):
        parts[part], types = read_atomic(d / f"office.{part}.inter")
        assert types == {"user_id": "token", "item_id": "token", "rating": "float"}
    assert set(parts["test"]["rating"]) == {4.0, 5.0}  # the test split keeps only ratings > 3
    assert parts["train"]["rating"].value_counts().to_dict() == {
        5.0: 17_372,
        4.0: 8_477,
        3.0: 2_886,
        2.0: 1_001,
        1.0: 636,
    }
    allp = pd.concat(parts.values())
    assert allp["user_id"].nunique() == 4_905 and not allp.duplicated(["user_id", "item_id"]).any()
    assert not (d / "office.inter").exists()
    conf = check_yaml(out / "yaml", "office", {"train.inter": d / "office.train.inter"})
    assert conf["benchmark_filename"] == ["train", "valid", "test"]
    assert conf["aux_tasks"] == ["directau", "rating"] and "split" not in conf["eval_args"]


@pytest.fixture(scope="module")
def magazine(tmp_path_factory):
    raw = raw_dir("amazon-magazine-2018")
    out = tmp_path_factory.mktemp("magazine")
    return convert_amazon_2018(raw, out / "dataset", out / "yaml"), out


def test_amazon_magazine_counts_and_files(magazine):
    counts, out = magazine
    # Reference: ../shared/data/amazon-magazine-2018/SOURCE.md ("Counts")
    assert counts["dataset"] == "amazon-magazine"
    assert (counts["users"], counts["items"], counts["interactions"]) == (348, 157, 2_375)
    assert counts["notes"]["repeated (user, item) pairs"] == 2_375 - 2_302
    assert counts["notes"]["reviewed items without metadata"] == 6
    assert counts["notes"]["reviewed items with a category path"] == 145
    assert counts["relations"] == {"coview": 279, "cobuy": 500}  # undirected pairs among the review items
    assert counts["notes"]["metadata records"] == 3_385
    d = out / "dataset" / "amazon-magazine"
    inter, types = read_atomic(d / "amazon-magazine.inter")
    assert types == {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
    assert inter["rating"].value_counts().to_dict() == {5.0: 1_541, 4.0: 375, 3.0: 239, 2.0: 118, 1.0: 102}
    assert pd.to_datetime(inter["timestamp"].min(), unit="s").date().isoformat() == "2001-11-12"
    assert pd.to_datetime(inter["timestamp"].max(), unit="s").date().isoformat() == "2018-05-20"
    item, types = read_atomic(d / "amazon-magazine.item")
    assert types == {"item_id": "token", "category": "token_seq", "brand": "token"}
    assert set(item["item_id"]) == set(inter["item_id"]) and len(item) == 157
    assert int((item["category"].map(len) > 0).sum()) == 145
    assert all(c[0] == "Magazine_Subscriptions" for c in item["category"] if c)
    # SOURCE.md: 32 distinct second-level and 70 leaf strings; 13 and 8 of them are "&amp;" spellings of
    # others ("Fashion &amp; Style" / "Fashion & Style"), merged by the converter (HTML entities decoded)
    assert len({c[1] for c in item["category"] if len(c) > 1}) == 32 - 13
    assert counts["notes"]["distinct leaf categories (last path level)"] == 70 - 8
    items = set(inter["item_id"])
    for rel, n_items in (("coview", 112), ("cobuy", 121)):
        df = check_relation(d / f"amazon-magazine.{rel}", items, directed=False)
        assert len(set(df["source_id"]) | set(df["target_id"])) == n_items
    check_yaml(
        out / "yaml",
        "amazon-magazine",
        {s: d / f"amazon-magazine.{s}" for s in ("inter", "item", "coview", "cobuy")},
    )


@pytest.fixture(scope="module")
def hin(tmp_path_factory):
    raw = raw_dir("amazon-hin")
    out = tmp_path_factory.mktemp("hin")
    return convert_amazon_hin(raw, out / "dataset", out / "yaml"), out


def test_amazon_hin_counts_and_files(hin):
    counts, out = hin
    # Reference: ../shared/data/amazon-hin/SOURCE.md ("Counts")
    assert (counts["users"], counts["items"], counts["interactions"]) == (6_170, 2_753, 195_791)
    assert counts["relations"] == {"coview": 2_646}
    assert counts["categories"] == 22 and counts["notes"]["brands"] == 334
    assert counts["notes"]["view nodes"] == 3_857 and counts["notes"]["items with a view node"] == 1_435
    d = out / "dataset" / "amazon-hin"
    inter, types = read_atomic(d / "amazon-hin.inter")
    assert types == {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
    assert inter["rating"].value_counts().to_dict() == {
        5.0: 95_276,
        4.0: 50_954,
        3.0: 26_152,
        2.0: 13_304,
        1.0: 10_105,
    }
    item, types = read_atomic(d / "amazon-hin.item")
    assert types == {"item_id": "token", "category": "token_seq", "brand": "token_seq"}
    assert set(item["item_id"]) == set(inter["item_id"])
    n_cat = item["category"].map(len)
    assert int(n_cat.sum()) == 5_508
    assert n_cat.value_counts().to_dict() == {2: 2_734, 1: 9, 3: 9, 4: 1}
    assert (item["brand"].map(len) == 1).all()
    coview = check_relation(d / "amazon-hin.coview", set(inter["item_id"]), directed=False)
    assert len(set(coview["source_id"]) | set(coview["target_id"])) == 1_174
    check_yaml(out / "yaml", "amazon-hin", {s: d / f"amazon-hin.{s}" for s in ("inter", "item", "coview")})


@pytest.fixture(scope="module")
def lastfm(tmp_path_factory):
    raw = raw_dir("lastfm-hetrec2011")
    out = tmp_path_factory.mktemp("lastfm")
    return convert_lastfm(raw, out / "dataset", out / "yaml"), out


def test_lastfm_counts_and_files(lastfm):
    counts, out = lastfm
    # Reference: ../shared/data/lastfm-hetrec2011/SOURCE.md ("Counts")
    assert (counts["users"], counts["items"], counts["interactions"]) == (1_892, 17_632, 92_834)
    assert counts["relations"] == {"social": 12_717}  # 25,434 directed rows = 12,717 friendships
    assert counts["notes"]["friend rows without their reverse row"] == 0
    assert counts["notes"]["tag assignments"] == 186_479
    assert counts["notes"]["tags in tags.dat"] == 11_946
    assert counts["notes"]["distinct (artist, tag) pairs"] == 109_750
    assert counts["categories"] == 9_718
    d = out / "dataset" / "lastfm"
    inter, types = read_atomic(d / "lastfm.inter")
    assert types == {"user_id": "token", "item_id": "token", "weight": "float"}
    assert inter["weight"].min() == 1 and inter["weight"].max() == 352_698
    item, types = read_atomic(d / "lastfm.item")
    assert types == {"item_id": "token", "tags": "token_seq"}
    assert set(item["item_id"]) == set(inter["item_id"])
    n_tags = item["tags"].map(len)
    assert int(n_tags.sum()) == 108_437 and int((n_tags > 0).sum()) == 12_133
    assert int((n_tags == 0).sum()) == 17_632 - 12_133  # untagged artists: empty cell
    net = check_relation(d / "lastfm.net", set(inter["user_id"]), directed=False)
    assert len(set(net["source_id"]) | set(net["target_id"])) == 1_892  # every user has a friend
    check_yaml(out / "yaml", "lastfm", {s: d / f"lastfm.{s}" for s in ("inter", "item", "net")})


def test_recbole_loads_converted_files(magazine, lastfm, office):
    """RecBole 1.2.1's own Dataset reads the files and the generated yaml (token_seq, empty cells, split)."""
    from recbole.config import Config
    from recbole.data import create_dataset

    for (counts, out), name in ((magazine, "amazon-magazine"), (lastfm, "lastfm"), (office, "office")):
        config = Config(
            model="BPR",
            dataset=name,
            config_file_list=[str(out / "yaml" / f"{name}.yaml")],
            config_dict={"data_path": str(out / "dataset"), "show_progress": False, "state": "WARNING"},
        )
        ds = create_dataset(config)
        assert (ds.user_num - 1, ds.item_num - 1, ds.inter_num) == (
            counts["users"],
            counts["items"],
            counts["interactions"],
        )
        if name != "office":
            field = config["category_field"]
            assert ds.field2type[field].value == "token_seq"
            assert ds.num(field) - 1 == counts["categories"]


def test_cli_help_lists_datasets(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in CONVERTERS:
        assert name in text
    assert set(CONVERTERS) == {
        "epinions", "office", "amazon-2018", "amazon-hin", "lastfm", "census-income", "aliexpress", "ali-ccp"
    }  # fmt: skip


def test_cli_writes_files_yaml_and_counts(tmp_path, capsys):
    raw = raw_dir("amazon-office-graphau")
    code = cli_main(["office", "--raw", str(raw), "--out", str(tmp_path / "ds"), "-q"])
    assert code == 0
    out = capsys.readouterr().out
    assert "51,441" in out and "4,905" in out and "2,420" in out
    assert (tmp_path / "ds" / "office" / "office.valid.inter").is_file()
    assert (tmp_path / "ds" / "office" / "office.yaml").is_file()  # beside the atomic files
    assert not (tmp_path / "properties").exists()  # nothing written relative to the working directory


# --------------------------------------------------------------------------------------------------
# bad input: tiny raw files


def write_office(tmp_path: Path, train: str) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir(parents=True)
    (raw / "train.txt").write_text(train)
    (raw / "val.txt").write_text("0,1,4\n")
    (raw / "test.txt").write_text("0,2,5\n")
    return raw


@pytest.mark.parametrize(
    ("train", "line", "field"),
    [
        ("0,0,5\n1,1,4,9\n", 2, "extra field after 'rating'"),
        ("0,0,5\n1,1,4\n2,3\n", 3, "field 'rating' is missing"),
        ("0,0,5\n\n1,1,four\n", 3, "field 'rating'"),
        ("0,0,5\n1,x1,4\n", 2, "field 'item_id'"),
        ("0,0,5\n-1,1,4\n", 2, "field 'user_id'"),
        ("0,0,5\n1,1,\n", 2, "field 'rating'"),
    ],
)
def test_office_malformed_row(tmp_path, train, line, field):
    raw = write_office(tmp_path, train)
    with pytest.raises(ValueError) as exc:
        convert_office(raw, tmp_path / "out")
    msg = str(exc.value)
    assert "train.txt" in msg and f"line {line}:" in msg and field in msg


def test_missing_raw_file_names_file_and_flag(tmp_path):
    raw = write_office(tmp_path, "0,0,5\n")
    (raw / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"test\.txt.*--raw"):
        convert_office(raw, tmp_path / "out")
    for convert in (convert_epinions, convert_amazon_hin, convert_lastfm, convert_amazon_2018):
        with pytest.raises(FileNotFoundError, match="--raw"):
            convert(tmp_path / "nowhere", tmp_path / "out")


def test_cli_reports_bad_input(tmp_path, capsys):
    raw = write_office(tmp_path, "0,0,5\n1;1;4\n")
    assert cli_main(["office", "--raw", str(raw), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "train.txt: line 2:" in err and "field 'item_id' is missing" in err


def write_hin(tmp_path: Path, **override: str) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir(parents=True)
    files = {
        "user_item.dat": "0\t0\t5\t100\n1\t1\t4\t200\n1\t2\t3\t300\n",
        "item_view.dat": "0,0\n1,0\n2,0\n2,1\n1,1\n",
        "item_category.dat": "0,0\n0,1\n1,1\n2,0\n",
        "item_brand.dat": "0,0\n1,0\n2,1\n",
    }
    files.update({k.replace("_dat", ".dat"): v for k, v in override.items()})
    for name, text in files.items():
        (raw / name).write_text(text)
    return raw


def test_amazon_hin_tiny_and_errors(tmp_path):
    counts = convert_amazon_hin(write_hin(tmp_path / "ok"), tmp_path / "out")
    assert counts["relations"]["coview"] == 3  # 0-1, 0-2, 1-2 (1-2 shares two view nodes: written once)
    coview = (tmp_path / "out/amazon-hin/amazon-hin.coview").read_text().splitlines()
    assert coview == ["source_id:token\ttarget_id:token", "0\t1", "0\t2", "1\t2"]
    item = (tmp_path / "out/amazon-hin/amazon-hin.item").read_text().splitlines()
    assert item == ["item_id:token\tcategory:token_seq\tbrand:token_seq", "0\t0 1\t0", "1\t1\t0", "2\t0\t1"]

    raw = write_hin(tmp_path / "bad1", user_item_dat="0\t0\t5\t100\n1\t1\t4\tyesterday\n")
    with pytest.raises(ValueError, match=r"user_item\.dat: line 2: field 'timestamp'"):
        convert_amazon_hin(raw, tmp_path / "out")
    raw = write_hin(tmp_path / "bad2", item_view_dat="0,0\n1\t0\n")
    with pytest.raises(ValueError, match=r"item_view\.dat: line 2: .*field 'view_id' is missing"):
        convert_amazon_hin(raw, tmp_path / "out")


def write_lastfm(tmp_path: Path, **override: str) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir(parents=True)
    files = {
        "user_artists.dat": "userID\tartistID\tweight\n2\t51\t13\n3\t52\t7\n3\t53\t1\n",
        "user_friends.dat": "userID\tfriendID\n2\t3\n3\t2\n",
        "user_taggedartists.dat": "userID\tartistID\ttagID\tday\tmonth\tyear\n2\t51\t7\t1\t4\t2009\n"
        "3\t51\t7\t1\t4\t2009\n3\t51\t2\t1\t4\t2009\n3\t99\t2\t1\t4\t2009\n",
        "tags.dat": "tagID\ttagValue\n2\tm\xe9tal\n7\trock\n",
    }
    files.update({k.replace("_dat", ".dat"): v for k, v in override.items()})
    for name, text in files.items():
        (raw / name).write_bytes(text.encode("latin-1" if name == "tags.dat" else "utf-8"))
    return raw


def test_lastfm_tiny_and_errors(tmp_path):
    counts = convert_lastfm(write_lastfm(tmp_path / "ok"), tmp_path / "out")
    assert counts["relations"]["social"] == 1 and counts["interactions"] == 3
    assert counts["dropped"]["tags: (artist, tag) pair whose artist is not in user_artists.dat"] == 1
    item = (tmp_path / "out/lastfm/lastfm.item").read_text().splitlines()
    assert item == ["item_id:token\ttags:token_seq", "51\t2 7", "52\t", "53\t"]

    raw = write_lastfm(
        tmp_path / "bad1", user_artists_dat="userID\tartistID\tweight\n2\t51\t13\n3\t52\tmany\n"
    )
    with pytest.raises(ValueError, match=r"user_artists\.dat: line 3: field 'weight'"):
        convert_lastfm(raw, tmp_path / "out")
    raw = write_lastfm(tmp_path / "bad2", user_friends_dat="user\tfriend\n2\t3\n")
    with pytest.raises(ValueError, match=r"user_friends\.dat: line 1: header"):
        convert_lastfm(raw, tmp_path / "out")
    raw = write_lastfm(
        tmp_path / "bad3",
        user_taggedartists_dat="userID\tartistID\ttagID\tday\tmonth\tyear\n2\t51\t7.5\t1\t4\t2009\n",
    )
    with pytest.raises(ValueError, match=r"user_taggedartists\.dat: line 2: field 'tagID'"):
        convert_lastfm(raw, tmp_path / "out")


def write_mat(raw: Path, rating: np.ndarray, trust: np.ndarray) -> Path:
    from scipy.io import savemat

    raw.mkdir(parents=True)
    savemat(raw / "rating.mat", {"rating": rating})
    savemat(raw / "trustnetwork.mat", {"trustnetwork": trust})
    return raw


def test_epinions_tiny_and_errors(tmp_path):
    rating = np.array([[1, 1, 3, 4], [1, 2, 2, 5], [2, 1, 5, 3], [2, 1, 5, 3]], dtype=np.int32)
    trust = np.array([[1, 2], [2, 2], [1, 2], [1, 9]], dtype=np.uint16)
    counts = convert_epinions(write_mat(tmp_path / "ok", rating, trust), tmp_path / "out")
    assert counts["relations"]["social"] == 1 and counts["interactions"] == 4
    assert counts["dropped"] == {
        "social: self-loop": 1,
        "social: user without ratings": 1,
        "social: duplicate row": 1,
    }
    item = (tmp_path / "out/epinions/epinions.item").read_text().splitlines()
    assert item == ["item_id:token\tcategory:token_seq", "1\t3 5", "2\t2"]

    helpful = np.array([[1, 1, 3, 4, 2], [2, 1, 5, 3, 1]], dtype=np.float64)
    convert_epinions(write_mat(tmp_path / "five", helpful, trust[:1]), tmp_path / "out5", tmp_path / "yaml5")
    assert (tmp_path / "out5/epinions/epinions.inter").read_text().splitlines()[:2] == [
        "user_id:token\titem_id:token\trating:float\thelpfulness:float",
        "1\t1\t4\t2",
    ]
    assert (
        "helpfulness" in yaml.safe_load((tmp_path / "yaml5/epinions.yaml").read_text())["load_col"]["inter"]
    )

    bad = rating.astype(np.float64)
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"rating\.mat: row 3: field 'rating'"):
        convert_epinions(write_mat(tmp_path / "nan", bad, trust), tmp_path / "out")
    bad = rating.copy()
    bad[1, 1] = 0
    with pytest.raises(ValueError, match=r"rating\.mat: row 2: field 'productid'"):
        convert_epinions(write_mat(tmp_path / "zero", bad, trust), tmp_path / "out")
    with pytest.raises(ValueError, match=r"rating\.mat: variable 'rating' has shape \(4, 3\)"):
        convert_epinions(write_mat(tmp_path / "shape", rating[:, :3], trust), tmp_path / "out")


def write_amazon(raw: Path, category: str, reviews: list, meta: list) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    for name, records in ((f"{category}_5.json.gz", reviews), (f"meta_{category}.json.gz", meta)):
        with gzip.open(raw / name, "wt", encoding="utf-8") as f:
            for r in records:
                f.write(r if isinstance(r, str) else json.dumps(r))
                f.write("\n")
    return raw


def review(user: str, asin: str, rating: float = 5.0, ts: int = 1_500_000_000) -> dict:
    return {"reviewerID": user, "asin": asin, "overall": rating, "unixReviewTime": ts, "reviewText": "x\ty"}


def test_amazon_2018_reads_video_games_layout(tmp_path):
    """The paper's Video_Games files have the same layout: same code, name from the category."""
    assert default_name("Video_Games") == "amazon-videogames"
    assert default_name("Magazine_Subscriptions") == "amazon-magazine"
    reviews = [review("U1", "A1"), review("U1", "A2", 3.0), review("U2", "A3", 4.0), review("U2", "A1")]
    meta = [
        {
            "asin": "A1",
            "also_view": ["A2", "A3", "ZZ"],
            "also_buy": ["A2"],
            "category": ["Video Games", "PC"],
            "brand": "Nintendo &amp; Co",
        },
        {"asin": "A2", "also_view": ["A1"], "also_buy": [], "category": ["Video Games", "PC", "Accessories"]},
        {
            "asin": "A1",
            "also_view": ["A2", "A3", "ZZ"],
            "also_buy": ["A2"],
            "category": ["Video Games", "PC"],
        },
        {"asin": "B9", "also_view": ["A1"], "also_buy": ["A1"], "category": []},
    ]
    raw = write_amazon(tmp_path / "raw", "Video_Games", reviews, meta)
    counts = convert_amazon_2018(raw, tmp_path / "out", tmp_path / "yaml")
    assert counts["dataset"] == "amazon-videogames"
    assert counts["relations"] == {"coview": 2, "cobuy": 1}
    assert counts["dropped"]["coview: target is not a reviewed item"] == 1
    assert counts["dropped"]["coview: reverse of a link already written (undirected)"] == 1
    d = tmp_path / "out" / "amazon-videogames"
    assert (d / "amazon-videogames.coview").read_text().splitlines()[1:] == ["A1\tA2", "A1\tA3"]
    assert (d / "amazon-videogames.item").read_text().splitlines()[1:] == [
        "A1\tVideo_Games PC\tNintendo & Co",
        "A2\tVideo_Games PC Accessories\t",
        "A3\t\t",
    ]
    conf = yaml.safe_load((tmp_path / "yaml" / "amazon-videogames.yaml").read_text())
    assert conf["aux_tasks"] == ["coview", "cobuy"] and conf["aux_relations"]["cobuy"]["directed"] is False

    write_amazon(tmp_path / "raw", "Magazine_Subscriptions", reviews, meta)
    with pytest.raises(ValueError, match="several categories.*--category"):
        convert_amazon_2018(raw, tmp_path / "out")
    counts = convert_amazon_2018(raw, tmp_path / "out", category="Magazine_Subscriptions", name="mag")
    assert counts["dataset"] == "mag" and (tmp_path / "out" / "mag" / "mag.inter").is_file()


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ('{"reviewerID": "U3", "asin": ', r"_5\.json\.gz: line 3: malformed JSON"),
        ({"reviewerID": "U3", "asin": "A1", "unixReviewTime": 1}, r"line 3: field 'overall' is missing"),
        (
            {"reviewerID": "U3", "asin": "A1", "overall": "five", "unixReviewTime": 1},
            r"line 3: field 'overall'",
        ),
        (
            {"reviewerID": "U3", "asin": "A1", "overall": 5.0, "unixReviewTime": "x"},
            r"line 3: field 'unixReviewTime'",
        ),
        (
            {"reviewerID": "U 3", "asin": "A1", "overall": 5.0, "unixReviewTime": 1},
            r"line 3: field 'reviewerID'",
        ),
    ],
)
def test_amazon_2018_malformed_review(tmp_path, bad, match):
    raw = write_amazon(tmp_path / "raw", "Video_Games", [review("U1", "A1"), review("U2", "A1"), bad], [])
    with pytest.raises(ValueError, match=match):
        convert_amazon_2018(raw, tmp_path / "out")


def test_amazon_2018_malformed_meta(tmp_path):
    meta = [{"asin": "A1", "also_view": "A2"}]
    raw = write_amazon(tmp_path / "raw", "Video_Games", [review("U1", "A1")], meta)
    with pytest.raises(ValueError, match=r"meta_Video_Games\.json\.gz: line 1: field 'also_view'"):
        convert_amazon_2018(raw, tmp_path / "out")


# --------------------------------------------------------------------------------------------------
# helpers


def test_undirected_pairs_and_read_table(tmp_path):
    s, t, loops, repeats = undirected_pairs(np.array([3, 1, 2, 2, 1]), np.array([1, 3, 2, 4, 3]))
    assert list(zip(s.tolist(), t.tolist())) == [(1, 3), (2, 4)] and (loops, repeats) == (1, 2)
    path = tmp_path / "x.tsv"
    path.write_text('a\tb\n"q\t1\n\nz\t2\r\n')
    df, line_no = read_table(path, ("a", "b"), sep="\t", header=("a", "b"))
    assert df.values.tolist() == [['"q', "1"], ["z", "2"]] and line_no.tolist() == [2, 4]
