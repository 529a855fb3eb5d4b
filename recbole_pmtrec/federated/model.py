"""The client model of PF-MSMTrec: the plugin's MMoE with BatchNorm in the experts, the expert parameter
template, and feature embeddings over the run's common vocabulary, so every client holds arrays of the same
names and shapes.

**Common vocabulary.** RecBole numbers a field's tokens per dataset, so two clients' id 7 are different
items. The shared embedding tables are instead indexed by the run's public vocabulary
(``scenarios.vocabulary_file``: row ``i + 1`` = ``tokens[i]``, row 0 = padding / a token the vocabulary
lacks); each client maps its RecBole ids into it through a lookup built from ``dataset.field2id_token``
(a non-persistent buffer: never part of what is uploaded or saved). Fields of ``private_fields`` (user ids)
keep the client's own ids in a private table.

**Parameter template** (``pfm_template``), for every layer of every expert ``k`` (weight and bias alike):

- ``additive``: task ``t`` runs expert ``k`` of scenario ``s`` with ``W_k^G + W_{k,t}^T + W_k^(S,s)``
  (roles ``shared`` / ``task`` / ``private``; ``W^T`` and ``W^(S)`` start at 0, so every client starts from
  the global template). Each task's pass through the experts therefore has its own weights, and its
  own BatchNorm.
- ``partition``: the layer's output units are split once: the first ``round(pfm_partition_shared * H)``
  rows of ``W`` are shared (role ``shared``), the rest private (role ``private``).
- ``none``: plain weights (role ``expert``).

Each expert layer is ``Linear -> BatchNorm1d -> ReLU`` (dropout first); BatchNorm's affine parameters and
running statistics have role ``norm`` (kept on the client by FedBN and PF-MSMTrec, averaged by FedAvg).
Groups: ``expert/<k>`` (the shared / plain parts and BatchNorm of expert k), ``expert/<k>/<task>`` (its task
parts), ``gate/<task>``, ``tower/<task>``, ``embedding/token`` (all shared token fields, one table with offsets),
``embedding/token_seq:<field>``, ``embedding/float``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_pmtrec.model.multilabel import MultiLabelRecommender, RowGather, mix
from recbole_pmtrec.model.multitask import MultiTaskOutput


class TemplateLinear(nn.Module):
    """A linear map whose weight and bias are assembled from the template's parts (see the module docstring)."""

    def __init__(self, in_dim: int, out_dim: int, template: str, tasks: list[str], shared_fraction: float):
        super().__init__()
        self.template, self.tasks = template, list(tasks)
        if template == "partition":
            shared = min(max(round(shared_fraction * out_dim), 1), out_dim - 1) if out_dim > 1 else out_dim
            self.shared_weight = nn.Parameter(torch.empty(shared, in_dim))
            self.shared_bias = nn.Parameter(torch.zeros(shared))
            self.private_weight = nn.Parameter(torch.empty(out_dim - shared, in_dim))
            self.private_bias = nn.Parameter(torch.zeros(out_dim - shared))
        elif template == "additive":
            self.shared_weight = nn.Parameter(torch.empty(out_dim, in_dim))
            self.shared_bias = nn.Parameter(torch.zeros(out_dim))
            self.task_weight = nn.ParameterDict(
                {t: nn.Parameter(torch.zeros(out_dim, in_dim)) for t in tasks}
            )
            self.task_bias = nn.ParameterDict({t: nn.Parameter(torch.zeros(out_dim)) for t in tasks})
            self.private_weight = nn.Parameter(torch.zeros(out_dim, in_dim))
            self.private_bias = nn.Parameter(torch.zeros(out_dim))
        else:
            self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
            self.bias = nn.Parameter(torch.zeros(out_dim))

    @property
    def passes(self) -> int:
        """How many weight sets the layer has: one per task (additive) or one."""
        return len(self.tasks) if self.template == "additive" else 1

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W[passes, out, in]`` and ``b[passes, out]``."""
        if self.template == "partition":
            w = torch.cat([self.shared_weight, self.private_weight])
            b = torch.cat([self.shared_bias, self.private_bias])
            return w.unsqueeze(0), b.unsqueeze(0)
        if self.template == "additive":
            w = torch.stack(
                [self.shared_weight + self.task_weight[t] + self.private_weight for t in self.tasks]
            )
            b = torch.stack([self.shared_bias + self.task_bias[t] + self.private_bias for t in self.tasks])
            return w, b
        return self.weight.unsqueeze(0), self.bias.unsqueeze(0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h[P, N, in]`` -> ``[max(P, passes), N, out]``: pass p of ``h`` meets weight set p when there are
        several; a single input or a single weight set is shared by all."""
        w, b = self.weights()
        passes = max(h.shape[0], w.shape[0])
        h, w, b = h.expand(passes, -1, -1), w.expand(passes, -1, -1), b.expand(passes, -1)
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))


