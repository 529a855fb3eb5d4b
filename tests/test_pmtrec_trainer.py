"""PMTRec's per-row rule and the multi-task trainer against an independent dense Algorithm 1.

The reference below takes full-table gradients per task with autograd (the paper's dense form) and applies
Eqs. 3-6 row by row in numpy; the trainer instead takes one backward on gathered rows and combines only the
rows a batch touched. They must agree to 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction
from torch import nn

from recbole_pmtrec import Config
from recbole_pmtrec.model.multitask import MultiTaskModelMixin, MultiTaskOutput, RowGather
from recbole_pmtrec.trainer import MultiTaskTrainer
from recbole_pmtrec.trainer.combiners import Combiner, register
from recbole_pmtrec.trainer.combiners.pmtrec import combine_row_gradients, row_task_weights

N_USERS, N_ITEMS, DIM = 9, 12, 4

# task 0 (main): BPR on (user, pos, neg); task 1: user-user links; task 2: item-item links.
MAIN = ([0, 1, 2, 1, 3], [1, 2, 3, 1, 5], [4, 5, 1, 6, 2])
SOCIAL = ([2, 3, 6], [3, 4, 7], [5, 0, 0])  # users 4..7 touched only here; user 8 by no task
ITEM_LINK = ([0, 1, 7, 9], [7, 8, 9, 1], [10, 2, 3, 3])  # items 7..10 only here; item 11 by no task


def _bpr(a, p, n):
    return -F.logsigmoid((a * p).sum(-1) - (a * n).sum(-1)).mean()


def task_losses(user_w, item_w, bias, take=lambda table, idx, t, rows: None):
    """The three task losses from the full tables; ``take`` sees every gather (for the model)."""

    def g(table, weight, idx, t):
        rows = weight[torch.tensor(idx)]
        take(table, torch.tensor(idx), t, rows)
        return rows

    u, p, n = MAIN
    main = _bpr(g("user", user_w, u, 0), g("item", item_w, p, 0), g("item", item_w, n, 0)) + bias.pow(2).sum()
    a, b, c = SOCIAL
    social = (
        _bpr(g("user", user_w, a, 1), g("user", user_w, b, 1), g("user", user_w, c, 1)) + 0.5 * bias.sum()
    )
    a, b, c = ITEM_LINK
    link = _bpr(g("item", item_w, a, 2), g("item", item_w, b, 2), g("item", item_w, c, 2))
    return [main, social, link]


class ToyMultiTask(MultiTaskModelMixin, nn.Module):
    """A tiny MF model with three tasks and one dense parameter (``bias``)."""

    task_names = ["main", "social", "link"]

    def __init__(self, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.user = nn.Parameter(torch.randn(N_USERS, DIM, generator=gen, dtype=torch.float64))
        self.item = nn.Parameter(torch.randn(N_ITEMS, DIM, generator=gen, dtype=torch.float64))
        self.bias = nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))

    def row_tables(self):
        return {"user": self.user, "item": self.item}

    def multitask_forward(self, interaction):
        out = MultiTaskOutput(losses=[])

        def take(table, idx, t, rows):
            out.gathers.append(RowGather(t, table, idx, rows))

        out.losses = task_losses(self.user, self.item, self.bias, take)
        return out

    def other_parameter(self):
        return {}

    def load_other_parameter(self, para):
        pass


def dense_algorithm1(model, alpha, tau, epoch, skip_untouched=False):
    """Independent reference: full-table gradient per task, then Eqs. 3-6 per row in numpy (float64)."""
    user = model.user.detach().clone().requires_grad_(True)
    item = model.item.detach().clone().requires_grad_(True)
    bias = model.bias.detach().clone().requires_grad_(True)
    losses = task_losses(user, item, bias)
    per_task = [torch.autograd.grad(loss, [user, item, bias], allow_unused=True) for loss in losses]
    result = {}
    for k, name in enumerate(["user", "item"]):
        g = np.stack([(pt[k].numpy() if pt[k] is not None else np.zeros((N_USERS if k == 0 else N_ITEMS, DIM)))
                      for pt in per_task])  # fmt: skip
        norms = np.linalg.norm(g, axis=2)  # [T, N]
        norms[0] *= alpha**epoch
        logits = norms / tau
        if skip_untouched:
            logits = np.where(norms > 0, logits, -np.inf)
        out = np.zeros(g.shape[1:])
        for row in range(g.shape[1]):
            column = logits[:, row]
            if not np.isfinite(column).any():
                continue  # no task touches this row: zero gradient
            w = np.exp(column - column[np.isfinite(column)].max())
            w /= w.sum()
            out[row] = (w[:, None] * g[:, row]).sum(0)
        result[name] = out
    result["bias"] = sum(pt[2].numpy() for pt in per_task if pt[2] is not None)
    return result


def _trainer(model, **overrides):
    config = Config(
        "PMTRec",
        "ml-100k",
        config_dict={
            "mtl_method": "pmtrec",
            "learner": "sgd",
            "learning_rate": 0.0,
            "state": "ERROR",
            **overrides,
        },
    )
    return MultiTaskTrainer(config, model)


@pytest.mark.parametrize("mode", ["dense", "unique"])
@pytest.mark.parametrize(
    ("alpha", "tau", "epoch"),
    [(1.0, 1.0, 1), (1.2, 0.1, 3), (1.04, 1e-3, 7), (1.1, 10.0, 2), (1.2, 1e-6, 40)],
)
def test_trainer_update_equals_dense_algorithm1(mode, alpha, tau, epoch):
    model = ToyMultiTask()
    trainer = _trainer(model, pmtrec_alpha=alpha, pmtrec_tau=tau, row_grad_mode=mode)
    expected = dense_algorithm1(model, alpha, tau, epoch)
    trainer.optimizer.zero_grad()
    trainer.train_step(Interaction({}), epoch)
    np.testing.assert_allclose(model.user.grad.numpy(), expected["user"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(model.item.grad.numpy(), expected["item"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(model.bias.grad.numpy(), expected["bias"], atol=1e-6, rtol=0)
    # the toy really has rows untouched by some tasks, and rows no task touches
    assert np.all(expected["user"][8] == 0) and np.all(expected["item"][11] == 0)


@pytest.mark.parametrize("mode", ["dense", "unique"])
def test_logged_row_weights_are_means_over_touched_rows(mode):
    """The epoch log's per-task row weights (sums kept on the device across steps) against numpy."""
    model = ToyMultiTask(seed=5)
    alpha, tau, epoch = 1.1, 0.5, 2
    trainer = _trainer(model, pmtrec_alpha=alpha, pmtrec_tau=tau, row_grad_mode=mode)
    for _ in range(2):  # learning rate 0: both steps see the same weights
        trainer.optimizer.zero_grad()
        trainer.train_step(Interaction({}), epoch)
    user, item, bias = (p.detach().clone().requires_grad_(True) for p in (model.user, model.item, model.bias))
    losses = task_losses(user, item, bias)
    for k, name in enumerate(["user", "item"]):
        table = (user, item)[k]
        grads = [torch.autograd.grad(loss, table, allow_unused=True, retain_graph=True)[0] for loss in losses]
        g = np.stack([np.zeros(table.shape) if x is None else x.numpy() for x in grads])
        norms = np.linalg.norm(g, axis=2)
        norms[0] *= alpha**epoch
        w = np.exp(norms / tau - (norms / tau).max(0))
        w /= w.sum(0)
        active = (np.linalg.norm(g, axis=2) > 0).any(0)
        total, squares, count = trainer._weight_sums[name][:3]
        assert int(count) == 2 * active.sum() and active.sum() < len(active)  # some rows untouched
        np.testing.assert_allclose(total.numpy(), 2 * w[:, active].sum(1), atol=1e-9)
        np.testing.assert_allclose(squares.numpy(), 2 * (w[:, active] ** 2).sum(1), atol=1e-9)


