"""Resume under DDP: two gloo processes that resume from a checkpoint train as an uninterrupted pair does.

Three fresh pairs of processes (world size 2, loopback, a free port) train PMTRec (MF; main, category, social
and co-view links, rating) on ``auxtoy`` with Adam, in float32, a global batch of 4 (2 rows per rank, 4 steps
an epoch): the *uninterrupted* pair trains 2 epochs; the *first* pair trains 1 epoch and saves; the *resumed*
pair resumes from that checkpoint (``resume_checkpoint``, then RecBole's ``fit`` from ``start_epoch`` 1) and
trains the second. Every parameter (tables and dense), the optimizer's state and the combiner's state of the
resumed pair equal the uninterrupted pair's, with ``torch.equal`` on both ranks: the same operations on the same
numbers in the same order (one thread per process, gloo's sum of two ranks is commutative), so nothing is
left for a tolerance to hide.

What makes the comparison bite: RecBole's negative sampler (numpy, per rank), the auxiliary sampler (its own
generator, per rank) and the shuffle all draw random numbers; the same resumed pair, rebuilt, also resumes from
the same checkpoint with its random state dropped and with the two ranks' random states swapped, and both must
give other parameters.

Checkpoint files: every ``torch.save`` / ``torch.load`` of a file under the checkpoint folder is recorded
in each process; only rank 0 writes, and every read (the first pair's own ``evaluate(load_best_model=True)``
right after ``fit``, as RecBole's examples do without a barrier of their own, and the resumed pair's) starts
after rank 0's write has finished and sees the bytes it wrote. Rank 0 is made to start each write 0.3 s
late, so that a rank that does not wait for it reads a missing or partial file.
"""

from __future__ import annotations

import hashlib
import multiprocessing.resource_tracker as resource_tracker
import os
import time

import psutil
import torch
import torch.multiprocessing as mp
from test_distributed import _config

from recbole_pmtrec.launch import free_port

WORLD = 2
TRAIN = {
    "learner": "adam",
    "learning_rate": 0.05,
    "train_batch_size": 4,  # global: 2 rows per rank, 4 steps an epoch on auxtoy's 16 training rows
    "mtl_method": "pmtrec",
    "row_grad_mode": "unique",
    "dist_timeout": 60,
}
WRITE_DELAY_S = 0.3


def _digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _record_checkpoint_io(rank: int, folder: str, log: list) -> None:
    """Record every write and read of a file under ``folder`` in this process (rank 0 writes late)."""
    save, load = torch.save, torch.load

    def recorded_save(obj, f, *args, **kwargs):
        if not (isinstance(f, str | os.PathLike) and os.fspath(f).startswith(folder)):
            return save(obj, f, *args, **kwargs)
        if rank == 0:
            time.sleep(WRITE_DELAY_S)
        start = time.monotonic()
        save(obj, f, *args, **kwargs)
        log.append(("write", rank, os.fspath(f), start, time.monotonic(), _digest(f)))

    def recorded_load(f, *args, **kwargs):
        if isinstance(f, str | os.PathLike) and os.fspath(f).startswith(folder):
            path, start = os.fspath(f), time.monotonic()
            seen = _digest(path) if os.path.isfile(path) else None
            log.append(("read", rank, path, start, None, seen))
        return load(f, *args, **kwargs)

    torch.save, torch.load = recorded_save, recorded_load


def _train(rank: int, tmp: str, group: dict, name: str, epochs: int, resume_from=None) -> dict:
    """Seeded as ``run_recbole_pmtrec`` seeds a rank; ``epochs`` of ``fit`` (after a resume, the rest);
    saves to ``<checkpoint_dir>/<name>.pth``; returns the final model, optimizer and combiner state."""
    from recbole.utils import init_seed

    from recbole_pmtrec import create_dataset, data_preparation
    from recbole_pmtrec.model import PMTRec
    from recbole_pmtrec.utils import get_trainer

    config = _config({**TRAIN, "epochs": epochs, **group}, tmp)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + rank, config["reproducibility"])
    model = PMTRec(config, train_data._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "PMTRec")(config, model)
    start_epoch = 0
    if resume_from is not None:
        trainer.resume_checkpoint(resume_from)
        start_epoch = trainer.start_epoch
    trainer.saved_model_file = os.path.join(config["checkpoint_dir"], f"{name}.pth")
    trainer.fit(train_data, None, saved=True, show_progress=False)
    out = {
        "start_epoch": start_epoch,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        "combiner": trainer.combiner.state_dict(),
        "steps": trainer.dist.steps,
    }
    if name == "first":  # RecBole's usage: fit, then the test with the best (here: last) checkpoint loaded
        trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    return out


