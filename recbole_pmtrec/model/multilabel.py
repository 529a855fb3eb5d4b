"""The common part of the multi-task CTR models (SharedBottom, MMoE, CGC, PLE): feature embedding, one tower
and one BCE loss per task label, and the multi-task contract of :mod:`recbole_pmtrec.model.multitask`.

Every task reads the same feature embedding rows of a sample. :meth:`MultiLabelRecommender.multitask_forward`
therefore gathers the rows once *per task* and runs the network on the T copies stacked along the batch
(T times the compute of one forward): task t's loss depends on copy t only, so one backward of the summed
loss leaves task t's own gradient on its gathered rows, as the contract asks. PMTRec's per-row rule then
sees every task on the same rows (all tasks touch every feature row of the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import ContextRecommender
from recbole.model.init import xavier_normal_initialization
from recbole.model.layers import MLPLayers
from torch import nn

from recbole_pmtrec.data.multilabel import MultiLabelDataset, task_labels, task_masks
from recbole_pmtrec.model.multitask import MultiTaskModelMixin, MultiTaskOutput, RowGather


def mlp(sizes: list[int], dropout: float) -> nn.Module:
    """ReLU MLP through ``sizes`` (input first); the identity when there is no layer."""
    return MLPLayers(list(sizes), dropout, "relu") if len(sizes) > 1 else nn.Identity()


def mix(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Gate fusion ``sum_i w_i E_i``: ``weights[N, E]``, ``experts[N, E, H]`` -> ``[N, H]``."""
    return torch.bmm(weights.unsqueeze(1), experts).squeeze(1)


