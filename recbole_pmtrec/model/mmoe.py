"""MMoE (Ma et al., KDD 2018): shared experts, one softmax gate per task."""

from __future__ import annotations

from recbole_pmtrec.model.multilabel import ExtractionLayer, MultiLabelRecommender


class MMoE(MultiLabelRecommender):
    """``f_k(x) = sum_i g_k(x)_i E_i(x)`` with ``g_k(x) = softmax(W_k x)``, ``y_k = tower_k(f_k(x))``.

    One :class:`ExtractionLayer` whose experts are all shared (``num_experts``) and without a shared gate.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        sizes = list(config["expert_mlp_sizes"])
        self.experts = ExtractionLayer(
            self.task_names,
            self.input_dim,
            sizes,
            specific=0,
            shared=config["num_experts"],
            dropout=self.dropout_prob,
            shared_gate=False,
        )
        self.build_towers(sizes[-1])

    def extract(self, x):
        outputs, _, weights = self.experts([x] * self.num_tasks, x)
        return outputs, {f"gate/{task}": w for task, w in weights.items()}