@pytest.mark.parametrize("mode", ["dense", "unique"])
def test_skip_untouched_option_equals_reference(mode):
    model = ToyMultiTask(seed=3)
    trainer = _trainer(
        model, pmtrec_alpha=1.1, pmtrec_tau=0.5, row_grad_mode=mode, pmtrec_skip_untouched=True
    )
    expected = dense_algorithm1(model, 1.1, 0.5, 2, skip_untouched=True)
    trainer.optimizer.zero_grad()
    trainer.train_step(Interaction({}), 2)
    np.testing.assert_allclose(model.user.grad.numpy(), expected["user"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(model.item.grad.numpy(), expected["item"], atol=1e-6, rtol=0)
    # a row touched by one task only follows that task fully under this option
    default = dense_algorithm1(model, 1.1, 0.5, 2)
    assert not np.allclose(default["item"][7:11], expected["item"][7:11])


def test_ew_combiner_gives_summed_gradient():
    model = ToyMultiTask(seed=5)
    trainer = _trainer(model, mtl_method="ew")
    trainer.optimizer.zero_grad()
    trainer.train_step(Interaction({}), 1)
    reference = ToyMultiTask(seed=5)
    sum(task_losses(reference.user, reference.item, reference.bias)).backward()
    for name in ("user", "item", "bias"):
        np.testing.assert_allclose(
            getattr(model, name).grad.numpy(), getattr(reference, name).grad.numpy(), atol=1e-12
        )


@register("_test_weighted")
class _WeightedTaskLevel(Combiner):
    """A task-level combiner for the test: d = J_0 + 2 J_1 + 3 J_2 (checks flattening and scattering)."""

    def combine(self, jacobian, losses, epoch):
        return (torch.arange(1, jacobian.shape[0] + 1, dtype=jacobian.dtype)[:, None] * jacobian).sum(0)


def test_task_level_combiner_sees_the_jacobian_of_gathered_rows():
    model = ToyMultiTask(seed=7)
    trainer = _trainer(model, mtl_method="_test_weighted")
    trainer.optimizer.zero_grad()
    trainer.train_step(Interaction({}), 1)
    reference = ToyMultiTask(seed=7)
    losses = task_losses(reference.user, reference.item, reference.bias)
    sum((t + 1) * loss for t, loss in enumerate(losses)).backward()
    for name in ("user", "item", "bias"):
        np.testing.assert_allclose(
            getattr(model, name).grad.numpy(), getattr(reference, name).grad.numpy(), atol=1e-12
        )


# ------------------------------------------------------------------------------------------------ properties
def _random_grads(t=3, r=50, d=8, seed=0):
    return torch.randn(t, r, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_one_task_gives_that_tasks_gradient():
    g = _random_grads(t=1)
    for alpha, tau, epoch in [(1.0, 1.0, 1), (1.2, 1e-6, 50), (1.05, 10.0, 3)]:
        torch.testing.assert_close(combine_row_gradients(g, alpha, tau, epoch), g[0])


def test_large_temperature_gives_the_mean():
    g = _random_grads()
    torch.testing.assert_close(combine_row_gradients(g, 1.2, 1e12, 5), g.mean(0), atol=1e-9, rtol=0)


def test_alpha_one_makes_weights_independent_of_epoch():
    g = _random_grads()
    w1 = row_task_weights(g, 1.0, 0.3, 1)
    for epoch in (2, 10, 100):
        torch.testing.assert_close(row_task_weights(g, 1.0, 0.3, epoch), w1, atol=0, rtol=0)


def test_focusing_moves_weight_to_main_task_over_epochs():
    g = _random_grads()
    early, late = row_task_weights(g, 1.2, 1.0, 1)[0], row_task_weights(g, 1.2, 1.0, 30)[0]
    assert bool((late >= early - 1e-12).all()) and late.mean() > 0.99


def test_extreme_settings_stay_finite():
    g = _random_grads() * 100
    out = combine_row_gradients(g.float(), 1.2, 1e-6, 100)
    assert torch.isfinite(out).all()
    w = row_task_weights(g, 1.2, 1e-6, 100)
    torch.testing.assert_close(w.sum(0), torch.ones(w.shape[1], dtype=w.dtype))


def test_weights_are_a_softmax_of_scaled_norms_hand_case():
    # row 0: norms (3, 4) for (main, aux); alpha^s = 2 -> (6, 4); tau = 2 -> logits (3, 2)
    g = torch.tensor([[[3.0, 0.0]], [[0.0, 4.0]]], dtype=torch.float64)
    w = row_task_weights(g, 2.0, 2.0, 1)
    e = np.exp([3.0, 2.0])
    np.testing.assert_allclose(w[:, 0].numpy(), e / e.sum(), rtol=1e-12)
    np.testing.assert_allclose(
        combine_row_gradients(g, 2.0, 2.0, 1)[0].numpy(), [3 * e[0] / e.sum(), 4 * e[1] / e.sum()], rtol=1e-12
    )


def test_bad_knobs_raise():
    g = _random_grads()
    with pytest.raises(ValueError, match="tau"):
        row_task_weights(g, 1.0, 0.0, 1)
    with pytest.raises(ValueError, match="mtl_method"):
        _trainer(ToyMultiTask(), mtl_method="nope")


# ------------------------------------------------------------------------------------------------ epochs
def test_epoch_counts_from_one_and_continues_after_resume(tmp_path):
    seen = []

    model = ToyMultiTask()
    trainer = _trainer(model, checkpoint_dir=str(tmp_path))
    original = trainer.combiner.combine_rows

    def spy(row_grads, touched, epoch):
        seen.append(epoch)
        return original(row_grads, touched, epoch)

    trainer.combiner.combine_rows = spy
    batches = [Interaction({"x": torch.zeros(1)})]
    trainer._train_epoch(batches, epoch_idx=0)
    assert set(seen) == {1}
    trainer._save_checkpoint(epoch=4, verbose=False)

    resumed = _trainer(ToyMultiTask(), checkpoint_dir=str(tmp_path))
    resumed.resume_checkpoint(trainer.saved_model_file)
    assert resumed.start_epoch == 5
    seen.clear()
    original = resumed.combiner.combine_rows
    resumed.combiner.combine_rows = spy
    resumed._train_epoch(batches, epoch_idx=resumed.start_epoch)
    assert set(seen) == {6}  # s = epoch_idx + 1 carries on from the checkpoint
