"""Multi-process training: two gloo processes on loopback take the single-process step on the global batch.

Each process builds PMTRec (MF; main, category, social and co-view links, rating) in float64 from a
*different* seed (RecBole seeds rank r with seed + r: the trainer must start every rank from rank 0's
parameters), takes its half of one global batch and of the same global auxiliary samples, and makes one SGD
step; the updated tables and the gradients written into ``.grad`` must equal one process's step on the whole
batch. SGD, not Adam: Adam's first step is lr * sign(g) and would hide a wrong gradient scale. (DirectAU is
left out: its uniformity term pairs rows of the same batch, so it is not a mean of per-rank terms.)
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TEST_DATA

from recbole_pmtrec.launch import free_port

BATCH = 64
SEED = 2020


def _config(extra: dict, tmp: str):
    from recbole_pmtrec import Config

    return Config(
        "PMTRec",
        "auxtoy",  # tests/data/auxtoy: a social (user) and a co-view (item) relation, item categories
        config_dict={
            "data_path": str(TEST_DATA),
            "load_col": {
                "inter": ["user_id", "item_id", "rating", "timestamp"],
                "item": ["item_id", "category"],
            },
            "aux_relations": {
                "social": {"suffix": "net", "space": "user", "directed": True},
                "coview": {"suffix": "coview", "space": "item", "directed": False},
            },
            "category_field": "category",
            "aux_tasks": ["category", "social", "coview", "rating"],
            "eval_args": {
                "split": {"RS": [0.6, 0.2, 0.2]},
                "order": "TO",
                "group_by": "user",
                "mode": "full",
            },
            "state": "ERROR",
            "show_progress": False,
            "use_gpu": False,
            "learner": "sgd",
            "learning_rate": 0.5,
            "seed": SEED,
            "checkpoint_dir": os.path.join(tmp, "saved"),
            "dist_timeout": 120,
            **extra,
        },
    )


def _one_step(extra: dict, tmp: str, rank: int, world: int) -> dict:
    """One step of rank ``rank`` of ``world`` on its share of the global batch and auxiliary samples."""
    from recbole.data.interaction import Interaction
    from recbole.utils import init_seed

    from recbole_pmtrec import create_dataset, data_preparation
    from recbole_pmtrec.model import PMTRec
    from recbole_pmtrec.utils import get_trainer

    config = _config(extra, tmp)
    init_seed(config["seed"], config["reproducibility"])  # the split draws from the global generator
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    init_seed(config["seed"] + rank, config["reproducibility"])  # as quick_start seeds each rank
    model = PMTRec(config, train_data._dataset).double()

    # the global batch and the global auxiliary samples: the same on every process
    draw = torch.Generator().manual_seed(7)
    batch = {
        config["USER_ID_FIELD"]: torch.randint(1, dataset.user_num, (BATCH,), generator=draw),
        config["ITEM_ID_FIELD"]: torch.randint(1, dataset.item_num, (BATCH,), generator=draw),
        config["NEG_PREFIX"] + config["ITEM_ID_FIELD"]: torch.randint(
            1, dataset.item_num, (BATCH,), generator=draw
        ),
    }
    batch[config["RATING_FIELD"]] = torch.randint(1, 6, (BATCH,), generator=draw).float()
    sampler = model.aux_sampler
    sampler.generator.manual_seed(11)
    sampler.batch_size = BATCH
    aux = {task: sampler.sample(task) for task in sampler.tasks}

    trainer = get_trainer(config["MODEL_TYPE"], "PMTRec")(config, model)
    share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    sampler.sample = lambda task: tuple(x[share] for x in aux[task])
    local = Interaction({k: v[share] for k, v in batch.items()})
    torch.manual_seed(
        config["seed"]
    )  # one process: the combiner's draws; under DDP they use the shared state
    trainer.optimizer.zero_grad()
    trainer.train_step(local, epoch=1)
    out = {}
    for name, weight in trainer.tables.items():
        out[name] = weight.detach().clone()
        out[name + ".grad"] = weight.grad.detach().clone()
    if trainer.dist is not None:
        out["bytes"] = trainer.dist.bytes_last
    return out


def _rank(local_rank: int, extra: dict, tmp: str, port: int) -> None:
    import recbole_pmtrec  # noqa: F401

    torch.set_num_threads(1)
    group = {
        "local_rank": local_rank,
        "world_size": 2,
        "nproc": 2,
        "ip": "127.0.0.1",
        "port": port,
        "offset": 0,
    }
    try:
        out = _one_step({**extra, **group}, tmp, local_rank, 2)
        torch.save(out, os.path.join(tmp, f"rank{local_rank}.pt"))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.mark.parametrize(
    "extra",
    [
        {"mtl_method": "pmtrec", "row_grad_mode": "unique"},
        {"mtl_method": "pmtrec", "row_grad_mode": "dense"},
        {"mtl_method": "pcgrad", "row_grad_mode": "unique"},
    ],
    ids=["pmtrec-unique", "pmtrec-dense", "pcgrad-unique"],
)
def test_two_gloo_processes_take_the_single_process_step(tmp_path, extra):
    tmp = str(tmp_path)
    reference = _one_step(extra, tmp, rank=0, world=1)
    mp.spawn(_rank, args=(extra, tmp, free_port()), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(os.path.join(tmp, f"rank{rank}.pt"))
        assert got["bytes"] > 0
        for key, want in reference.items():
            assert got[key].dtype == torch.float64
            torch.testing.assert_close(got[key], want, rtol=0, atol=1e-9, msg=f"rank {rank}: {key}")
    # the step moved the rows (the comparison is not between two untouched tables)
    assert float(reference["item.grad"].abs().sum()) > 0
