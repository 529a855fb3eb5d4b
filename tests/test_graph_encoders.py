"""LightGCN / NGCF encoders: forward equal to RecBole's own models, and a MultiTaskTrainer step equal to an
independent dense Algorithm 1.

The reference builds RecBole's ``LightGCN`` / ``NGCF`` (its own sparse products, autograd, dropout) with the
encoder's weights, takes every task's gradient of the full base tables by autograd through that whole model,
and applies Eqs. 3-6 row by row in numpy; the trainer instead takes one backward on gathered output rows,
maps the per-task output gradients back with ``base_gradients`` and combines per row. Same RNG seed before
the two forwards, so with dropout on both see the same masks (one mask per step, shared by all tasks).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recbole.data.dataset import Dataset
from recbole.data.interaction import Interaction
from recbole.model.general_recommender.lightgcn import LightGCN
from recbole.model.general_recommender.ngcf import NGCF
from torch import nn

from recbole_pmtrec import Config
from recbole_pmtrec.model.encoders import ENCODERS, build_encoder
from recbole_pmtrec.model.graph_encoders import LightGCNEncoder, NGCFEncoder
from recbole_pmtrec.model.multitask import MultiTaskModelMixin, MultiTaskOutput, RowGather
from recbole_pmtrec.trainer import MultiTaskTrainer

DIM, HIDDEN = 8, [8, 4]
RECBOLE = {"lightgcn": LightGCN, "ngcf": NGCF}


KNOBS = {  # the configurations under test: LightGCN with 3 layers, NGCF with dropout off / on
    ("lightgcn", False): {"n_layers": 3},
    ("ngcf", False): {"node_dropout": 0.0, "message_dropout": 0.0},
    ("ngcf", True): {"node_dropout": 0.2, "message_dropout": 0.3},
}


@pytest.fixture(scope="module")
def train_split():
    """ml-100k's training split, as RecBole's models are built on it."""
    config = Config("BPR", "ml-100k", config_dict={"state": "ERROR"})
    return Dataset(config).build()[0]


def _configs(encoder, dropout=False, **extra):
    """(PMTRec config with the encoder, RecBole config of the same model), with the same knobs."""
    knobs = KNOBS[encoder, dropout]
    common = {"state": "ERROR", "embedding_size": DIM, **knobs}
    ours = {**common, "encoder": encoder, "ngcf_hidden_size_list": HIDDEN, **extra}
    pmtrec = Config("PMTRec", "ml-100k", config_dict=ours)
    recbole = Config(RECBOLE[encoder].__name__, "ml-100k", config_dict={**common, "hidden_size_list": HIDDEN})
    return pmtrec, recbole


@pytest.fixture(scope="module")
def pair(train_split):
    """``pair(encoder, dtype, dropout)``: our encoder and RecBole's model on ml-100k, RecBole's weights
    copied into ours; each configuration is built once and copied (building the adjacency takes a second)."""
    built = {}

    def make(encoder, dtype=torch.float32, dropout=False):
        if (encoder, dropout) not in built:
            ours_config, recbole_config = _configs(encoder, dropout)
            torch.manual_seed(0)
            reference = RECBOLE[encoder](recbole_config, train_split)
            ours = build_encoder(ours_config, train_split, train_split.user_num, train_split.item_num)
            state = {k.replace("GNNlayers", "layers"): v for k, v in reference.state_dict().items()}
            ours.load_state_dict(state, strict=True)
            built[encoder, dropout] = (ours, reference)
        ours, reference = (copy.deepcopy(m) for m in built[encoder, dropout])
        reference.to(dtype)
        reference.norm_adj_matrix = reference.norm_adj_matrix.to(dtype)  # a plain attribute in RecBole
        return ours.to(dtype), reference

    return make


# ------------------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("encoder", ["lightgcn", "ngcf"])
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_forward_equals_recbole_model(encoder, dtype, atol, pair):
    """Same weights, same outputs: float64 to 1e-10 (the same arithmetic); float32 differs only by the
    summation order of CSR vs RecBole's COO products (seen up to 1.3e-6)."""
    ours, reference = pair(encoder, dtype)
    ours.eval(), reference.eval()
    with torch.no_grad():
        for mine, theirs in zip(ours(), reference.forward()):
            assert mine.shape == theirs.shape and mine.dtype == dtype
            torch.testing.assert_close(mine, theirs, atol=atol, rtol=0)
    if encoder == "ngcf":
        assert ours()[0].shape[1] == DIM + sum(HIDDEN)


