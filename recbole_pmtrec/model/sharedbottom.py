"""Shared-Bottom (Caruana 1997): one bottom network shared by all tasks, one tower per task."""

from __future__ import annotations

from recbole_pmtrec.model.multilabel import MultiLabelRecommender, mlp


class SharedBottom(MultiLabelRecommender):
    """``y_k = tower_k(bottom(x))``: every task reads the same representation (no gates)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        sizes = [self.input_dim, *config["bottom_mlp_sizes"]]
        self.bottom = mlp(sizes, self.dropout_prob)
        self.build_towers(sizes[-1])

    def extract(self, x):
        shared = self.bottom(x)
        return [shared] * self.num_tasks, {}
