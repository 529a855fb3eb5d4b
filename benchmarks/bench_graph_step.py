"""Step time and memory of PMTRec with the graph encoders (LightGCN, NGCF) against EW, in bounded runs.

The same protocol as ``bench_step_time.py`` (whose data preparation, replayed auxiliary samples and memory
child it reuses): pre-loaded batches, steps of EW (``mtl_method: ew``, PMTRec's own gradient route: per-task
output gradients, ``base_gradients``, sum), PMTRec and RecBole's plain ``loss.backward()`` alternate step by
step; ``--warmup`` steps are dropped and the median of ``--steps`` is reported. No full epoch (an Epinions
epoch of NGCF takes many minutes on one thread). Also times, for NGCF, the two ways of taking the per-task
vector-Jacobian products of the propagation: a loop of ``autograd.grad`` (what the encoder does) and one
``is_grads_batched`` call.

    OMP_NUM_THREADS=1 python benchmarks/bench_graph_step.py --datasets ml-100k epinions --encoders lightgcn ngcf
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

torch.set_num_threads(1)

import bench_step_time as common  # noqa: E402

from recbole_pmtrec.trainer import MultiTaskTrainer  # noqa: E402

METHODS = ("ew", "pmtrec", "recbole_backward")


def _timed(function, seconds: list[float]):
    """``function`` wrapped to append its wall time to ``seconds``."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return result

    return wrapper


def time_steps(dataset, encoder, data_path, prepared, steps, warmup):
    """Median step time (s) per method, and PMTRec's median time in ``base_gradients``."""
    _, train_data, batches = prepared
    batches = batches[: steps + warmup]
    trainers = {}
    pull_back: list[float] = []
    for method in ("ew", "pmtrec"):
        cfg = common._config(dataset, encoder, method, data_path, {})
        trainers[method] = MultiTaskTrainer(cfg, common._model(cfg, train_data, batches))
    pmtrec_model = trainers["pmtrec"].model
    pmtrec_model.base_gradients = _timed(pmtrec_model.base_gradients, pull_back)
    config = common._config(dataset, encoder, "ew", data_path, {})
    plain_model = common._model(config, train_data, batches)
    plain_optimizer = torch.optim.Adam(plain_model.parameters(), lr=config["learning_rate"])

    def plain_step(batch):
        plain_optimizer.zero_grad()
        sum(plain_model.calculate_loss(batch)).backward()
        plain_optimizer.step()

    times = {name: [] for name in METHODS}
    device = config["device"]
    for i, batch in enumerate(batches):
        for name in METHODS:
            common._sync(device)
            start = time.perf_counter()
            if name == "recbole_backward":
                plain_step(batch)
            else:
                trainers[name].optimizer.zero_grad()
                trainers[name].train_step(batch, 1)
            common._sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    medians["pmtrec_base_gradients"] = statistics.median(pull_back[warmup:])
    return medians, list(trainers["pmtrec"].task_names)


