"""Per-task evaluation for the multi-task CTR models (SharedBottom, MMoE, CGC, PLE).

Training is :class:`~recbole_pmtrec.trainer.multitask.MultiTaskTrainer`'s (any ``mtl_method``). Evaluation with
value metrics (``metrics: [AUC, LogLoss]``, ``mode: labeled`` or ``uniN``) scores every task in one pass
over the data and reports, through RecBole's own metric classes, ``<metric>@<task>`` for every task label
(over the task's sample space when it has a ``task_masks`` entry) plus the main task's plain ``<metric>``
keys, so ``valid_metric`` may name any of them (``auc``, ``auc@income``, ``logloss@marital``) and early
stopping, checkpoints and RecBole's result dicts work unchanged. With ranking metrics (``mode: full``)
evaluation is RecBole's: the main task ranks every item.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from recbole.evaluator.collector import DataStruct
from recbole.utils import EvaluatorType, set_color
from tqdm import tqdm

from recbole_pmtrec.checkpoint import load_model_weights
from recbole_pmtrec.trainer.multitask import MultiTaskTrainer


class MultiLabelTrainer(MultiTaskTrainer):
    """:class:`MultiTaskTrainer` whose evaluation reports every task's metrics (see the module docstring)."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.task_labels = list(model.task_labels)
        self.task_masks = dict(model.task_masks)
        self.per_task = config["eval_type"] == EvaluatorType.VALUE
        if self.per_task and self.valid_metric not in self.result_keys():
            raise ValueError(
                f"valid_metric '{config['valid_metric']}' is not among the evaluation results of "
                f"{type(model).__name__}: {', '.join(self.result_keys())}"
            )

    def result_keys(self) -> list[str]:
        """The keys :meth:`evaluate` returns: the main task's ``<metric>``, then ``<metric>@<task>``."""
        metrics = [m.lower() for m in self.config["metrics"]]
        return metrics + [f"{m}@{task}".lower() for task in self.task_labels for m in metrics]

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if not self.per_task:
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        if load_best_model:
            load_model_weights(self, model_file)
        self.model.eval()
        iter_data = (
            tqdm(eval_data, total=len(eval_data), ncols=100, desc=set_color("Evaluate   ", "pink"))
            if show_progress
            else eval_data
        )
        fields = list(dict.fromkeys(self.task_labels + list(self.task_masks.values())))
        scores, columns = [], {f: [] for f in fields}
        for batched_data in iter_data:
            interaction = batched_data[0].to(self.device)
            scores.append(self.model.predict_tasks(interaction).float().cpu())
            for f in fields:
                columns[f].append(interaction[f].float().cpu())
        scores = torch.cat(scores)
        columns = {f: torch.cat(v) for f, v in columns.items()}
        if self.dist is not None:  # AUC is no mean over rows: every rank scores all ranks' rows together
            columns = self.dist.gather_rows({**columns, "\0scores": scores})
            scores = columns.pop("\0scores")

        main, per_task = OrderedDict(), OrderedDict()
        for t, task in enumerate(self.task_labels):
            keep = columns[self.task_masks[task]] > 0 if task in self.task_masks else slice(None)
            struct = DataStruct()
            struct.set("rec.score", scores[keep, t])
            struct.set("data.label", columns[task][keep])
            result = self.evaluator.evaluate(struct)
            if t == 0:
                main.update(result)
            per_task.update({f"{name}@{task}".lower(): value for name, value in result.items()})
        main.update(per_task)
        self.wandblogger.log_eval_metrics(main, head="eval")
        return main


# ``recbole_pmtrec.utils.get_trainer`` resolves ``recbole_pmtrec.trainer.<Model>Trainer``
SharedBottomTrainer = MMoETrainer = CGCTrainer = PLETrainer = MultiLabelTrainer
