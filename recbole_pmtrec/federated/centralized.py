"""The centralized reference: one MMoE trained on the pooled data of every scenario, scored per scenario.

What federation gives up. The scenarios' data are loaded exactly as their clients load them (same folders,
same seed, hence the same train / valid / test splits and the same evaluation negatives), and one
:class:`~recbole_pmtrec.federated.model.FederatedMMoE` (template ``none``: plain experts with BatchNorm)
learns from all of them: every field is embedded over a pooled vocabulary (the public one plus the union of
the scenarios' user ids, so a user shared by two scenarios has one row), and each epoch visits every
scenario's training batches in a seeded random interleaving, one optimizer step per batch through the
multi-task trainer's ``train_step`` (``local_mtl_method`` applies here too). ``rounds x local_epochs``
epochs = as many passes over the data as a federated run; each epoch is one record "round" with valid
metrics per scenario; test uses the last epoch or the best one (``test_from``, ``select_metric``).

    python -m recbole_pmtrec.federated.centralized --config properties/federated/ml100k.yaml
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from recbole_pmtrec.federated import scenarios as scenario_data
from recbole_pmtrec.federated.client import LocalTrainer, evaluate_split, evaluation_data, load_scenario
from recbole_pmtrec.federated.model import FederatedMMoE
from recbole_pmtrec.federated.results import RoundRecord, RunRecord, mean_metric


def _pooled_vocabulary(fed_config: dict, data: dict) -> dict[str, list[str]]:
    vocabulary = dict(scenario_data.read_vocabulary(fed_config))
    for field in fed_config["private_fields"]:
        tokens = set()
        for _, train, _, _ in data.values():
            if field in train._dataset.field2id_token:
                tokens |= set(train._dataset.field2id_token[field][1:])
        if tokens:
            vocabulary[field] = sorted(tokens)
    return vocabulary


def run(fed_config: dict, log=print) -> RunRecord:
    """Train the pooled model and return its record (``strategy: centralized``; test metrics per scenario)."""
    seed = int(fed_config["seed"])
    names = list(fed_config["scenarios"])
    data = {s: load_scenario(fed_config, s, seed) for s in names}
    config = data[names[0]][0]
    model = FederatedMMoE(
        config,
        data[names[0]][1]._dataset,
        _pooled_vocabulary(fed_config, data),
        template="none",
        private_fields=(),
    ).to(config["device"])
    lookups = {s: model.lookups_for(train._dataset) for s, (_, train, _, _) in data.items()}
    trainer = LocalTrainer(config, model)
    record = RunRecord(
        strategy="centralized",
        seed=seed,
        runtime="centralized",
        scenarios=names,
        config=dict(fed_config),
        test_from=fed_config["test_from"],
    )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    metric = fed_config["select_metric"]
    sign = -1.0 if metric == "logloss" else 1.0
    best_value, best_epoch, best_weights = -math.inf, None, None
    epochs = int(fed_config["rounds"]) * int(fed_config["local_epochs"])
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        slots = [s for s in names for _ in range(len(data[s][1]))]
        order = [slots[i] for i in torch.randperm(len(slots), generator=generator).tolist()]
        batches = {s: iter(data[s][1]) for s in names}
        sums = {s: torch.zeros(len(model.task_names)) for s in names}
        for s in order:
            model.use_lookups(lookups[s])
            trainer.optimizer.zero_grad()
            sums[s] += trainer.train_step(next(batches[s]).to(config["device"]), epoch).cpu()
        train_seconds = time.perf_counter() - start
        fit = {}
        for s in names:
            losses = (sums[s] / max(len(data[s][1]), 1)).tolist()
            fit[s] = {"num_examples": float(len(data[s][1]._dataset)), "train_loss": float(sum(losses))}
            fit[s].update({f"train_loss@{t}": v for t, v in zip(model.task_names, losses)})
        valid = {}
        for s in names:
            model.use_lookups(lookups[s])
            valid[s] = evaluate_split(trainer, evaluation_data(fed_config, s, seed, "valid"))
        wall = time.perf_counter() - start
        record.add_round(
            RoundRecord(
                epoch,
                fit,
                valid,
                wall_seconds=wall,
                train_seconds=train_seconds,
                eval_seconds=wall - train_seconds,
            )
        )
        value = sign * mean_metric(valid, metric)
        if value > best_value:
            best_value, best_epoch = value, epoch
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log(f"centralized epoch {epoch}/{epochs}: mean valid {metric} {sign * value:.4f} ({wall:.1f} s)")
    if fed_config["test_from"] == "best" and best_weights is not None:
        model.load_state_dict(best_weights)
        record.test_round = best_epoch
    else:
        record.test_round = epochs
    for s in names:
        model.use_lookups(lookups[s])
        record.test[s] = evaluate_split(trainer, evaluation_data(fed_config, s, seed, "test"))
    return record


def main(argv: list[str] | None = None) -> int:
    from recbole_pmtrec.federated.config import load_config

    parser = argparse.ArgumentParser(
        prog="python -m recbole_pmtrec.federated.centralized", description=__doc__
    )
    parser.add_argument("--config", required=True, help="a federated yaml (properties/federated/*.yaml)")
    parser.add_argument("--seed", type=int, help="override the yaml's seed")
    parser.add_argument(
        "--out", help="write the RunRecord JSON here (default: <output_dir>/centralized-<seed>.json)"
    )
    args = parser.parse_args(argv)
    fed_config = load_config(args.config, {"seed": args.seed} if args.seed is not None else None)
    if not scenario_data.is_prepared(fed_config):
        scenario_data.prepare(fed_config)
    record = run(fed_config)
    path = record.save(args.out or f"{fed_config['output_dir']}/centralized-{fed_config['seed']}.json")
    print(record.summary_markdown())
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
