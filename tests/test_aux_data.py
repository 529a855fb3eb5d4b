"""AuxDataset and AuxTaskSampler on the hand-made files of ``tests/data/auxtoy`` (see its README): the
expected edges, counts and categories below are written by hand from those files."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TEST_DATA
from recbole.data.dataset import Dataset

from recbole_pmtrec import Config, create_dataset, data_preparation, run_recbole_pmtrec
from recbole_pmtrec.data import AuxDataset, AuxTaskSampler, Relation
from recbole_pmtrec.data.atomic import StrictAtomicMixin, strict_dataset_class
from recbole_pmtrec.data.dataset import cointeraction_pairs

TIME_SPLIT = {"split": {"RS": [0.6, 0.2, 0.2]}, "order": "TO", "group_by": "user", "mode": "full"}
RELATIONS = {
    "social": {"suffix": "net", "space": "user", "directed": True},
    "coview": {"suffix": "coview", "space": "item", "directed": False},
    "cobuy": {"suffix": "cobuy", "space": "item", "directed": False},  # no file: not needed, skipped
}

# auxtoy.net without its duplicate, self loop and rows of unknown users (u7, u8, u9)
SOCIAL = {("u1", "u2"): 1.0, ("u2", "u1"): 1.0, ("u4", "u6"): 2.0, ("u6", "u5"): 1.0, ("u5", "u3"): 0.3}
# auxtoy.coview: i10 has no interaction, i99 is unknown; undirected, so both directions
COVIEW_PAIRS = {("i1", "i2"), ("i5", "i9"), ("i6", "i7")}
# item pairs of the same user's TRAINING items (README table)
TRAIN_PAIRS = {
    ("i1", "i2"), ("i1", "i3"), ("i2", "i3"),  # u1
    ("i5", "i6"), ("i5", "i7"), ("i6", "i7"),  # u2
    ("i2", "i6"), ("i2", "i8"), ("i6", "i8"),  # u3
    ("i1", "i6"), ("i3", "i6"),  # u4 (i1 i3 again)
    ("i4", "i7"), ("i4", "i8"), ("i7", "i8"),  # u5
}  # fmt: skip
# categories of auxtoy.item, and of training items only (i9 is a test item, i10 has no interaction)
CATEGORIES = {
    "i1": {"c_a", "c_b"}, "i2": {"c_a"}, "i3": {"c_b"}, "i4": {"c_c"}, "i5": {"c_c", "c_a"},
    "i7": {"c_d"}, "i8": {"c_d", "c_b"}, "i9": {"c_a"}, "i10": {"c_e"},
}  # fmt: skip
TRAIN_CATEGORIES = {k: v for k, v in CATEGORIES.items() if k not in ("i9", "i10")}


def both_directions(pairs):
    return set(pairs) | {(b, a) for a, b in pairs}


def toy_config(fast_config, data_path=TEST_DATA, model="BPR", **overrides):
    config = {
        **fast_config,
        "data_path": str(data_path),
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"], "item": ["item_id", "category"]},
        "aux_relations": RELATIONS,
        "category_field": "category",
        "aux_tasks": ["social", "coview", "category"],
        "eval_args": TIME_SPLIT,
        **overrides,
    }
    return Config(model, "auxtoy", config_dict=config)


def edges_as_tokens(dataset, relation: Relation) -> dict:
    field = dataset.uid_field if relation.space == "user" else dataset.iid_field
    src = dataset.id2token(field, relation.src.numpy())
    dst = dataset.id2token(field, relation.dst.numpy())
    weight = [None] * len(src) if relation.weight is None else relation.weight.tolist()
    return {(s, d): w for s, d, w in zip(src, dst, weight)}


def categories_as_tokens(dataset, matrix) -> dict:
    matrix = matrix.tocsr()
    items = dataset.id2token(dataset.iid_field, np.arange(matrix.shape[0]))
    out = {}
    for item_id, item in enumerate(items):
        row = matrix.indices[matrix.indptr[item_id] : matrix.indptr[item_id + 1]]
        if len(row):
            out[item] = set(dataset.id2token("category", row))
    return out


@pytest.fixture
def toy_copy(tmp_path):
    """A writable copy of auxtoy under ``tmp_path/data``."""
    shutil.copytree(TEST_DATA / "auxtoy", tmp_path / "data" / "auxtoy")
    return tmp_path / "data"


# ---------------------------------------------------------------------------------------------- loading


def test_relations_load_with_hand_checked_edges_and_counts(fast_config):
    dataset = AuxDataset(toy_config(fast_config))
    assert set(dataset.relations) == {"social", "coview"}  # cobuy has no file and no task needs it

    social = dataset.relations["social"]
    assert social.directed and social.space == "user" and social.num_nodes == dataset.user_num
    assert edges_as_tokens(dataset, social) == pytest.approx(SOCIAL)
    stats = dataset.relation_stats["social"]
    assert (stats.raw_rows, stats.unknown_rows, stats.unknown_ids) == (9, 2, 3)
    assert (stats.self_loops, stats.duplicates, stats.edges) == (1, 1, 5)

    coview = dataset.relations["coview"]
    assert not coview.directed and coview.weight is None
    assert set(edges_as_tokens(dataset, coview)) == both_directions(COVIEW_PAIRS)
    stats = dataset.relation_stats["coview"]
    assert (stats.raw_rows, stats.unknown_rows, stats.unknown_ids) == (7, 2, 2)
    assert (stats.self_loops, stats.duplicates, stats.edges) == (1, 1, 6)

    for relation in dataset.relations.values():
        keys = (relation.src * relation.num_nodes + relation.dst).tolist()
        assert keys == sorted(set(keys)) and 0 not in relation.src and 0 not in relation.dst
    matrix = dataset.relation_matrix("social")
    assert matrix.shape == (dataset.user_num, dataset.user_num) and matrix.nnz == 5
    assert matrix[dataset.token2id("user_id", "u4"), dataset.token2id("user_id", "u6")] == 2.0
    assert torch.equal(social.to_torch().to_dense(), torch.from_numpy(matrix.toarray()))

    assert categories_as_tokens(dataset, dataset.item_categories) == CATEGORIES
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(dataset))  # without colours
    assert "Relation social (user-user, directed): 9 rows from auxtoy.net" in text
    assert "1 self loops, 1 duplicates; 5 edges" in text and "; 6 edges" in text


def test_same_ids_and_interactions_as_recbole_dataset(fast_config):
    config = toy_config(fast_config, user_inter_num_interval="[3,inf)")
    ours, theirs = AuxDataset(config), Dataset(config)
    assert (ours.user_num, ours.item_num, ours.inter_num) == (
        theirs.user_num,
        theirs.item_num,
        theirs.inter_num,
    )
    pd.testing.assert_frame_equal(ours.inter_feat, theirs.inter_feat)
    pd.testing.assert_frame_equal(ours.item_feat, theirs.item_feat)
    for field in ("user_id", "item_id", "category"):
        assert list(ours.field2id_token[field]) == list(theirs.field2id_token[field])


def test_user_removed_by_filter_disappears_from_social(fast_config):
    dataset = AuxDataset(toy_config(fast_config, user_inter_num_interval="[3,inf)"))
    assert "u6" not in dataset.field2token_id["user_id"]
    expected = {k: v for k, v in SOCIAL.items() if "u6" not in k}
    assert edges_as_tokens(dataset, dataset.relations["social"]) == pytest.approx(expected)
    stats = dataset.relation_stats["social"]
    assert (stats.unknown_rows, stats.unknown_ids, stats.edges) == (4, 4, 3)


# ---------------------------------------------------------------------------------------------- splits


def test_derived_structures_come_from_training_only(fast_config):
    """(i1, i4) co-occur only through u1's validation item, (i1, i5) only through u1's test item, and i9 is
    a test item: none of them may reach the training structures."""
    config = toy_config(fast_config)
    dataset = AuxDataset(config)
    train, valid, test = dataset.build()
    train_pairs = {
        tuple(sorted(p)) for p in zip(*[train.inter_feat[f].numpy() for f in ("user_id", "item_id")])
    }
    assert len(train_pairs) == 16  # the README's table: 3 per user of five, 1 for u6

    cointeraction = train.relations["cointeraction"]
    assert not cointeraction.directed and cointeraction.space == "item"
    assert set(edges_as_tokens(train, cointeraction)) == both_directions(TRAIN_PAIRS)
    assert categories_as_tokens(train, train.train_item_categories) == TRAIN_CATEGORIES
    assert set(train.id2token("item_id", np.flatnonzero(train.train_item_mask))) == {
        f"i{k}" for k in range(1, 9)
    }

    for split in (valid, test):  # shared, not rebuilt
        assert (
            split.relations is train.relations and split.train_item_categories is train.train_item_categories
        )
    assert "cointeraction" not in dataset.relations  # the unsplit dataset has no training structures
    assert "Relation cointeraction (item-item, undirected)" in re.sub(r"\x1b\[[0-9;]*m", "", str(train))


def test_cointeraction_equals_pairs_of_random_training_split(fast_config):
    """With RecBole's random split: every pair of a training user's items, and nothing else."""
    config = toy_config(fast_config, eval_args={**TIME_SPLIT, "order": "RO"})
    train = data_preparation(config, create_dataset(config))[0].dataset
    by_user: dict = {}
    for user, item in zip(train.inter_feat["user_id"].tolist(), train.inter_feat["item_id"].tolist()):
        by_user.setdefault(user, set()).add(item)
    expected = set()
    for items in by_user.values():
        expected |= {(a, b) for a in items for b in items if a != b}
    relation = train.relations["cointeraction"]
    assert set(zip(relation.src.tolist(), relation.dst.tolist())) == expected


def test_cointeraction_cap_per_user():
    """User 1 has 10 items (45 pairs > cap 5): 5 pairs drawn among its items; user 2 has 3 (3 pairs): all."""
    users = np.array([1] * 10 + [2] * 3)
    items = np.array([*range(10, 20), 20, 21, 22])
    first, second, notes = cointeraction_pairs(users, items, num_items=30, max_pairs=5, seed=0)
    assert len(first) == 5 + 3 and bool(np.all(first < second))
    pairs = set(zip(first.tolist(), second.tolist()))
    assert {(20, 21), (20, 22), (21, 22)} <= pairs
    assert all(19 >= b > a >= 10 for a, b in pairs - {(20, 21), (20, 22), (21, 22)})
    assert notes == {"users capped": 1, "pairs over the cap of 5/user": 45 - 5}
    again = cointeraction_pairs(users, items, num_items=30, max_pairs=5, seed=0)
    assert np.array_equal(again[0], first) and np.array_equal(again[1], second)


def test_presplit_files_use_the_train_file(fast_config, toy_copy):
    """``benchmark_filename`` (Office's layout): the train file alone feeds the derived structures."""
    folder = toy_copy / "auxtoy"
    frame = pd.read_csv(folder / "auxtoy.inter", sep="\t", dtype=str)
    position = frame.groupby("user_id:token").cumcount()
    for part, rows in (("train", position < 3), ("valid", position == 3), ("test", position == 4)):
        frame[rows].to_csv(folder / f"auxtoy.{part}.inter", sep="\t", index=False)
    config = toy_config(fast_config, data_path=toy_copy, benchmark_filename=["train", "valid", "test"])
    train, _, _ = AuxDataset(config).build()
    assert set(edges_as_tokens(train, train.relations["cointeraction"])) == both_directions(
        TRAIN_PAIRS | {("i1", "i2")}  # u6 trains on both i1 and i2 here
    )


# ---------------------------------------------------------------------------------------------- bad input


def _write(path, text):
    path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        (
            "auxtoy.net",
            "source_id:token\ttarget_id:token\tweight:float\nu1\tu2\t1\nu2\tu3\t1\textra\n",
            r"auxtoy\.net: line 3: 4 fields where the header has 3",
        ),
        (
            "auxtoy.net",
            "source_id:token\ttarget_id:token\tweight:float\nu1\tu2\t1\n\nu2\tu3\tstrong\n",
            r"auxtoy\.net: line 4: field 'weight' = 'strong' is not a finite number",
        ),
        (
            "auxtoy.net",
            "source_id:token\ttarget_id:token\tweight:double\nu1\tu2\t1\n",
            r"auxtoy\.net: line 1 \(header\): field 'weight' has unknown type 'double'",
        ),
        (
            "auxtoy.net",
            "source_id:token\ttarget_id:token\nu1\t\n",
            r"auxtoy\.net: line 2: field 'target_id' is empty",
        ),
        (
            "auxtoy.item",
            "item_id:token\tcategory:tokens\ni1\tc_a\n",
            r"auxtoy\.item: line 1 \(header\): field 'category' has unknown type 'tokens'",
        ),
    ],
)
def test_malformed_files_name_file_line_and_field(fast_config, toy_copy, file, content, message):
    _write(toy_copy / "auxtoy" / file, content)
    with pytest.raises(ValueError, match=message):
        AuxDataset(toy_config(fast_config, data_path=toy_copy))