def test_ngcf_training_forward_with_dropout_equals_recbole(pair):
    """Node and message dropout draw the same masks as RecBole's NGCF from the same seed."""
    ours, reference = pair("ngcf", torch.float64, dropout=True)
    ours.train(), reference.train()
    torch.manual_seed(11)
    mine = ours()
    torch.manual_seed(11)
    theirs = reference.forward()
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    torch.manual_seed(12)
    assert not torch.allclose(ours()[0], mine[0])  # the masks do change between steps


def test_encoders_are_registered_and_the_yaml_has_their_knobs():
    assert ENCODERS["lightgcn"] is LightGCNEncoder and ENCODERS["ngcf"] is NGCFEncoder
    config = Config("PMTRec", "ml-100k", config_dict={"state": "ERROR"})
    assert config["n_layers"] == 2 and config["ngcf_hidden_size_list"] == [32, 32]
    assert config["node_dropout"] == 0.0 and config["message_dropout"] == 0.1


# ------------------------------------------------------------------------------------------------ trainer
# task 0 (main): BPR on (user, pos, neg); task 1: user-user links; task 2: item-item links.
MAIN = ([1, 2, 3, 2, 4], [1, 2, 3, 50, 5], [400, 500, 60, 7, 8])
SOCIAL = ([3, 4, 7, 9], [4, 5, 8, 1], [6, 1, 1, 30])
ITEM_LINK = ([10, 11, 17, 19], [17, 18, 19, 11], [20, 12, 13, 13])


def task_losses(users, items, gather=lambda t, table, rows, index: rows):
    """The three task losses from the output tables; ``gather`` sees every gathered block."""

    def take(t, table, index):
        index = torch.tensor(index)
        return gather(t, table, (users if table == "user" else items)[index], index)

    def bpr(t, table, anchor_table, triple):
        a, p, n = triple
        a, p, n = take(t, anchor_table, a), take(t, table, p), take(t, table, n)
        return -F.logsigmoid((a * p).sum(-1) - (a * n).sum(-1)).mean()

    return [bpr(0, "item", "user", MAIN), bpr(1, "user", "user", SOCIAL), bpr(2, "item", "item", ITEM_LINK)]


class GraphTasks(MultiTaskModelMixin, nn.Module):
    """Three link tasks scored on a graph encoder's output (the shape of PMTRec's own model)."""

    task_names = ["main", "social", "link"]
    gathers_from_base = False

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def row_tables(self):
        return self.encoder.base_tables()

    def base_gradients(self, output_grads):
        return self.encoder.base_gradients(output_grads)

    def multitask_forward(self, interaction):
        out = MultiTaskOutput(losses=[])

        def gather(t, table, rows, index):
            out.gathers.append(RowGather(t, table, index, rows))
            return rows

        out.losses = task_losses(*self.encoder(), gather)
        return out


def dense_algorithm1(reference, alpha, tau, epoch, combine="pmtrec"):
    """Every task's full-table gradient by autograd through RecBole's whole model (one forward: one set of
    dropout masks), then Eqs. 3-6 per row in numpy; dense parameters take the summed gradient."""
    users, items = reference.forward()
    base = [reference.user_embedding.weight, reference.item_embedding.weight]
    dense = [p for name, p in reference.named_parameters() if "embedding" not in name]
    per_task = [
        [g.numpy() for g in torch.autograd.grad(loss, base + dense, retain_graph=True)]
        for loss in task_losses(users, items)
    ]
    result = {}
    for k, name in enumerate(["user", "item"]):
        g = np.stack([pt[k] for pt in per_task])  # [T, N, d]
        if combine == "ew":
            result[name] = g.sum(0)
            continue
        logits = np.linalg.norm(g, axis=2)
        logits[0] *= alpha**epoch
        logits /= tau
        w = np.exp(logits - logits.max(axis=0, keepdims=True))
        w /= w.sum(axis=0, keepdims=True)
        result[name] = (w[:, :, None] * g).sum(0)
    result["dense"] = [sum(pt[2 + i] for pt in per_task) for i in range(len(dense))]
    return result


