"""The PMTRec model: its task losses against hand formulas, and an end-to-end run on ml-100k."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_pmtrec import Config, create_dataset, data_preparation, run_recbole_pmtrec
from recbole_pmtrec.model import PMTRec


@pytest.fixture(scope="module")
def ml100k_model():
    config = Config(
        "PMTRec",
        "ml-100k",
        config_dict={
            "state": "ERROR",
            "show_progress": False,
            "aux_tasks": ["category", "directau", "rating"],
        },
    )
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = PMTRec(config, train_data._dataset)
    batch = next(iter(train_data))
    return config, model, batch, train_data._dataset


def test_tasks_and_loss_order(ml100k_model):
    config, model, batch, _ = ml100k_model
    assert model.task_names == ["main", "category", "directau", "rating"]
    losses = model.calculate_loss(batch)
    assert len(losses) == 4 and all(torch.isfinite(x) for x in losses)


def test_main_directau_rating_losses_match_hand_formulas(ml100k_model):
    config, model, batch, _ = ml100k_model
    out = model.multitask_forward(batch)
    users = model.encoder.user_embedding.weight[batch["user_id"]].double()
    pos = model.encoder.item_embedding.weight[batch["item_id"]].double()
    neg = model.encoder.item_embedding.weight[batch["neg_item_id"]].double()
    # BPR, written out: mean of log(1 + exp(-(u.p - u.n)))
    diff = (users * pos).sum(1) - (users * neg).sum(1)
    bpr = torch.log1p(torch.exp(-diff)).mean()
    assert math.isclose(out.losses[0].item(), bpr.item(), rel_tol=1e-5)
    # DirectAU with gamma: alignment + gamma * mean of the two uniformities (pairwise loop-free but explicit)
    u, p = F.normalize(users, dim=1), F.normalize(pos, dim=1)
    align = ((u - p) ** 2).sum(1).mean()

    def uniform(x):
        d2 = torch.cdist(x, x).pow(2)
        iu = torch.triu_indices(len(x), len(x), offset=1)
        return torch.log(torch.exp(-2 * d2[iu[0], iu[1]]).mean())

    gamma = model.directau_gamma
    directau = align + gamma * (uniform(u) + uniform(p)) / 2
    assert math.isclose(out.losses[2].item(), directau.item(), rel_tol=1e-4)
    rating = (((users * pos).sum(1) - batch["rating"].double()) ** 2).mean()
    assert math.isclose(out.losses[3].item(), rating.item(), rel_tol=1e-5)


def test_category_task_pairs_share_a_category(ml100k_model):
    _, model, batch, dataset = ml100k_model
    out = model.multitask_forward(batch)
    category_gathers = [g for g in out.gathers if g.task == 1]
    assert {g.table for g in category_gathers} == {"item"}
    anchor, positive = category_gathers[0].index, category_gathers[1].index
    genres = dataset.item_feat["class"]
    share = [
        (set(genres[a].tolist()) - {0}) & (set(genres[b].tolist()) - {0}) for a, b in zip(anchor, positive)
    ]
    assert all(share)


def test_aux_anchors_batch_samples_category_pairs_from_the_batchs_items(ml100k_model):
    """aux_anchors: batch: the category task's anchors are the batch's positive items that share a genre
    with another training item, one pair each, in the batch's order."""
    config, _, batch, dataset = ml100k_model
    config["aux_anchors"] = "batch"
    try:
        model = PMTRec(config, dataset)
    finally:
        config["aux_anchors"] = "sampled"
    out = model.multitask_forward(batch)
    anchor, positive = [g.index for g in out.gathers if g.task == 1][:2]
    # an independent check of which items can anchor: a genre shared with another training item
    genres = dataset.item_feat["class"]
    train_items = set(dataset.inter_feat["item_id"].tolist())
    holders: dict = {}
    for item in train_items:
        for genre in set(genres[item].tolist()) - {0}:
            holders.setdefault(genre, set()).add(item)
    eligible = [
        i
        for i in batch["item_id"].tolist()
        if any(len(holders.get(g, ())) >= 2 for g in set(genres[i].tolist()) - {0})
    ]
    assert anchor.tolist() == eligible and len(eligible) > 0.9 * len(batch)
    assert all(
        (set(genres[a].tolist()) - {0}) & (set(genres[b].tolist()) - {0}) and a != b
        for a, b in zip(anchor.tolist(), positive.tolist())
    )


def test_bpr_of_no_pairs_is_zero_with_zero_gradients():
    """A batch-anchored auxiliary batch may keep no anchor: its loss is 0 (not the NaN of an empty mean)."""
    from recbole_pmtrec.model.pmtrec import _bpr

    rows = torch.zeros(0, 4, requires_grad=True)
    loss = _bpr(rows, rows, rows.view(0, 1, 4))
    loss.backward()
    assert loss.item() == 0.0 and rows.grad.shape == (0, 4)


def test_aux_anchors_is_checked():
    with pytest.raises(ValueError, match="aux_anchors.*allowed: one of sampled, batch"):
        Config("PMTRec", "ml-100k", config_dict={"state": "ERROR", "aux_anchors": "incident"})


def test_unknown_task_is_a_clear_error():
    config = Config("PMTRec", "ml-100k", config_dict={"state": "ERROR", "aux_tasks": ["social"]})
    with pytest.raises(ValueError, match="unknown task 'social'"):
        create_dataset(config)


def test_pmtrec_end_to_end_on_ml100k(fast_config):
    result = run_recbole_pmtrec("PMTRec", "ml-100k", config_dict={**fast_config, "epochs": 2}, saved=True)
    assert result["test_result"]["recall@10"] > 0
    from recbole_pmtrec import load_data_and_model

    config, model, *_ = load_data_and_model(result["saved_model_file"])
    assert config["mtl_method"] == "pmtrec" and isinstance(model, PMTRec)


def _train(tmp_path, name, epochs, resume_from=None):
    """PMTRec on ml-100k (main + category: RecBole's negative sampler, the loader's shuffle and the auxiliary
    sampler all draw random numbers) for ``epochs`` epochs, seeded as run_recbole_pmtrec seeds it."""
    from recbole.utils import init_seed

    from recbole_pmtrec.utils import get_trainer

    config = Config(
        "PMTRec",
        "ml-100k",
        config_dict={
            "state": "ERROR",
            "show_progress": False,
            "aux_tasks": ["category"],
            "mtl_method": "pmtrec",
            "epochs": epochs,
            "train_batch_size": 8192,
            "checkpoint_dir": str(tmp_path / name),
            "use_gpu": False,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = PMTRec(config, train_data._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "PMTRec")(config, model)
    if resume_from:
        # other global random states than the interrupted run had: the checkpoint must restore them
        torch.manual_seed(12345)
        np.random.seed(12345)
        random.seed(12345)
        trainer.resume_checkpoint(resume_from)
    trainer.fit(train_data, None, saved=True, show_progress=False)
    return trainer, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    _, straight = _train(tmp_path, "straight", epochs=3)
    interrupted, _ = _train(tmp_path, "first", epochs=2)
    resumed, after = _train(tmp_path, "resumed", epochs=3, resume_from=interrupted.saved_model_file)
    assert resumed.start_epoch == 2
    assert set(after) == set(straight)
    for key in straight:
        torch.testing.assert_close(after[key], straight[key], rtol=0, atol=0, msg=key)
