"""PMTRec's recommender: an encoder (MF, LightGCN, NGCF) trained on a main BPR task plus auxiliary tasks.

Tasks (``aux_tasks`` in yaml; the main task ``main`` always comes first):

- a relation name of the dataset (``social``, ``coview``, ``cobuy``, ``cointeraction``, ...): link
  prediction as BPR on dot products, ``-log sigmoid(<a, p> - <a, n>)``, anchor / positive from the relation's
  edges, negatives uniform over that relation's id space (users or items);
- ``category``: the same loss on item pairs that share a category (``category_field`` of ``.item``);
- ``directau``: DirectAU (Wang et al., KDD 2022) on the batch's users and positive items,
  ``align + directau_gamma * (uniform(users) + uniform(items)) / 2``;
- ``rating``: mean squared error between ``<u, i>`` and the batch's rating (``RATING_FIELD``, as loaded:
  RecBole min-max normalises float fields when ``normalize_all`` is on).

How the task gradients become one update is the trainer's combiner (``mtl_method``: PMTRec's per-row
rule by default); ``calculate_loss`` returns one loss per task, main first, so RecBole's own trainer
(which sums them) trains it with equal weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType

from recbole_pmtrec.model.encoders import build_encoder
from recbole_pmtrec.model.multitask import MultiTaskModelMixin, MultiTaskOutput, RowGather

BATCH_TASKS = ("directau", "rating")  # tasks computed on the interaction batch itself


class PMTRec(MultiTaskModelMixin, GeneralRecommender):
    input_type = InputType.PAIRWISE
    needs_aux_data = True  # loaded with recbole_pmtrec.data.AuxDataset (relations, categories)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        from recbole_pmtrec.data import AuxTaskSampler
        from recbole_pmtrec.data.dataset import AUX_ANCHORS, aux_config

        self.encoder = build_encoder(config, dataset, self.n_users, self.n_items)
        self.gathers_from_base = not self.encoder.propagates
        self.directau_gamma = float(config["directau_gamma"] if config["directau_gamma"] is not None else 1.0)
        self.RATING = config["RATING_FIELD"]

        aux = list(config["aux_tasks"] or [])
        unknown = [
            t for t in aux if t not in BATCH_TASKS and t != "category" and t not in _relations(dataset)
        ]
        if unknown:
            raise ValueError(
                f"PMTRec: unknown auxiliary task(s) {unknown} for dataset '{config['dataset']}'. Available: "
                f"{sorted(set(_relations(dataset)) | {'category', *BATCH_TASKS})} (relations come from "
                "aux_relations in the dataset yaml, category from category_field)"
            )
        if "rating" in aux and (self.RATING is None or self.RATING not in dataset.inter_feat):
            raise ValueError("PMTRec: task 'rating' needs RATING_FIELD loaded in the .inter file (load_col)")
        self.task_names = ["main", *aux]
        self.sampled_tasks = [t for t in aux if t not in BATCH_TASKS]
        self.task_space = {t: _task_space(dataset, t) for t in self.sampled_tasks}
        self.aux_anchors = aux_config(config, "aux_anchors")
        if self.aux_anchors not in AUX_ANCHORS:
            raise ValueError(f"PMTRec: aux_anchors must be one of {AUX_ANCHORS}, got {self.aux_anchors!r}")
        batch_size = config["aux_batch_size"] or config["train_batch_size"]
        self.aux_sampler = (
            AuxTaskSampler(
                dataset, self.sampled_tasks, batch_size, int(config["aux_neg_num"] or 1), config["seed"]
            )
            if self.sampled_tasks
            else None
        )
        self._eval_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # ----------------------------------------------------------------------------- multi-task contract
    def row_tables(self):
        return self.encoder.base_tables()

    def base_gradients(self, output_grads):
        return self.encoder.base_gradients(output_grads)

    def multitask_forward(self, interaction) -> MultiTaskOutput:
        users_out, items_out = self.encoder()
        tables = {"user": users_out, "item": items_out}
        out = MultiTaskOutput(losses=[])

        def gather(task: int, table: str, index: torch.Tensor) -> torch.Tensor:
            rows = tables[table][index]
            out.gathers.append(RowGather(task, table, index, rows))
            return rows

        user = interaction[self.USER_ID]
        pos = interaction[self.ITEM_ID]
        neg = interaction[self.NEG_ITEM_ID]
        u, p, n = gather(0, "user", user), gather(0, "item", pos), gather(0, "item", neg)
        out.losses.append(_bpr(u, p, n.unsqueeze(1)))

        for task_id, task in enumerate(self.task_names[1:], start=1):
            if task == "directau":
                u, p = gather(task_id, "user", user), gather(task_id, "item", pos)
                out.losses.append(self._directau(u, p))
            elif task == "rating":
                u, p = gather(task_id, "user", user), gather(task_id, "item", pos)
                out.losses.append(F.mse_loss((u * p).sum(-1), interaction[self.RATING].float()))
            else:
                space = self.task_space[task]
                if self.aux_anchors == "batch":  # edges incident to the batch: its users, or its items
                    sampled = self.aux_sampler.sample(task, (user if space == "user" else pos).cpu())
                else:
                    sampled = self.aux_sampler.sample(task)
                anchor, positive, negative = (x.to(user.device) for x in sampled)
                a, p = gather(task_id, space, anchor), gather(task_id, space, positive)
                n = gather(task_id, space, negative.reshape(-1)).view(*negative.shape, -1)
                out.losses.append(_bpr(a, p, n))
        return out

    def calculate_loss(self, interaction):
        return tuple(self.multitask_forward(interaction).losses)

    def _directau(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        users, items = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
        align = (users - items).norm(p=2, dim=1).pow(2).mean()
        uniform = (_uniformity(users) + _uniformity(items)) / 2
        return align + self.directau_gamma * uniform

    # ----------------------------------------------------------------------------- scoring
    def train(self, mode: bool = True):
        self._eval_cache = None
        return super().train(mode)

    def _outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            return self.encoder()
        if self._eval_cache is None:
            with torch.no_grad():
                self._eval_cache = self.encoder()
        return self._eval_cache

    def predict(self, interaction):
        users_out, items_out = self._outputs()
        return (users_out[interaction[self.USER_ID]] * items_out[interaction[self.ITEM_ID]]).sum(-1)

    def full_sort_predict(self, interaction):
        users_out, items_out = self._outputs()
        return (users_out[interaction[self.USER_ID]] @ items_out.T).view(-1)


def _bpr(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of -log sigmoid(<a, p> - <a, n>); ``negatives`` is ``[B, k, d]``. No pairs (an
    ``aux_anchors: batch`` batch without an anchor that has a positive): 0, with zero gradients."""
    if anchor.shape[0] == 0:
        return anchor.sum() + positive.sum() + negatives.sum()
    pos_score = (anchor * positive).sum(-1, keepdim=True)
    neg_score = torch.einsum("bd,bkd->bk", anchor, negatives)
    return -F.logsigmoid(pos_score - neg_score).mean()


def _uniformity(x: torch.Tensor) -> torch.Tensor:
    """DirectAU's uniformity: log E[exp(-2 ||x_i - x_j||^2)] over pairs of the batch."""
    return torch.pdist(x, p=2).pow(2).mul(-2).exp().mean().log()


def _relations(dataset) -> dict:
    return getattr(dataset, "relations", None) or {}


def _task_space(dataset, task: str) -> str:
    return "item" if task == "category" else _relations(dataset)[task].space
