"""``BlockedAdam`` (``recbole_pmtrec/trainer/optim.py``) is ``torch.optim.Adam``, bit for bit: parameters and both
moments compared with ``torch.equal`` against the stock optimizer after many steps, on tables whose sizes are
not multiples of the chunk or of any SIMD width, with rows whose gradient is zero (Adam still moves them), with
and without weight decay, on one and two threads, after a resume from the stock optimizer's state dict; and
through the trainers: a multi-task epoch and a RecBole BPR epoch with ``blocked_adam`` (and the multi-task
trainer's kept gradient buffer) end with the parameters of ``torch.optim.Adam`` and a fresh zero gradient per
step."""

from __future__ import annotations

import copy

import pytest
import torch
from recbole.utils import init_seed

from recbole_pmtrec import Config, create_dataset, data_preparation, get_model, get_trainer
from recbole_pmtrec.trainer import optim
from recbole_pmtrec.trainer.optim import BlockedAdam


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    """Chunks of 4,096 elements (the default is 2^18): small tables take the chunked path, many chunks each."""
    monkeypatch.setattr(optim, "CHUNK", 4096)
    monkeypatch.setattr(optim, "MIN_BLOCKED", 8192)


def _sparse_rows_run(cls, n, d, steps, seed, state=None, **settings):
    """``steps`` Adam steps on a [n, d] table whose gradient touches 512 random rows per step, and a small
    dense bias; returns (table, bias, optimizer)."""
    g = torch.Generator().manual_seed(seed)
    table = torch.nn.Parameter(torch.randn(n, d, generator=g))
    bias = torch.nn.Parameter(torch.randn(7, generator=g))
    opt = cls([table, bias], **settings)
    if state is not None:
        table.data.copy_(state[0])
        bias.data.copy_(state[1])
        opt.load_state_dict(copy.deepcopy(state[2]))  # load_state_dict keeps the tensors it is given
    for _ in range(steps):
        grad = torch.zeros(n, d)
        grad[torch.randint(0, n, (64,), generator=g)] = torch.randn(64, d, generator=g)
        table.grad, bias.grad = grad, torch.randn(7, generator=g)
        opt.step()
    return table, bias, opt


def _assert_identical(a, b):
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for p, q in ((a[0], b[0]), (a[1], b[1])):
        sa, sb = a[2].state[p], b[2].state[q]
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
        assert torch.equal(sa["step"], sb["step"])


@pytest.mark.parametrize("shape", [(10_003, 3), (2_011, 33), (256, 32)])
@pytest.mark.parametrize("settings", [{"lr": 0.005}, {"lr": 0.05, "weight_decay": 1e-4, "eps": 1e-6}])
def test_same_bits_as_torch_adam(shape, settings):
    stock = _sparse_rows_run(torch.optim.Adam, *shape, steps=6, seed=3, **settings)
    ours = _sparse_rows_run(BlockedAdam, *shape, steps=6, seed=3, **settings)
    assert stock[0].numel() >= optim.MIN_BLOCKED  # the chunked path ran
    _assert_identical(stock, ours)
    # and the test can fail: a different number of steps is not the same
    assert not torch.equal(_sparse_rows_run(BlockedAdam, *shape, steps=5, seed=3, **settings)[0], stock[0])


def test_same_bits_on_two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        stock = _sparse_rows_run(torch.optim.Adam, 7_001, 5, steps=4, seed=1, lr=0.01, weight_decay=1e-5)
        ours = _sparse_rows_run(BlockedAdam, 7_001, 5, steps=4, seed=1, lr=0.01, weight_decay=1e-5)
    finally:
        torch.set_num_threads(threads)
    _assert_identical(stock, ours)


def test_resumes_from_torch_adam_state():
    first = _sparse_rows_run(torch.optim.Adam, 4_009, 4, steps=3, seed=5, lr=0.01)
    state = (first[0].detach().clone(), first[1].detach().clone(), first[2].state_dict())
    stock = _sparse_rows_run(torch.optim.Adam, 4_009, 4, steps=4, seed=6, state=state, lr=0.01)
    ours = _sparse_rows_run(BlockedAdam, 4_009, 4, steps=4, seed=6, state=state, lr=0.01)
    _assert_identical(stock, ours)
    assert set(ours[2].state_dict()["state"][0]) == set(stock[2].state_dict()["state"][0])


def test_other_settings_take_torch_path(monkeypatch):
    """amsgrad (and foreach, capturable, ...) and parameters off the CPU are handed to torch.optim.Adam.step."""
    called = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, closure=None: called.append(1))
    table = torch.nn.Parameter(torch.zeros(optim.MIN_BLOCKED, 1))
    table.grad = torch.ones_like(table)
    BlockedAdam([table], amsgrad=True).step()
    assert called == [1]
    # a parameter off the CPU (where torch defaults to its foreach / fused kernels): torch's step too
    elsewhere = torch.nn.Parameter(torch.zeros(optim.MIN_BLOCKED, 1, device="meta"))
    elsewhere.grad = torch.ones_like(elsewhere)
    BlockedAdam([table, elsewhere]).step()
    assert called == [1, 1]


def test_blocked_only_replaces_plain_adam():
    p = torch.nn.Parameter(torch.zeros(3))
    sgd = torch.optim.SGD([p], lr=0.1)
    assert optim.blocked(sgd) is sgd
    adam = torch.optim.Adam([p], lr=0.1, weight_decay=0.5)
    new = optim.blocked(adam)
    assert type(new) is BlockedAdam and new.param_groups[0]["weight_decay"] == 0.5


def _fresh_zero_rows(self, name, index, rows_grad):
    """The multi-task trainer's gradient write without its kept buffer: zeros, then the rows."""
    weight = self.tables[name]
    grad = torch.zeros_like(weight)
    if index is None:
        grad[:] = rows_grad
    else:
        grad[index] = rows_grad.detach()
    weight.grad = grad


def _trained(model_name, blocked_adam, fast_config, **extra):
    config = Config(
        model=model_name,
        dataset="ml-100k",
        config_dict={**fast_config, "blocked_adam": blocked_adam, "eval_step": 0, "epochs": 1, **extra},
    )
    init_seed(config["seed"], config["reproducibility"])
    train, _valid, _test = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(model_name)(config, train._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    assert (type(trainer.optimizer) is BlockedAdam) == blocked_adam
    if not blocked_adam and hasattr(trainer, "_write_rows"):  # the reference: a fresh zero gradient per step
        trainer._write_rows = _fresh_zero_rows.__get__(trainer)
    trainer._train_epoch(train, 0)
    return {k: v.clone() for k, v in model.state_dict().items()}, model


@pytest.mark.parametrize(
    "model_name, extra",
    [("BPR", {"embedding_size": 64}), ("PMTRec", {"weight_decay": 1e-4, "learning_rate": 0.01})],
)
def test_trainers_train_the_same_as_stock_adam_and_fresh_gradients(model_name, extra, fast_config):
    stock, model = _trained(model_name, False, fast_config, **extra)
    ours, _ = _trained(model_name, True, fast_config, **extra)
    tables = [p for p in model.parameters() if p.numel() >= optim.MIN_BLOCKED]
    assert tables  # ml-100k's tables are large enough for the chunked path
    assert list(stock) == list(ours)
    for key in stock:
        assert torch.equal(stock[key], ours[key]), key
