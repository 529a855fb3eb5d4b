"""Training throughput of the multi-task trainer in 1 and N gloo processes (loopback), with the scaling
efficiency and the per-step communication of the gradient exchange (trainer/distributed.py).

    OMP_NUM_THREADS=1 python benchmarks/bench_distributed.py --dataset ml-100k --steps 30 --nproc 1 2

Each run builds the data and the model in every process, then times ``--steps`` training steps of the global
batch (``train_batch_size``; each of N processes takes 1/N of it) after ``--warmup`` steps, between two
barriers. Throughput = interactions of the global batches / wall seconds of rank 0. Communication: the bytes
one rank hands to the collectives per step (index all-gather + one all-reduce) and the seconds spent in the
exchange (``DistributedStep.reduce``). The machine's load average is printed beside every figure: on a shared
machine the figures move with it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.multiprocessing as mp

import recbole_pmtrec  # noqa: F401  (RecBole's compatibility shims, in every spawned process too)


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _measure(local_rank, args, nproc, port, out_dir):
    from recbole.utils import init_seed

    from recbole_pmtrec import Config, create_dataset, data_preparation
    from recbole_pmtrec.trainer import distributed
    from recbole_pmtrec.utils import get_model, get_trainer

    torch.set_num_threads(1)
    group = {}
    if nproc > 1:
        group = {
            "local_rank": local_rank,
            "world_size": nproc,
            "nproc": nproc,
            "ip": "127.0.0.1",
            "port": port,
        }
    config = Config(
        args.model,
        args.dataset,
        config_dict={
            "state": "ERROR",
            "show_progress": False,
            "use_gpu": args.gpu,
            "mtl_method": args.mtl_method,
            "row_grad_mode": args.row_grad_mode,
            "checkpoint_dir": os.path.join(out_dir, "saved"),
            **({"data_path": args.data_path} if args.data_path else {}),
            **group,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    init_seed(config["seed"] + local_rank, config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    exchange = [0.0]
    if trainer.dist is not None:
        reduce = trainer.dist.reduce

        def timed(*a):
            started = time.perf_counter()
            out = reduce(*a)
            exchange[0] += time.perf_counter() - started
            return out

        trainer.dist.reduce = timed
    batches = iter(train_data)

    def step(count):
        nonlocal batches
        for _ in range(count):
            try:
                interaction = next(batches)
            except StopIteration:
                batches = iter(train_data)
                interaction = next(batches)
            trainer.optimizer.zero_grad()
            trainer.train_step(interaction.to(trainer.device), epoch=1)

    step(args.warmup)
    exchange[0] = 0.0
    sent_before = trainer.dist.bytes_total if trainer.dist else 0
    distributed.barrier()
    started = time.perf_counter()
    step(args.steps)
    distributed.barrier()
    seconds = time.perf_counter() - started
    if local_rank == 0:
        sent = (trainer.dist.bytes_total - sent_before) / args.steps if trainer.dist else 0
        torch.save(
            {
                "seconds": seconds,
                "interactions": args.steps * config["train_batch_size"],
                "bytes_per_step": sent,
                "exchange_s_per_step": exchange[0] / args.steps,
            },
            os.path.join(out_dir, f"n{nproc}.pt"),
        )
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="PMTRec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--mtl_method", default="pmtrec")
    parser.add_argument("--row_grad_mode", default="auto")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gpu", action="store_true", help="one GPU per process (NCCL)")
    args = parser.parse_args()

    from recbole_pmtrec.launch import free_port

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_distributed-") as out_dir:
        for nproc in args.nproc:
            load_before = _load()
            mp.spawn(_measure, args=(args, nproc, free_port(), out_dir), nprocs=nproc, join=True)
            result = torch.load(os.path.join(out_dir, f"n{nproc}.pt"))
            result.update(nproc=nproc, load=f"{load_before} -> {_load()}")
            rows.append(result)
    base = rows[0]["interactions"] / rows[0]["seconds"] / rows[0]["nproc"]
    print(
        f"\n{args.model} ({args.mtl_method}, row_grad_mode {args.row_grad_mode}) on {args.dataset}, "
        f"{args.steps} steps after {args.warmup} warm-up, {os.cpu_count()} CPUs\n"
    )
    print(
        "| processes | interactions/s | scaling efficiency | KiB sent per step per rank | exchange s/step | load (1/5/15 min) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        throughput = r["interactions"] / r["seconds"]
        efficiency = throughput / (base * r["nproc"])
        print(
            f"| {r['nproc']} | {throughput:,.0f} | {efficiency:.2f} | {r['bytes_per_step'] / 1024:,.1f} | "
            f"{r['exchange_s_per_step']:.4f} | {r['load']} |"
        )


if __name__ == "__main__":
    main()
