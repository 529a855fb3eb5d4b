"""PLE, Progressive Layered Extraction (Tang et al., RecSys 2020)."""

from __future__ import annotations

from torch import nn

from recbole_pmtrec.model.multilabel import ExtractionLayer, MultiLabelRecommender


class PLE(MultiLabelRecommender):
    """``num_levels`` stacked extraction layers (:class:`ExtractionLayer`), then one tower per task.

    Level j has ``specific_experts_per_task`` experts per task and ``shared_experts`` shared experts. Level 1
    feeds every expert and gate with the embedded input; level j > 1 feeds task k's experts and gate with task
    k's fused output of level j-1 and the shared experts and shared gate with the shared fused output of
    level j-1. The last level has no shared gate; its task outputs go to the towers.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.num_levels = self.levels_from(config)
        sizes = list(config["expert_mlp_sizes"])
        in_dims = [self.input_dim] + [sizes[-1]] * (self.num_levels - 1)
        self.levels = nn.ModuleList(
            ExtractionLayer(
                self.task_names,
                in_dim,
                sizes,
                specific=config["specific_experts_per_task"],
                shared=config["shared_experts"],
                dropout=self.dropout_prob,
                shared_gate=level < self.num_levels - 1,
            )
            for level, in_dim in enumerate(in_dims)
        )
        self.build_towers(sizes[-1])

    @classmethod
    def levels_from(cls, config) -> int:
        levels = config["num_levels"]
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"{cls.__name__}: num_levels must be an integer >= 1, got {levels!r}")
        return levels

    def extract(self, x):
        task_inputs, shared_input, weights = [x] * self.num_tasks, x, {}
        for level, layer in enumerate(self.levels, start=1):
            task_inputs, shared_input, level_weights = layer(task_inputs, shared_input)
            weights.update({f"level{level}/{name}": w for name, w in level_weights.items()})
        return task_inputs, weights
