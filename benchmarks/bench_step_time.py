"""Step-time and memory of PMTRec's per-row combination against EW (the summed loss), in one run.

A step = forward, per-task gradients, combination, optimizer step, on the same pre-loaded batches (the
interaction batches and the auxiliary-task samples are drawn once, before timing, and replayed for both
methods). EW takes exactly PMTRec's gradient route (row gradients summed and added into the tables once),
the fastest EW step this project makes; RecBole's plain ``loss.backward()`` step of the same model is
printed beside it for reference. Steps of the two methods alternate, so drift on a busy machine hits both.

    OMP_NUM_THREADS=1 python benchmarks/bench_step_time.py --datasets ml-100k epinions --encoder mf
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from recbole.utils import init_seed  # noqa: E402

from recbole_pmtrec import Config, create_dataset, data_preparation  # noqa: E402
from recbole_pmtrec.model import PMTRec  # noqa: E402
from recbole_pmtrec.trainer import MultiTaskTrainer  # noqa: E402


def _config(dataset, encoder, method, data_path, extra):
    return Config(
        "PMTRec",
        dataset,
        config_dict={
            "data_path": data_path,
            "encoder": encoder,
            "mtl_method": method,
            "show_progress": False,
            "state": "ERROR",
            "use_gpu": torch.cuda.is_available(),
            **extra,
        },
    )


class _Replay:
    """Replays pre-drawn auxiliary samples so every method sees the same ones and sampling is not timed."""

    def __init__(self, samples):
        self.samples, self.position = samples, {task: 0 for task in samples}

    def sample(self, task):
        batch = self.samples[task][self.position[task] % len(self.samples[task])]
        self.position[task] += 1
        return batch


def _prepare(dataset, encoder, data_path, steps, extra):
    config = _config(dataset, encoder, "ew", data_path, extra)
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    train_data, _, _ = data_preparation(config, data)
    batches = []
    for interaction in train_data:
        batches.append(interaction.to(config["device"]))
        if len(batches) == steps:
            break
    return config, train_data, batches


def _model(config, train_data, batches):
    init_seed(config["seed"], config["reproducibility"])
    model = PMTRec(config, train_data._dataset).to(config["device"])
    if model.aux_sampler is not None:
        samples = {t: [model.aux_sampler.sample(t) for _ in batches] for t in model.sampled_tasks}
        model.aux_sampler = _Replay(samples)
    return model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(dataset, encoder, data_path, steps, warmup, extra):
    """Median step time (s) of EW, PMTRec and RecBole's plain backward, alternating step by step."""
    config, train_data, batches = _prepare(dataset, encoder, data_path, steps + warmup, extra)
    trainers = {}
    for method in ("ew", "pmtrec"):
        cfg = _config(dataset, encoder, method, data_path, extra)
        trainers[method] = MultiTaskTrainer(cfg, _model(cfg, train_data, batches))
    plain_model = _model(config, train_data, batches)
    plain_optimizer = torch.optim.Adam(plain_model.parameters(), lr=config["learning_rate"])

    def plain_step(batch):
        plain_optimizer.zero_grad()
        sum(plain_model.calculate_loss(batch)).backward()
        plain_optimizer.step()

    times = {"ew": [], "pmtrec": [], "recbole_backward": []}
    device = config["device"]
    for i, batch in enumerate(batches):
        for name in ("ew", "pmtrec", "recbole_backward"):
            _sync(device)
            start = time.perf_counter()
            if name == "recbole_backward":
                plain_step(batch)
            else:
                trainers[name].optimizer.zero_grad()
                trainers[name].train_step(batch, 1)
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}

    epoch = {}
    for method in ("ew", "pmtrec"):
        cfg = _config(dataset, encoder, method, data_path, extra)
        init_seed(cfg["seed"], cfg["reproducibility"])
        model = PMTRec(cfg, train_data._dataset).to(cfg["device"])
        trainer = MultiTaskTrainer(cfg, model)
        start = time.perf_counter()
        trainer._train_epoch(train_data, 0)
        epoch[method] = time.perf_counter() - start
    return medians, epoch, len(train_data), [t for t in trainers["pmtrec"].task_names]