def _step_against_reference(pair, encoder, alpha, tau, epoch, method="pmtrec", dropout=False):
    ours, reference = pair(encoder, torch.float64, dropout)
    ours.train(), reference.train()
    extra = {
        "mtl_method": method,
        "pmtrec_alpha": alpha,
        "pmtrec_tau": tau,
        "learner": "sgd",
        "learning_rate": 0.0,
    }
    config, _ = _configs(encoder, dropout, **extra)
    trainer = MultiTaskTrainer(config, GraphTasks(ours))
    trainer.optimizer.zero_grad()
    torch.manual_seed(7)
    trainer.train_step(Interaction({}), epoch)
    torch.manual_seed(7)
    expected = dense_algorithm1(reference, alpha, tau, epoch, method)
    np.testing.assert_allclose(ours.user_embedding.weight.grad.numpy(), expected["user"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.item_embedding.weight.grad.numpy(), expected["item"], atol=1e-5, rtol=0)
    dense = [p for name, p in ours.named_parameters() if "embedding" not in name]
    assert len(dense) == len(expected["dense"])
    for param, grad in zip(dense, expected["dense"]):
        np.testing.assert_allclose(param.grad.numpy(), grad, atol=1e-5, rtol=0)
    return expected


@pytest.mark.parametrize("encoder", ["lightgcn", "ngcf"])
@pytest.mark.parametrize(("alpha", "tau", "epoch"), [(1.2, 0.1, 3), (1.04, 1e-3, 7), (1.0, 10.0, 1)])
def test_trainer_step_equals_dense_algorithm1(encoder, alpha, tau, epoch, pair):
    expected = _step_against_reference(pair, encoder, alpha, tau, epoch)
    # propagation spreads every task over many rows: far more rows get gradient than the tasks gather
    assert (np.abs(expected["user"]).max(axis=1) > 0).sum() > 100


@pytest.mark.parametrize("encoder", ["lightgcn", "ngcf"])
def test_ew_step_gives_the_summed_gradient(encoder, pair):
    _step_against_reference(pair, encoder, 1.0, 1.0, 1, method="ew")


def test_ngcf_dropout_masks_are_shared_by_all_tasks(pair):
    """With node and message dropout on, the trainer's step equals the reference under ONE set of masks."""
    _step_against_reference(pair, "ngcf", 1.1, 0.05, 2, dropout=True)


def test_lightgcn_base_gradients_is_the_transpose_of_the_propagation(pair):
    """<P E, G> = <E, P^T G>: the stacked one-pass pull-back against autograd, for T = 3 tasks at once."""
    ours, _ = pair("lightgcn", torch.float64)
    users, items = ours()
    grads = {"user": torch.randn(3, *users.shape, dtype=torch.float64)}
    grads["item"] = torch.randn(3, *items.shape, dtype=torch.float64)
    back = ours.base_gradients(grads)
    for t in range(3):
        loss = (users * grads["user"][t]).sum() + (items * grads["item"][t]).sum()
        expected = torch.autograd.grad(
            loss, [ours.user_embedding.weight, ours.item_embedding.weight], retain_graph=True
        )
        torch.testing.assert_close(back["user"][t], expected[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(back["item"][t], expected[1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("encoder", ["lightgcn", "ngcf"])
def test_encoder_deep_copies_after_a_training_forward(encoder, pair):
    ours, _ = pair(encoder)
    ours.train()()  # keeps the graph of this forward
    clone = copy.deepcopy(ours)
    torch.testing.assert_close(clone.eval()()[0], ours.eval()()[0])


def test_ngcf_base_gradients_without_a_training_forward_raises(pair):
    ours, _ = pair("ngcf")
    ours.eval()
    with torch.no_grad():
        users, items = ours()
    with pytest.raises(RuntimeError, match="graph of this step's forward"):
        ours.base_gradients({"user": users[None], "item": items[None]})