def step_memory(dataset, encoder, data_path, method, steps):
    """Resident memory (MiB) of a fresh process before ``steps`` steps of ``method`` (data and model loaded)
    and its peak during them (Linux: the peak is reset through ``/proc/self/clear_refs`` just before)."""
    data_path = os.path.abspath(data_path)  # the child runs in benchmarks/
    code = (
        "import sys, json; sys.argv=[sys.argv[0]]; import bench_graph_step as b; "
        f"print(json.dumps(b._memory_child({dataset!r}, {encoder!r}, {data_path!r}, {method!r}, {steps})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=os.path.dirname(os.path.abspath(__file__)),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory_child(dataset, encoder, data_path, method, steps):
    _, train_data, batches = common._prepare(dataset, encoder, data_path, steps, {})
    cfg = common._config(dataset, encoder, "ew" if method == "recbole_backward" else method, data_path, {})
    model = common._model(cfg, train_data, batches)
    if method == "recbole_backward":
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"])

        def step(batch):
            optimizer.zero_grad()
            sum(model.calculate_loss(batch)).backward()
            optimizer.step()
    else:
        trainer = MultiTaskTrainer(cfg, model)

        def step(batch):
            trainer.optimizer.zero_grad()
            trainer.train_step(batch, 1)

    del train_data
    gc.collect()
    before = common._status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")  # reset VmHWM (the peak) to the current resident size
    for batch in batches:
        step(batch)
    peak = common._status_mib("VmHWM")
    return {
        "rss_before_steps_mib": before,
        "peak_during_steps_mib": peak,
        "peak_above_before_mib": peak - before,
    }


def ngcf_vjp_strategies(dataset, data_path, prepared, repeats=5):
    """Median time (s) of the T per-task VJPs of NGCF's propagation: a loop of ``autograd.grad`` vs one call
    with ``is_grads_batched=True``; and the largest difference between their results."""
    _, train_data, batches = prepared
    cfg = common._config(dataset, "ngcf", "pmtrec", data_path, {})
    model = common._model(cfg, train_data, batches)
    encoder = model.encoder.train()
    users, items = encoder()
    num_tasks = len(model.task_names)
    grads = {
        "user": torch.randn(num_tasks, *users.shape, device=users.device),
        "item": torch.randn(num_tasks, *items.shape, device=items.device),
    }
    base = [encoder.user_embedding.weight, encoder.item_embedding.weight]
    stacked = encoder.stack_output_grads(grads)

    def batched():
        return torch.autograd.grad(
            encoder._propagated, base, grad_outputs=stacked, retain_graph=True, is_grads_batched=True
        )

    timings = {"loop": [], "is_grads_batched": []}
    for _ in range(repeats):
        for name, run in (("loop", lambda: encoder.base_gradients(grads)), ("is_grads_batched", batched)):
            common._sync(users.device)
            start = time.perf_counter()
            run()
            common._sync(users.device)
            timings[name].append(time.perf_counter() - start)
    loop, vmapped = encoder.base_gradients(grads), batched()
    difference = max(
        float((loop["user"] - vmapped[0]).abs().max()), float((loop["item"] - vmapped[1]).abs().max())
    )
    return {k: statistics.median(v) for k, v in timings.items()}, difference


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["ml-100k"])
    parser.add_argument("--encoders", nargs="+", default=["lightgcn", "ngcf"])
    parser.add_argument("--data_path", default="dataset/")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--memory_steps", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args(argv)
    sys.argv = [sys.argv[0]]  # RecBole's Config reads --key=value from sys.argv
    rows, vjp_rows = [], []
    for dataset in args.datasets:
        prepared = common._prepare(dataset, "mf", args.data_path, args.steps + args.warmup, {})
        for encoder in args.encoders:
            medians, tasks = time_steps(dataset, encoder, args.data_path, prepared, args.steps, args.warmup)
            print(json.dumps({"dataset": dataset, "encoder": encoder, "step_s": medians}), flush=True)
            memory = {}
            if not args.no_memory:
                for method in METHODS:
                    memory[method] = step_memory(dataset, encoder, args.data_path, method, args.memory_steps)
            row = {
                "dataset": dataset,
                "encoder": encoder,
                "tasks": tasks,
                "step_ms": {k: round(v * 1000, 1) for k, v in medians.items()},
                "ratio_pmtrec_over_ew": round(medians["pmtrec"] / medians["ew"], 3),
                "ratio_pmtrec_over_recbole_backward": round(
                    medians["pmtrec"] / medians["recbole_backward"], 3
                ),
                "memory": memory,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        if "ngcf" in args.encoders:
            timings, difference = ngcf_vjp_strategies(dataset, args.data_path, prepared)
            vjp_rows.append((dataset, timings, difference))
            print(json.dumps({"dataset": dataset, "ngcf_vjp_s": timings, "max_abs_difference": difference}))
        del prepared

    print(
        "\n| dataset | encoder | tasks | EW ms | PMTRec ms | of which base_gradients ms | RecBole backward ms "
        "| PMTRec/EW | PMTRec/RecBole backward | RSS before steps MiB | peak above it in steps: EW / PMTRec / "
        "RecBole backward MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = r["memory"]
        mem_text = (
            f"{mem['pmtrec']['rss_before_steps_mib']:.0f} | "
            + " / ".join(f"{mem[m]['peak_above_before_mib']:.0f}" for m in METHODS)
            if mem
            else "- | -"
        )
        ms = r["step_ms"]
        print(
            f"| {r['dataset']} | {r['encoder']} | {'+'.join(r['tasks'])} | {ms['ew']} | {ms['pmtrec']} | "
            f"{ms['pmtrec_base_gradients']} | {ms['recbole_backward']} | {r['ratio_pmtrec_over_ew']} | "
            f"{r['ratio_pmtrec_over_recbole_backward']} | {mem_text} |"
        )
    if vjp_rows:
        print("\n| dataset | NGCF per-task VJPs (T=3): loop ms | is_grads_batched ms | max abs difference |")
        print("|---|---|---|---|")
        for dataset, timings, difference in vjp_rows:
            print(
                f"| {dataset} | {timings['loop'] * 1000:.1f} | {timings['is_grads_batched'] * 1000:.1f} "
                f"| {difference:.1e} |"
            )
    return rows


if __name__ == "__main__":
    main()