def test_missing_relation_file_needed_by_a_task(fast_config, toy_copy):
    (toy_copy / "auxtoy" / "auxtoy.net").unlink()
    with pytest.raises(
        ValueError, match=r"relation 'social': file .*auxtoy\.net not found, and aux task 'social'"
    ):
        AuxDataset(toy_config(fast_config, data_path=toy_copy))
    dataset = AuxDataset(
        toy_config(fast_config, data_path=toy_copy, aux_tasks=["coview"])
    )  # not needed: skipped
    assert set(dataset.relations) == {"coview"}


def test_relation_empty_after_filtering(fast_config, toy_copy):
    _write(toy_copy / "auxtoy" / "auxtoy.net", "source_id:token\ttarget_id:token\nu7\tu1\nu8\tu9\nu2\tu2\n")
    with pytest.raises(
        ValueError,
        match=r"relation 'social' \(.*auxtoy\.net\): 0 of 3 rows kept: 2 have ids not in the interactions "
        r"\(3 distinct ids\), 1 are self loops",
    ):
        AuxDataset(toy_config(fast_config, data_path=toy_copy))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"aux_tasks": ["socail"]}, r"aux_tasks: unknown task 'socail'"),
        ({"category_field": None}, r"task 'category' needs category_field"),
        (
            {"aux_relations": {"social": {"suffix": "net", "space": "users"}}},
            r"'social' space must be one of",
        ),
        ({"category_field": "genre"}, r"category_field 'genre' is not loaded from .*auxtoy\.item"),
    ],
)
def test_bad_aux_config(fast_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        AuxDataset(toy_config(fast_config, **overrides))


# ---------------------------------------------------------------------------------------------- sampler


@pytest.fixture
def toy_train(fast_config):
    config = toy_config(fast_config, aux_tasks=["social", "coview", "category", "directau"])
    return AuxDataset(config).build()[0]


def test_sampler_shapes_ranges_and_true_positives(toy_train):
    tasks = ["social", "coview", "cointeraction", "category"]
    sampler = AuxTaskSampler(toy_train, tasks, batch_size=64, neg_num=3, seed=7)
    expected_edges = {
        "social": set(SOCIAL),
        "coview": both_directions(COVIEW_PAIRS),
        "cointeraction": both_directions(TRAIN_PAIRS),
    }
    for task in tasks:
        anchor, positive, negative = sampler.sample(task)
        assert anchor.dtype == positive.dtype == negative.dtype == torch.long
        assert anchor.shape == positive.shape == (64,) and negative.shape == (64, 3)
        space = "user" if task == "social" else "item"
        field, num = (
            (toy_train.uid_field, toy_train.user_num)
            if space == "user"
            else (toy_train.iid_field, toy_train.item_num)
        )
        for ids in (anchor, positive, negative):
            assert int(ids.min()) >= 1 and int(ids.max()) < num
        a_tok, p_tok = toy_train.id2token(field, anchor.numpy()), toy_train.id2token(field, positive.numpy())
        n_tok = toy_train.id2token(field, negative.numpy())
        if task == "category":
            for a, p, negs in zip(a_tok, p_tok, n_tok):
                assert a != p and TRAIN_CATEGORIES[a] & TRAIN_CATEGORIES[p]
                assert all(n != a and not (CATEGORIES.get(n, set()) & CATEGORIES[a]) for n in negs)
            assert set(a_tok) == set(TRAIN_CATEGORIES)  # every training item with a category is drawn
        else:
            assert set(zip(a_tok, p_tok)) <= expected_edges[task]
            assert all(
                n != a and (a, n) not in expected_edges[task] for a, negs in zip(a_tok, n_tok) for n in negs
            )


def test_category_positives_are_uniform_within_the_category(toy_train):
    """Anchor i4 has one category, c_c = {i4, i5} in training: its positive is always i5; anchor i2 has c_a =
    {i1, i2, i5}: i1 and i5 about equally often."""
    sampler = AuxTaskSampler(toy_train, ["category"], batch_size=4096, neg_num=1, seed=0)
    anchor, positive, _ = sampler.sample("category")
    a_tok = toy_train.id2token("item_id", anchor.numpy())
    p_tok = toy_train.id2token("item_id", positive.numpy())
    assert set(p_tok[a_tok == "i4"]) == {"i5"}
    counts = pd.Series(p_tok[a_tok == "i2"]).value_counts()
    assert set(counts.index) == {"i1", "i5"} and abs(counts["i1"] - counts["i5"]) < 0.25 * counts.sum()


def test_given_anchors_keep_those_with_a_positive_in_order_and_draw_its_positives(toy_train):
    """aux_anchors: batch. Hand-worked on auxtoy: u3 has no trust edge, i6 no category, i3 no co-view edge;
    a kept anchor's positive is one of its own edges (u4 -> u6 only; i4's only category partner is i5; i3's
    are i1 (c_b) and i8 (c_b), about equally often), one per anchor; negatives as for drawn anchors."""
    sampler = AuxTaskSampler(toy_train, ["social", "category", "coview"], neg_num=2, seed=3)

    def ids(field, tokens):
        return torch.as_tensor(toy_train.token2id(field, tokens))

    def tokens(field, ids_):
        return list(toy_train.id2token(field, ids_.numpy()))

    given = ids("user_id", ["u3", "u1", "u3", "u4", "u5", "u6", "u2"])
    anchor, positive, negative = sampler.sample("social", given)
    assert tokens("user_id", anchor) == ["u1", "u4", "u5", "u6", "u2"]
    assert tokens("user_id", positive) == ["u2", "u6", "u3", "u5", "u1"]
    assert negative.shape == (5, 2)
    assert all((a, n) not in SOCIAL and a != n for a, negs in zip(anchor, negative) for n in negs)

    given = ids("item_id", ["i6", "i4", "i3", "i7"] * 2000)
    anchor, positive, negative = sampler.sample("category", given)
    assert tokens("item_id", anchor) == ["i4", "i3", "i7"] * 2000 and negative.shape == (6000, 2)
    pairs = pd.Series([f"{a}>{p}" for a, p in zip(tokens("item_id", anchor), tokens("item_id", positive))])
    counts = pairs.value_counts()
    assert set(counts.index) == {"i4>i5", "i3>i1", "i3>i8", "i7>i8"}
    assert counts["i4>i5"] == counts["i7>i8"] == 2000 and abs(counts["i3>i1"] - counts["i3>i8"]) < 300

    anchor, positive, negative = sampler.sample("coview", ids("item_id", ["i3", "i9", "i7"]))
    assert list(zip(tokens("item_id", anchor), tokens("item_id", positive))) == [("i9", "i5"), ("i7", "i6")]
    # no given anchor has a positive: an empty batch of the right shapes
    anchor, positive, negative = sampler.sample("social", ids("user_id", ["u3", "u3"]))
    assert anchor.shape == positive.shape == (0,) and negative.shape == (0, 2)


def test_sampler_is_reproducible_and_leaves_global_rng_alone(toy_train):
    def draws(seed):
        sampler = AuxTaskSampler(toy_train, ["social", "category"], batch_size=16, neg_num=2, seed=seed)
        return torch.cat(
            [torch.cat([x.view(16, -1) for x in sampler.sample(t)], 1) for t in ("social", "category")]
        )

    torch.manual_seed(123)
    expected_global = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(draws(5), draws(5))
    assert torch.equal(torch.rand(3), expected_global)
    assert not torch.equal(draws(5), draws(6))


def test_sampler_defaults_and_errors(toy_train, fast_config):
    sampler = AuxTaskSampler(toy_train, ["social", "directau"])
    assert sampler.batch_size == toy_train.config["train_batch_size"] and sampler.neg_num == 1
    with pytest.raises(ValueError, match="'directau' trains on the interaction batch"):
        sampler.sample("directau")
    with pytest.raises(ValueError, match="task 'coview' was not given"):
        sampler.sample("coview")
    with pytest.raises(ValueError, match="unknown task 'friends'"):
        AuxTaskSampler(toy_train, ["friends"])
    with pytest.raises(ValueError, match="needs a training split"):
        AuxTaskSampler(AuxDataset(toy_config(fast_config)), ["social"])
    configured = AuxTaskSampler(
        AuxDataset(toy_config(fast_config, aux_batch_size=32, aux_neg_num=4)).build()[0], ["coview"]
    )
    assert configured.sample("coview")[2].shape == (32, 4)


# ---------------------------------------------------------------------------------------------- end to end


def test_bpr_with_aux_dataset_equals_plain_dataset(fast_config):
    """Same seed, same split, same numbers: the relations change nothing for a built-in model."""
    plain = {"aux_relations": None, "category_field": None, "aux_tasks": None}
    assert type(create_dataset(toy_config(fast_config))) is AuxDataset
    plain_class = type(create_dataset(toy_config(fast_config, **plain)))
    assert plain_class is strict_dataset_class(Dataset) and plain_class.__mro__[1:3] == (
        StrictAtomicMixin,
        Dataset,
    )
    settings = {
        **fast_config,
        "epochs": 2,
        "data_path": str(TEST_DATA),
        "load_col": {"inter": ["user_id", "item_id", "rating"], "item": ["item_id", "category"]},
        "eval_args": {**TIME_SPLIT, "order": "RO"},
    }
    aux = {"aux_relations": RELATIONS, "category_field": "category", "aux_tasks": ["social", "category"]}
    ours = run_recbole_pmtrec("BPR", "auxtoy", config_dict={**settings, **aux}, saved=False)
    theirs = run_recbole_pmtrec("BPR", "auxtoy", config_dict={**settings, **plain}, saved=False)
    assert dict(ours["best_valid_result"]) == dict(theirs["best_valid_result"])
    assert dict(ours["test_result"]) == dict(theirs["test_result"])
