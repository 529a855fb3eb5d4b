"""Multi-process training with RecBole's keys and launch convention (``nproc``, ``world_size``, ``ip``,
``port``, ``offset``), on CPUs (gloo) as on GPUs (NCCL).

RecBole 1.2.1's ``run()`` spawns ``nproc`` processes (``torch.multiprocessing.spawn``), each with a
``local_rank`` in its config; global rank = ``local_rank + offset``; the group meets at
``tcp://ip:port``. Its ``Config._init_device`` then hard-codes NCCL and CUDA (``torch.cuda.set_device``,
an assert on ``gpu_id``) and its trainers wrap the model in ``DistributedDataParallel(device_ids=[rank])``,
which a CPU module refuses. :func:`init_device` (the plugin Config's ``_init_device``) picks the backend from
the devices (``dist_backend`` overrides it), and :func:`_cpu_aware_ddp` drops ``device_ids`` for a CPU
module, scoped to ``recbole.trainer.trainer``. :func:`spawn` is the launcher (``run_recbole_pmtrec.py
--nproc=N``): loopback and a free port unless told otherwise. ``recbole.quick_start`` is never imported (it
imports ray).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

LOOPBACK = "127.0.0.1"


def free_port(ip: str = LOOPBACK) -> int:
    """A TCP port nobody listens on at ``ip`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ip, 0))
        return int(sock.getsockname()[1])


def _cpu_aware_ddp(module, device_ids=None, **kwargs):
    """``DistributedDataParallel`` as RecBole calls it, without ``device_ids`` for a CPU module."""
    on_cuda = any(p.is_cuda for p in module.parameters())
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids if on_cuda else None, **kwargs
    )


def _install_ddp_wrapper() -> None:
    import recbole.trainer.trainer as trainer_module

    trainer_module.DistributedDataParallel = _cpu_aware_ddp


def backend_for(config: dict, use_cuda: bool) -> str:
    """``dist_backend`` when set, else NCCL on GPUs and gloo on CPUs."""
    chosen = (config.get("dist_backend") or ("nccl" if use_cuda else "gloo")).lower()
    if chosen not in {"gloo", "nccl", "mpi"}:
        raise ValueError(f"dist_backend must be gloo, nccl or mpi, got '{chosen}'")
    if chosen == "nccl" and not use_cuda:
        raise ValueError(
            "dist_backend: nccl needs one GPU per process (use_gpu and gpu_id); use gloo on CPUs"
        )
    return chosen


def init_device(config) -> None:
    """The plugin Config's ``_init_device``: RecBole's for a single process (no ``local_rank``); for a
    process of a group, join the group on the backend the devices call for."""
    from recbole.config import Config as RecBoleConfig

    final = config.final_config_dict
    if "local_rank" not in final:
        RecBoleConfig._init_device(config)
        return
    gpu_id = final["gpu_id"]
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple | list) else str(gpu_id)
    final["gpu_id"] = gpu_id
    nproc = int(final.get("nproc") or 1)
    local_rank = int(final["local_rank"])
    gpus = [g for g in gpu_id.split(",") if g.strip()]
    use_cuda = bool(final.get("use_gpu")) and len(gpus) >= nproc and torch.cuda.is_available()
    if use_cuda:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    backend = backend_for(final, use_cuda)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=local_rank + int(final.get("offset") or 0),
            world_size=int(final["world_size"]),
            init_method=f"tcp://{final.get('ip') or LOOPBACK}:{final['port']}",
            timeout=timedelta(seconds=int(final.get("dist_timeout") or 600)),
        )
    final["dist_backend"] = backend
    final["single_spec"] = False
    if use_cuda:
        torch.cuda.set_device(local_rank)
        final["device"] = torch.device("cuda", local_rank)
    else:
        final["device"] = torch.device("cpu")
    if local_rank + int(final.get("offset") or 0) != 0:
        final["state"] = "error"
        final["show_progress"] = False
        final["verbose"] = False
    _install_ddp_wrapper()


def _worker(local_rank, model, dataset, config_file_list, config_dict, queue):
    """One spawned process: train and test with ``local_rank`` set; rank 0 hands the result back."""
    import recbole_pmtrec  # noqa: F401  (compat shims in the fresh interpreter)
    from recbole_pmtrec.quick_start import run_recbole_pmtrec

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    try:
        result = run_recbole_pmtrec(
            model=model,
            dataset=dataset,
            config_file_list=config_file_list,
            config_dict={**config_dict, "local_rank": local_rank},
        )
        if local_rank + int(config_dict.get("offset") or 0) == 0:
            queue.put(result)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    nproc: int = 2,
    world_size: int = -1,
    ip: str | None = None,
    port: int | None = None,
    offset: int = 0,
):
    """RecBole's ``run(..., nproc, world_size, ip, port, group_offset)`` for the plugin: start ``nproc``
    processes on this machine (ranks ``offset`` .. ``offset + nproc - 1`` of ``world_size``), wait for all
    of them, return rank 0's result (None when rank 0 runs elsewhere). ``ip`` defaults to loopback and
    ``port`` to a free one; a group spread over machines must name both."""
    import torch.multiprocessing as mp

    world_size = nproc if world_size is None or world_size <= 0 else world_size
    if world_size > nproc and (ip is None or port is None):
        raise ValueError(
            f"world_size {world_size} > nproc {nproc}: the other machines must meet at a known ip and port; "
            "give both (--ip=... --port=...)"
        )
    ip = ip or LOOPBACK
    port = int(port) if port else free_port(ip)
    config_dict = {
        **(config_dict or {}),
        "nproc": nproc,
        "world_size": world_size,
        "ip": ip,
        "port": port,
        "offset": offset,
    }
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=(model, dataset, config_file_list, config_dict, queue), nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()