def _rank(local_rank: int, phase: str, tmp: str, port: int) -> None:
    import recbole_pmtrec  # noqa: F401

    torch.set_num_threads(1)
    group = {
        "local_rank": local_rank,
        "world_size": WORLD,
        "nproc": WORLD,
        "ip": "127.0.0.1",
        "port": port,
        "offset": 0,
    }
    folder = os.path.join(tmp, "saved")
    save = torch.save
    log: list = []
    _record_checkpoint_io(local_rank, folder, log)
    try:
        if phase == "straight":
            out = {"straight": _train(local_rank, tmp, group, "straight", epochs=2)}
        elif phase == "first":
            out = {"first": _train(local_rank, tmp, group, "first", epochs=1)}
        else:
            out = {
                variant: _train(local_rank, tmp, group, variant, 2, os.path.join(folder, f"{source}.pth"))
                for variant, source in [("resumed", "first"), ("dropped", "no-rng"), ("swapped", "swapped")]
            }
        out["io"] = log
        save(out, os.path.join(tmp, f"{phase}-rank{local_rank}.pt"))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _pair(phase: str, tmp: str) -> list[dict]:
    mp.spawn(_rank, args=(phase, tmp, free_port()), nprocs=WORLD, join=True)
    return [torch.load(os.path.join(tmp, f"{phase}-rank{r}.pt")) for r in range(WORLD)]


def _variants_of_first(folder: str) -> None:
    """The first pair's checkpoint without its random state, and with the two ranks' random states swapped."""
    from recbole_pmtrec.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(os.path.join(folder, "first.pth"))
    ranks = checkpoint["rng"]["ranks"]
    assert len(ranks) == WORLD
    save_checkpoint(
        {**checkpoint, "rng": {"ranks": list(reversed(ranks))}}, os.path.join(folder, "swapped.pth")
    )
    checkpoint.pop("rng")
    save_checkpoint(checkpoint, os.path.join(folder, "no-rng.pth"))


def _differences(got: dict, want: dict) -> list[str]:
    """Names of the model tensors, optimizer moments and combiner tensors that are not bit-identical."""
    out = [k for k in want["model"] if not torch.equal(got["model"][k], want["model"][k])]
    assert got["optimizer"]["param_groups"] == want["optimizer"]["param_groups"]
    state, reference = got["optimizer"]["state"], want["optimizer"]["state"]
    assert set(state) == set(reference)
    for index, moments in reference.items():
        out += [f"optimizer[{index}].{k}" for k, v in moments.items() if not torch.equal(state[index][k], v)]
    for key, value in want["combiner"].items():
        same = (
            torch.equal(got["combiner"][key], value)
            if torch.is_tensor(value)
            else got["combiner"][key] == value
        )
        if not same:
            out.append(f"combiner.{key}")
    return out


def _check_io(runs: list[list[dict]], folder: str) -> None:
    events = [e for run in runs for r in run for e in r["io"]]
    writes = [e for e in events if e[0] == "write"]
    reads = [e for e in events if e[0] == "read"]
    assert writes and reads
    assert {e[1] for e in writes} == {0}, "a rank other than 0 wrote a checkpoint"
    written = {
        os.path.join(folder, f"{n}.pth") for n in ("straight", "first", "resumed", "dropped", "swapped")
    }
    assert {e[2] for e in writes} == written
    # the first pair reads its own file right after fit, in the same group: both ranks, after rank 0's write
    first = os.path.join(folder, "first.pth")
    assert {e[1] for e in reads if e[2] == first} == {0, 1}
    for _, rank, path, start, _, seen in reads:
        if path.endswith(("no-rng.pth", "swapped.pth")):  # written by the test between the pairs
            continue
        last = max((w for w in writes if w[2] == path and w[4] <= start), key=lambda w: w[4], default=None)
        assert last is not None, f"rank {rank} read {path} before rank 0 had finished writing it"
        assert seen == last[5], f"rank {rank} read {path} while it was not the file rank 0 wrote"


def test_resume_under_ddp_equals_uninterrupted_training(tmp_path):
    tmp = str(tmp_path)
    folder = os.path.join(tmp, "saved")
    tracker_running = resource_tracker._resource_tracker._pid is not None
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        straight = _pair("straight", tmp)
        first = _pair("first", tmp)
        _variants_of_first(folder)
        resumed = _pair("resumed", tmp)
    finally:
        if not tracker_running:  # torch.multiprocessing.spawn started it for this test
            resource_tracker._resource_tracker._stop()
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in children]
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    for rank in range(WORLD):
        want = straight[rank]["straight"]
        got = resumed[rank]["resumed"]
        assert got["start_epoch"] == 1  # RecBole's fit trained the second epoch only
        assert want["steps"] == 2 * got["steps"] == 2 * first[rank]["first"]["steps"] == 8
        assert _differences(got, want) == [], f"rank {rank}"
        # the second epoch moved every table and dense parameter (the comparison is not of untouched values)
        moved = [
            k for k in want["model"] if not torch.equal(first[rank]["first"]["model"][k], want["model"][k])
        ]
        assert moved == list(want["model"]), f"rank {rank}: not moved by the second epoch"
        # the test can fail: without the random state, or with the other rank's, the second epoch differs
        for variant in ("dropped", "swapped"):
            assert resumed[rank][variant]["start_epoch"] == 1
            differ = _differences(resumed[rank][variant], want)
            assert any(not k.startswith(("optimizer", "combiner")) for k in differ), f"rank {rank}: {variant}"
    # the ranks stay identical (DDP): rank 1's result is rank 0's
    assert _differences(straight[1]["straight"], straight[0]["straight"]) == []

    _check_io([straight, first, resumed], folder)