def peak_memory(dataset, encoder, data_path, method, steps, extra):
    """Memory (MiB) of ``steps`` steps of ``method`` in a fresh process (CUDA: peak allocated GPU memory)."""
    code = (
        "import sys, json; sys.argv=[sys.argv[0]]; import bench_step_time as b; "
        f"print(json.dumps(b._memory_child({dataset!r}, {encoder!r}, {os.path.abspath(data_path)!r}, {method!r}, "
        f"{steps}, {extra!r})))"
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


def _status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _memory_child(dataset, encoder, data_path, method, steps, extra):
    """Peak memory of ``steps`` training steps above the memory held before them (data, model, optimizer):
    the process's peak-RSS mark is reset (Linux ``/proc/self/clear_refs``) after one warm-up step."""
    config, train_data, batches = _prepare(dataset, encoder, data_path, steps + 1, extra)
    cfg = _config(dataset, encoder, method, data_path, extra)
    trainer = MultiTaskTrainer(cfg, _model(cfg, train_data, batches))
    trainer.optimizer.zero_grad()
    trainer.train_step(batches[0], 1)
    if cfg["device"].type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for batch in batches[1:]:
        trainer.optimizer.zero_grad()
        trainer.train_step(batch, 1)
    peak = _status_mib("VmHWM")
    gpu = torch.cuda.max_memory_allocated() / 2**20 if cfg["device"].type == "cuda" else None
    return {"rss_before_steps_mib": baseline, "step_peak_above_mib": peak - baseline, "gpu_peak_mib": gpu}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["ml-100k"])
    parser.add_argument("--encoder", default="mf")
    parser.add_argument("--data_path", default="dataset/")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args(argv)
    sys.argv = [sys.argv[0]]  # RecBole's Config reads --key=value from sys.argv
    rows = []
    for dataset in args.datasets:
        medians, epoch, n_batches, tasks = time_steps(
            dataset, args.encoder, args.data_path, args.steps, args.warmup, {}
        )
        memory = {}
        if not args.no_memory:
            for method in ("ew", "pmtrec"):
                memory[method] = peak_memory(dataset, args.encoder, args.data_path, method, 10, {})
        row = {
            "dataset": dataset,
            "encoder": args.encoder,
            "tasks": tasks,
            "step_ms": {k: round(v * 1000, 2) for k, v in medians.items()},
            "step_ratio_pmtrec_over_ew": round(medians["pmtrec"] / medians["ew"], 3),
            "step_ratio_pmtrec_over_recbole_backward": round(
                medians["pmtrec"] / medians["recbole_backward"], 3
            ),
            "epoch_s": {k: round(v, 2) for k, v in epoch.items()},
            "epoch_batches": n_batches,
            "epoch_ratio_pmtrec_over_ew": round(epoch["pmtrec"] / epoch["ew"], 3),
            "memory": memory,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| dataset | encoder | tasks | EW step ms | PMTRec step ms | RecBole backward ms | PMTRec/EW step | "
          "PMTRec/EW epoch | step memory peak EW / PMTRec (MiB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = r["memory"]
        mem_text = (
            f"{mem['ew']['step_peak_above_mib']:.0f} / {mem['pmtrec']['step_peak_above_mib']:.0f}"
            if mem
            else "-"
        )
        print(
            f"| {r['dataset']} | {r['encoder']} | {'+'.join(r['tasks'])} | {r['step_ms']['ew']} | "
            f"{r['step_ms']['pmtrec']} | {r['step_ms']['recbole_backward']} | {r['step_ratio_pmtrec_over_ew']} | "
            f"{r['epoch_ratio_pmtrec_over_ew']} | {mem_text} |"
        )
    return rows


if __name__ == "__main__":
    main()