class ExtractionLayer(nn.Module):
    """One extraction layer of PLE (Tang et al., RecSys 2020, Sec. 4.3), which alone is CGC.

    Task k has ``specific`` experts ``E_k`` fed with its own input ``x_k``; ``shared`` experts ``E_s`` are
    fed with the shared input ``x_s``. Task k's gate mixes its own and the shared experts, selected by its
    own input: ``g_k = softmax(W_k x_k) . [E_k(x_k), E_s(x_s)]``. The shared gate (absent at the last level)
    mixes every expert of the level: ``g_s = softmax(W_s x_s) . [E_1(x_1), ..., E_T(x_T), E_s(x_s)]``.
    Gates are linear without bias, as in the paper. With ``specific = 0`` and no shared gate this is MMoE.
    """

    def __init__(
        self,
        tasks: list[str],
        in_dim: int,
        expert_sizes: list[int],
        specific: int,
        shared: int,
        dropout: float,
        shared_gate: bool,
    ):
        super().__init__()
        self.tasks = list(tasks)
        self.specific, self.shared = specific, shared

        def expert() -> nn.Module:
            return mlp([in_dim, *expert_sizes], dropout)

        self.task_experts = nn.ModuleList(nn.ModuleList(expert() for _ in range(specific)) for _ in tasks)
        self.shared_experts = nn.ModuleList(expert() for _ in range(shared))
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, specific + shared, bias=False) for _ in tasks)
        n_all = len(tasks) * specific + shared
        self.shared_gate = nn.Linear(in_dim, n_all, bias=False) if shared_gate else None

    @staticmethod
    def _run(experts: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
        return [e(x) for e in experts]

    def forward(self, task_inputs: list[torch.Tensor], shared_input: torch.Tensor):
        """-> (task outputs ``[N, H]`` per task, shared output or None, gate weights by name)."""
        shared_out = self._run(self.shared_experts, shared_input)
        task_out = [self._run(experts, x) for experts, x in zip(self.task_experts, task_inputs)]
        outputs, weights = [], {}
        for k, (task, x) in enumerate(zip(self.tasks, task_inputs)):
            w = torch.softmax(self.task_gates[k](x), dim=-1)
            outputs.append(mix(w, torch.stack(task_out[k] + shared_out, dim=1)))
            weights[task] = w
        shared = None
        if self.shared_gate is not None:
            w = torch.softmax(self.shared_gate(shared_input), dim=-1)
            shared = mix(w, torch.stack([e for out in task_out for e in out] + shared_out, dim=1))
            weights["shared"] = w
        return outputs, shared, weights


class MultiLabelRecommender(MultiTaskModelMixin, ContextRecommender):
    """Base of the multi-task CTR models: one BCE loss per ``task_labels`` field, main first.

    Subclasses implement :meth:`extract` (task representations and gate weights from the embedded input)
    and set ``self.extract_dim``; this class adds one tower per task (``tower_mlp_sizes``, then a logit).
    """

    dataset_class = MultiLabelDataset

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.task_labels = task_labels(config)
        self.task_names = list(self.task_labels)
        self.task_masks = task_masks(config)
        self.num_tasks = len(self.task_labels)
        self.dropout_prob = config["dropout_prob"] or 0.0
        self.tower_sizes = list(config["tower_mlp_sizes"] or [])
        predict_task = config["predict_task"] or self.task_labels[0]
        if predict_task not in self.task_labels:
            raise ValueError(f"predict_task {predict_task!r} is not one of task_labels {self.task_labels}")
        self.predict_task = self.task_labels.index(predict_task)
        self._check_features()
        # RecBole builds an FM first-order term for every context model; these models have none
        del self.first_order_linear
        self.num_fields = (
            len(self.token_field_names) + len(self.float_field_names) + len(self.token_seq_field_names)
        )
        self.input_dim = self.num_fields * self.embedding_size

    def _check_features(self):
        features = self.token_field_names + self.float_field_names + self.token_seq_field_names
        leaked = sorted(set(features) & (set(self.task_labels) | set(self.task_masks.values())))
        if leaked:
            raise ValueError(
                f"{type(self).__name__}: label / mask fields {leaked} are also input features: make them float "
                "fields that are not in numerical_features"
            )
        if self.float_seq_field_names or self.double_tower:
            raise ValueError(
                f"{type(self).__name__}: float_seq features and double_tower are not supported "
                f"(float_seq: {self.float_seq_field_names})"
            )
        if not features:
            raise ValueError(f"{type(self).__name__}: the dataset has no input feature besides the labels")

    def build_towers(self, in_dim: int) -> None:
        """One tower per task: ``tower_mlp_sizes`` ReLU layers, then a linear logit; then initialise."""
        sizes = [in_dim, *self.tower_sizes]
        self.towers = nn.ModuleList(
            nn.Sequential(mlp(sizes, self.dropout_prob), nn.Linear(sizes[-1], 1)) for _ in self.task_labels
        )
        self.apply(xavier_normal_initialization)

    # ------------------------------------------------------------------------------------------ embedding

    def row_tables(self) -> dict[str, nn.Parameter]:
        """The feature embedding tables: all token fields share one table (RecBole's offsets), all float
        fields another; each token_seq field has its own."""
        tables = {}
        if self.token_field_names:
            tables["token"] = self.token_embedding_table.embedding.weight
        if self.float_field_names:
            tables["float"] = self.float_embedding_table.embedding.weight
        for name, table in zip(self.token_seq_field_names, getattr(self, "token_seq_embedding_table", [])):
            tables[f"token_seq:{name}"] = table.weight
        return tables

    def embed(self, interaction, task: int = 0) -> tuple[torch.Tensor, list[RowGather]]:
        """The concatenated field embeddings ``[B, num_fields * d]`` (RecBole's: token ids offset into one
        table, float value times its field's vector, token_seq mean over non-padding tokens) and the rows
        gathered for them, tagged with ``task``."""
        tables, gathers, parts = self.row_tables(), [], []
        batch = len(interaction)

        def gather(table: str, index: torch.Tensor) -> torch.Tensor:
            rows = F.embedding(index, tables[table])
            gathers.append(RowGather(task=task, table=table, index=index, rows=rows))
            return rows

        if self.token_field_names:
            ids = torch.stack([interaction[f] for f in self.token_field_names], dim=1)
            ids = ids + ids.new_tensor(self.token_field_offsets)
            parts.append(gather("token", ids.reshape(-1)).view(batch, -1, self.embedding_size))
        if self.float_field_names:
            pairs = torch.stack([interaction[f].view(batch, 2) for f in self.float_field_names], dim=1)
            idx = pairs[..., 1].long() + torch.as_tensor(self.float_field_offsets, device=pairs.device)
            rows = gather("float", idx.reshape(-1)).view(batch, -1, self.embedding_size)
            parts.append(pairs[..., 0:1] * rows)
        for name in self.token_seq_field_names:
            ids = interaction[name]
            mask = (ids != 0).unsqueeze(-1).float()
            rows = gather(f"token_seq:{name}", ids.reshape(-1)).view(*ids.shape, self.embedding_size)
            parts.append(((rows * mask).sum(1) / mask.sum(1).clamp_min(1.0)).unsqueeze(1))
        return torch.cat(parts, dim=1).flatten(1), gathers

    # ------------------------------------------------------------------------------------------- network

    def extract(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Task representations (one ``[N, extract_dim]`` per task) and gate weights by name."""
        raise NotImplementedError

    def task_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, num_tasks]`` logits from the embedded input ``x[N, input_dim]``."""
        reps, _ = self.extract(x)
        return torch.cat([tower(r) for tower, r in zip(self.towers, reps)], dim=1)

    def gate_weights(self, interaction) -> dict[str, torch.Tensor]:
        """Every gate's softmax weights ``[B, experts it mixes]``, by name (e.g. ``level1/income``)."""
        return self.extract(self.embed(interaction)[0])[1]

    # --------------------------------------------------------------------------------------------- losses

    def task_losses(self, logits: torch.Tensor, interaction) -> list[torch.Tensor]:
        """Mean BCE per task over its sample space (rows whose mask field is 1, all rows if unmasked)."""
        losses = []
        for t, label in enumerate(self.task_labels):
            per_row = F.binary_cross_entropy_with_logits(
                logits[:, t], interaction[label].float(), reduction="none"
            )
            if label in self.task_masks:
                mask = interaction[self.task_masks[label]].float()
                losses.append((per_row * mask).sum() / mask.sum().clamp_min(1.0))
            else:
                losses.append(per_row.mean())
        return losses

    def calculate_loss(self, interaction):
        x, _ = self.embed(interaction)
        return tuple(self.task_losses(self.task_logits(x), interaction))

    def multitask_forward(self, interaction) -> MultiTaskOutput:
        """Per-task losses from T copies of the gathered rows (see the module docstring)."""
        embedded = [self.embed(interaction, task=t) for t in range(self.num_tasks)]
        batch = len(interaction)
        logits = self.task_logits(torch.cat([x for x, _ in embedded], dim=0)).view(self.num_tasks, batch, -1)
        own = torch.stack([logits[t, :, t] for t in range(self.num_tasks)], dim=1)
        return MultiTaskOutput(
            losses=self.task_losses(own, interaction), gathers=[g for _, gs in embedded for g in gs]
        )

    def predict_tasks(self, interaction) -> torch.Tensor:
        """Probabilities ``[B, num_tasks]`` of every task (the per-task evaluation reads these)."""
        return torch.sigmoid(self.task_logits(self.embed(interaction)[0]))

    def predict(self, interaction):
        """The probability of task ``predict_task`` (config; the main task by default)."""
        return torch.sigmoid(self.task_logits(self.embed(interaction)[0])[:, self.predict_task])