class TemplateExpert(nn.Module):
    """An expert MLP of template layers, each followed by BatchNorm and ReLU.

    BatchNorm normalises each pass on its own, so that no pass's output depends on another pass's rows: under
    ``additive`` every task's pass has its own BatchNorm (its weights differ); with one weight set, the
    copies of a batch that the multi-task trainer stacks (one per task, identical rows) share one BatchNorm,
    the first copy updating its running statistics, the others using the same batch statistics.
    """

    def __init__(self, in_dim: int, sizes: list[int], dropout: float, **template):
        super().__init__()
        dims = [in_dim, *sizes]
        self.linears = nn.ModuleList(TemplateLinear(a, b, **template) for a, b in zip(dims[:-1], dims[1:]))
        passes = self.linears[0].passes
        self.norms = nn.ModuleList(nn.ModuleList(nn.BatchNorm1d(b) for _ in range(passes)) for b in dims[1:])
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def _normalize(norms: nn.ModuleList, z: torch.Tensor) -> torch.Tensor:
        out = []
        for p in range(z.shape[0]):
            norm = norms[p] if len(norms) > 1 else norms[0]
            if len(norms) == 1 and p > 0 and norm.training:
                out.append(F.batch_norm(z[p], None, None, norm.weight, norm.bias, True, 0.0, norm.eps))
            else:
                out.append(norm(z[p]))
        return torch.stack(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[N, in]`` or one input per pass ``x[P, N, in]`` -> ``[passes, N, out]``."""
        h = x.unsqueeze(0) if x.dim() == 2 else x
        for linear, norms in zip(self.linears, self.norms):
            h = torch.relu(self._normalize(norms, linear(self.dropout(h))))
        return h


class FederatedMMoE(MultiLabelRecommender):
    """MMoE over common-vocabulary embeddings with template experts (see the module docstring)."""

    def __init__(self, config, dataset, vocabulary: dict[str, list[str]], template: str = "none",
                 shared_fraction: float = 0.5, private_fields=("user_id",)):  # fmt: skip
        super().__init__(config, dataset)
        self.template = template
        self.vocabulary = {f: list(tokens) for f, tokens in vocabulary.items()}
        self.private_fields = [f for f in self.token_field_names if f in set(private_fields)]
        self.shared_fields = [f for f in self.token_field_names if f not in set(private_fields)]
        missing = [f for f in self.shared_fields + self.token_seq_field_names if f not in self.vocabulary]
        if missing:
            raise ValueError(f"fields {missing} are neither in the public vocabulary nor in private_fields")
        # RecBole sized these tables by this dataset's ids: replace them by common-vocabulary / private ones
        for name in ("token_embedding_table", "float_embedding_table", "token_seq_embedding_table"):
            if hasattr(self, name):
                delattr(self, name)
        d = self.embedding_size
        sizes = [len(self.vocabulary[f]) + 1 for f in self.shared_fields]
        self.shared_offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.token_table = nn.Embedding(sum(sizes), d) if sizes else None
        private_sizes = [dataset.num(f) for f in self.private_fields]
        self.private_offsets = [sum(private_sizes[:i]) for i in range(len(private_sizes))]
        self.private_table = nn.Embedding(sum(private_sizes), d) if private_sizes else None
        self.float_table = nn.Embedding(sum(self.float_field_dims), d) if self.float_field_names else None
        self.token_seq_tables = nn.ModuleDict(
            {f: nn.Embedding(len(self.vocabulary[f]) + 1, d) for f in self.token_seq_field_names}
        )
        self.bind(dataset)

        template_args = {"template": template, "tasks": self.task_names, "shared_fraction": shared_fraction}
        sizes = list(config["expert_mlp_sizes"])
        self.experts = nn.ModuleList(
            TemplateExpert(self.input_dim, sizes, self.dropout_prob, **template_args)
            for _ in range(config["num_experts"])
        )
        self.gates = nn.ModuleDict(
            {t: nn.Linear(self.input_dim, config["num_experts"], bias=False) for t in self.task_names}
        )
        self.build_towers(sizes[-1])
        self.reset_parameters(config["seed"])

    # -------------------------------------------------------------------------------- vocabulary lookups

    def bind(self, dataset) -> None:
        """Map ``dataset``'s RecBole ids of every shared field to rows of the common vocabulary."""
        self.use_lookups(self.lookups_for(dataset))

    def lookups_for(self, dataset) -> dict[str, torch.Tensor]:
        """``{field: RecBole id -> common row}`` for ``dataset`` (row 0 for padding and unknown tokens)."""
        lookups = {}
        for field in self.shared_fields + self.token_seq_field_names:
            row = {token: i + 1 for i, token in enumerate(self.vocabulary[field])}
            ids = [row.get(str(token), 0) for token in dataset.field2id_token[field]]
            ids[0] = 0  # RecBole's padding id
            lookups[field] = torch.tensor(ids, dtype=torch.long, device=self.device)
        return lookups

    def use_lookups(self, lookups: dict[str, torch.Tensor]) -> None:
        """Switch to another dataset's id mapping (the centralized reference trains one model on every scenario)."""
        for field, ids in lookups.items():
            self.register_buffer(f"lookup_{field}", ids, persistent=False)

    def lookup(self, field: str, ids: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"lookup_{field}")[ids.long()]

    def reset_parameters(self, seed: int) -> None:
        """Deterministic from ``seed`` whatever the dataset: Xavier-normal weights and embeddings, zero biases,
        zero template parts ``W^T`` / ``W^(S)`` of the additive template, BatchNorm at identity."""
        generator = torch.Generator().manual_seed(int(seed))
        for name, param in sorted(self.named_parameters()):
            leaf = name.rsplit(".", 1)[-1]
            zero = "bias" in leaf or (self.template == "additive" and ("task_" in name or "private_" in leaf))
            with torch.no_grad():
                if ".norms." in name:
                    param.fill_(1.0 if leaf == "weight" else 0.0)
                elif zero or param.dim() < 2:
                    param.zero_()
                else:
                    nn.init.xavier_normal_(param, generator=generator)

    # ------------------------------------------------------------------------------------------ network

    def row_tables(self) -> dict[str, nn.Parameter]:
        tables = {}
        if self.token_table is not None:
            tables["token"] = self.token_table.weight
        if self.private_table is not None:
            tables["private"] = self.private_table.weight
        if self.float_table is not None:
            tables["float"] = self.float_table.weight
        for field, table in self.token_seq_tables.items():
            tables[f"token_seq:{field}"] = table.weight
        return tables

    def embed(self, interaction, task: int = 0) -> tuple[torch.Tensor, list[RowGather]]:
        """Field embeddings ``[B, num_fields * d]`` in a fixed field order (shared tokens, private tokens, floats,
        token sequences) and the rows gathered for them, tagged with ``task``."""
        tables, gathers, parts = self.row_tables(), [], []
        batch = len(interaction)

        def gather(table: str, index: torch.Tensor) -> torch.Tensor:
            rows = nn.functional.embedding(index, tables[table])
            gathers.append(RowGather(task=task, table=table, index=index, rows=rows))
            return rows

        for table, fields, offsets, mapped in (
            ("token", self.shared_fields, self.shared_offsets, True),
            ("private", self.private_fields, self.private_offsets, False),
        ):
            if fields:
                ids = torch.stack(
                    [self.lookup(f, interaction[f]) if mapped else interaction[f].long() for f in fields], 1
                )
                ids = ids + ids.new_tensor(offsets)
                parts.append(gather(table, ids.reshape(-1)).view(batch, -1, self.embedding_size))
        if self.float_field_names:
            pairs = torch.stack([interaction[f].view(batch, 2) for f in self.float_field_names], dim=1)
            idx = pairs[..., 1].long() + torch.as_tensor(self.float_field_offsets, device=pairs.device)
            parts.append(
                pairs[..., 0:1] * gather("float", idx.reshape(-1)).view(batch, -1, self.embedding_size)
            )
        for field in self.token_seq_field_names:
            ids = self.lookup(field, interaction[field])
            mask = (ids != 0).unsqueeze(-1).float()
            rows = gather(f"token_seq:{field}", ids.reshape(-1)).view(*ids.shape, self.embedding_size)
            parts.append(((rows * mask).sum(1) / mask.sum(1).clamp_min(1.0)).unsqueeze(1))
        return torch.cat(parts, dim=1).flatten(1), gathers

    def extract(self, x):
        outputs = torch.stack([expert(x) for expert in self.experts], dim=2)  # [passes, N, E, H]
        reps, weights = [], {}
        for t, task in enumerate(self.task_names):
            w = torch.softmax(self.gates[task](x), dim=-1)
            reps.append(mix(w, outputs[t if outputs.shape[0] > 1 else 0]))
            weights[f"gate/{task}"] = w
        return reps, weights

    def multitask_forward(self, interaction) -> MultiTaskOutput:
        """As the base class (task t's loss from its own copy of the gathered rows), computing for copy t only
        task t's expert pass, gate and tower: ``1/T`` of the base's work, the same losses."""
        embedded = [self.embed(interaction, task=t) for t in range(self.num_tasks)]
        x = torch.stack([e for e, _ in embedded])  # [T, B, input_dim]
        outputs = torch.stack([expert(x) for expert in self.experts], dim=2)  # [T, B, E, H]
        logits = [
            self.towers[t](mix(torch.softmax(self.gates[task](x[t]), dim=-1), outputs[t]))
            for t, task in enumerate(self.task_names)
        ]
        return MultiTaskOutput(
            losses=self.task_losses(torch.cat(logits, dim=1), interaction),
            gathers=[g for _, gs in embedded for g in gs],
        )

    # ------------------------------------------------------------------------------------ roles, groups

    def array_roles(self) -> dict[str, tuple[str, str | None]]:
        """Every ``state_dict`` name -> (role, aggregation group; None for private arrays)."""
        out = {}
        for name in self.state_dict():
            parts = name.split(".")
            if name.startswith("token_table."):
                out[name] = ("embedding", "embedding/token")
            elif name.startswith("float_table."):
                out[name] = ("embedding", "embedding/float")
            elif name.startswith("token_seq_tables."):
                out[name] = ("embedding", f"embedding/token_seq:{parts[1]}")
            elif name.startswith("gates."):
                out[name] = ("gate", f"gate/{parts[1]}")
            elif name.startswith("towers."):
                out[name] = ("tower", f"tower/{self.task_names[int(parts[1])]}")
            elif name.startswith("experts.") and parts[2] == "linears":
                leaf, expert = parts[4], f"expert/{parts[1]}"
                if leaf.startswith("private_"):
                    out[name] = ("private", None)
                elif leaf.startswith("task_"):
                    out[name] = ("task", f"{expert}/{parts[5]}")
                else:
                    out[name] = ("shared" if leaf.startswith("shared_") else "expert", expert)
            elif name.startswith("experts.") and parts[2] == "norms" and parts[-1] != "num_batches_tracked":
                out[name] = ("norm", f"expert/{parts[1]}")  # FedBN keeps these; FedAvg averages them
            else:  # the private table (user ids), BatchNorm's step counter
                out[name] = ("private", None)
        return out
