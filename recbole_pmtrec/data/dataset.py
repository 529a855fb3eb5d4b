"""A RecBole ``Dataset`` that also holds auxiliary relations: user-user and item-item links read from
relation atomic files, item categories read from ``.item``, and the structures derived from the
training split (co-interaction pairs, same-category items).

Relation files are read AFTER RecBole's own loading, filtering and remapping, and their tokens are
mapped through RecBole's ``field2token_id``: an id that is not in the (filtered) interactions is
dropped and counted, never given a new id, so ``user_num``, ``item_num`` and ``inter_feat`` are exactly
those of RecBole's own ``Dataset`` and a built-in model gives the same results on it.

Every file (``.inter``, ``.user``, ``.item`` and the relation files) is read by the plugin's one strict
reader, :mod:`recbole_pmtrec.data.atomic`.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp
import torch
from recbole.data.dataset import Dataset
from recbole.utils import FeatureType, set_color

from recbole_pmtrec.data.atomic import StrictAtomicMixin
from recbole_pmtrec.data.relations import (
    SOURCE_FIELD,
    TARGET_FIELD,
    WEIGHT_FIELD,
    Relation,
    RelationStats,
    cointeraction_pairs,
    dedupe_edges,
    read_relation_file,
)

#: auxiliary tasks that train on the interaction batch itself: no relation, no sampler
BATCH_TASKS = ("directau", "rating")
#: the same-category task, built from ``category_field`` of ``.item``
CATEGORY_TASK = "category"
#: the item-item relation AuxDataset derives from the training split
COINTERACTION = "cointeraction"
#: fallbacks for configs that lack the plugin's overall.yaml (e.g. a plain RecBole ``Config``)
AUX_DEFAULTS = {
    "aux_batch_size": None,
    "aux_neg_num": 1,
    "aux_neg_reject": True,
    "aux_cointeraction_max_pairs": 100,
    "aux_anchors": "sampled",
}
#: ``aux_anchors``: drawn by the sampler, or the interaction batch's ids (edges incident to the batch)
AUX_ANCHORS = ("sampled", "batch")

_SPACES = ("user", "item")


def aux_config(config, key: str):
    """``config[key]``, or the documented fallback when the config does not define it."""
    value = config[key]
    return AUX_DEFAULTS[key] if value is None else value


# --------------------------------------------------------------------------------------------------


class AuxDataset(StrictAtomicMixin, Dataset):
    """RecBole's ``Dataset`` plus auxiliary relations, item categories and training-split structures.

    Config (dataset yaml): ``aux_relations`` (name -> ``{suffix, space: user|item, directed}``; the file is
    ``<data_path>/<dataset>.<suffix>``), ``category_field`` (a token_seq field of ``.item``), ``aux_tasks``
    (a relation name, ``category``, ``cointeraction`` or one of ``BATCH_TASKS``),
    ``aux_cointeraction_max_pairs``.

    Attributes: ``relations`` (name -> :class:`Relation`; ``cointeraction`` is added on the splits),
    ``relation_stats``, ``item_categories`` (item -> category CSR, internal ids, all items),
    and on the splits returned by :meth:`build`: ``train_item_mask`` and ``train_item_categories``
    (the same CSR restricted to items with a training interaction).
    """

    def _from_scratch(self):
        self._relation_specs = self._parse_relation_specs()
        self._check_aux_tasks()
        super()._from_scratch()
        self.relations: dict[str, Relation] = {}
        self.relation_stats: dict[str, RelationStats] = {}
        self.item_categories = self._load_item_categories()
        self.train_item_mask = None
        self.train_item_categories = None
        for name, spec in self._relation_specs.items():
            self._load_relation(name, **spec)
        for line in self._aux_lines():
            self.logger.info(line)

    # ---------------------------------------------------------------- config

    @property
    def _aux_tasks(self) -> list[str]:
        return list(self.config["aux_tasks"] or [])

    def _parse_relation_specs(self) -> dict[str, dict]:
        relations = self.config["aux_relations"] or {}
        if not isinstance(relations, dict):
            raise ValueError(
                f"aux_relations must map a relation name to {{suffix, space, directed}}, not {relations!r}"
            )
        specs = {}
        for name, spec in relations.items():
            reserved = (CATEGORY_TASK, COINTERACTION, *BATCH_TASKS)
            if name in reserved:
                raise ValueError(f"aux_relations: '{name}' is a reserved task name ({', '.join(reserved)})")
            if not isinstance(spec, dict) or not isinstance(spec.get("suffix"), str):
                raise ValueError(
                    f"aux_relations: '{name}' needs a file suffix: {{suffix: net, space: user}}, got {spec!r}"
                )
            unknown = set(spec) - {"suffix", "space", "directed"}
            if unknown:
                raise ValueError(
                    f"aux_relations: '{name}' has unknown keys {sorted(unknown)} (suffix, space, directed)"
                )
            if spec.get("space") not in _SPACES:
                raise ValueError(
                    f"aux_relations: '{name}' space must be one of {_SPACES}, got {spec.get('space')!r}"
                )
            directed = spec.get("directed", False)
            if not isinstance(directed, bool):
                raise ValueError(f"aux_relations: '{name}' directed must be true or false, got {directed!r}")
            specs[name] = {"suffix": spec["suffix"], "space": spec["space"], "directed": directed}
        return specs

    def _check_aux_tasks(self):
        known = [*self._relation_specs, CATEGORY_TASK, COINTERACTION, *BATCH_TASKS]
        for task in self._aux_tasks:
            if task not in known:
                raise ValueError(
                    f"aux_tasks: unknown task '{task}'. Tasks: a relation of aux_relations "
                    f"({', '.join(self._relation_specs) or 'none configured'}), {CATEGORY_TASK} "
                    f"(needs category_field), {COINTERACTION}, {', '.join(BATCH_TASKS)}"
                )
        if CATEGORY_TASK in self._aux_tasks and not self.config["category_field"]:
            raise ValueError("aux_tasks: task 'category' needs category_field (a token_seq field of .item)")

    # ---------------------------------------------------------------- loading

    def _space_field(self, space: str) -> str:
        return self.uid_field if space == "user" else self.iid_field

    def _load_relation(self, name: str, suffix: str, space: str, directed: bool):
        path = os.path.join(self.dataset_path, f"{self.dataset_name}.{suffix}")
        needed = name in self._aux_tasks
        if not os.path.isfile(path):
            if needed:
                raise ValueError(
                    f"relation '{name}': file {path} not found, and aux task '{name}' needs it. Run the "
                    f"dataset's converter (python -m recbole_pmtrec.data.convert) or drop '{name}' from aux_tasks"
                )
            self.logger.warning(f"relation '{name}': file {path} not found; the relation is not loaded")
            return
        frame, _ = read_relation_file(
            path, self.config["field_separator"], self.config["encoding"] or "utf-8"
        )
        id_field = self._space_field(space)
        num_nodes = self.num(id_field)
        in_interactions = np.zeros(num_nodes, dtype=bool)
        in_interactions[self.inter_feat[id_field].to_numpy()] = True
        in_interactions[0] = False

        token_id = self.field2token_id[id_field]
        ends, known = [], np.ones(len(frame), dtype=bool)
        unknown_tokens = []
        for column in (SOURCE_FIELD, TARGET_FIELD):
            ids = frame[column].map(token_id).fillna(0).to_numpy(dtype=np.int64)
            column_known = in_interactions[ids]
            unknown_tokens.append(frame[column].to_numpy()[~column_known])
            known &= column_known
            ends.append(ids)
        src, dst = ends[0][known], ends[1][known]
        weight = frame[WEIGHT_FIELD].to_numpy()[known] if WEIGHT_FIELD in frame else None
        stats = RelationStats(
            source=os.path.basename(path),
            raw_rows=len(frame),
            unknown_rows=int((~known).sum()),
            unknown_ids=len(np.unique(np.concatenate(unknown_tokens))),
        )
        loop = src == dst
        stats.self_loops = int(loop.sum())
        src, dst = src[~loop], dst[~loop]
        weight = None if weight is None else weight[~loop]
        src, dst, weight, stats.duplicates = dedupe_edges(src, dst, weight, num_nodes, directed)
        stats.edges = len(src)
        if stats.edges == 0:
            message = f"relation '{name}' ({path}): {stats.why_empty()}"
            if needed:
                raise ValueError(message + f"; aux task '{name}' needs it")
            self.logger.warning(message)
        self.relation_stats[name] = stats
        self.relations[name] = Relation(
            name=name,
            space=space,
            src=torch.from_numpy(src),
            dst=torch.from_numpy(dst),
            weight=None if weight is None else torch.from_numpy(weight.astype(np.float32)),
            directed=directed,
            num_nodes=num_nodes,
        )

    def _load_item_categories(self) -> sp.csr_matrix | None:
        """Item -> category CSR (``item_num x num(category_field)``, ones; padding 0 excluded)."""
        category_field = self.config["category_field"]
        if not category_field:
            return None
        item_file = os.path.join(self.dataset_path, f"{self.dataset_name}.item")
        if self.item_feat is None or category_field not in self.item_feat:
            raise ValueError(
                f"category_field '{category_field}' is not loaded from {item_file}: the file must have it "
                f"and load_col must list it (load_col: {{item: [{self.iid_field}, {category_field}]}})"
            )
        ftype = self.field2type[category_field]
        values = self.item_feat[category_field].to_numpy()
        if ftype == FeatureType.TOKEN_SEQ:
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
            categories = np.concatenate(
                [np.asarray(v, dtype=np.int64) for v in values] + [np.zeros(0, np.int64)]
            )
        elif ftype == FeatureType.TOKEN:
            lengths = np.ones(len(values), dtype=np.int64)
            categories = values.astype(np.int64)
        else:
            raise ValueError(
                f"category_field '{category_field}' of {item_file} is {ftype.value}; it must be token_seq"
            )
        items = np.repeat(self.item_feat[self.iid_field].to_numpy(dtype=np.int64), lengths)
        real = categories > 0
        matrix = sp.csr_matrix(
            (np.ones(int(real.sum()), dtype=np.float32), (items[real], categories[real])),
            shape=(self.item_num, self.num(category_field)),
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    # ---------------------------------------------------------------- splits

    def build(self):
        """RecBole's split, then the structures derived from the TRAINING split only (co-interaction
        pairs, same-category items), shared by all splits."""
        datasets = super().build()
        train_inter = datasets[0].inter_feat
        users = train_inter[self.uid_field].numpy()
        items = train_inter[self.iid_field].numpy()
        train_item_mask = np.zeros(self.item_num, dtype=bool)
        train_item_mask[items] = True

        max_pairs = int(aux_config(self.config, "aux_cointeraction_max_pairs"))
        if max_pairs < 1:
            raise ValueError(f"aux_cointeraction_max_pairs must be >= 1, got {max_pairs}")
        first, second, notes = cointeraction_pairs(
            users, items, self.item_num, max_pairs, self.config["seed"]
        )
        src, dst, _, duplicates = dedupe_edges(first, second, None, self.item_num, directed=False)
        relations = dict(self.relations)
        relations[COINTERACTION] = Relation(
            COINTERACTION, "item", torch.from_numpy(src), torch.from_numpy(dst), None, False, self.item_num
        )
        stats = dict(self.relation_stats)
        stats[COINTERACTION] = RelationStats(
            source="the training split",
            raw_rows=len(first),
            duplicates=duplicates,
            edges=len(src),
            notes=notes,
            from_file=False,
        )
        train_item_categories = None
        if self.item_categories is not None:
            train_item_categories = (
                sp.diags(train_item_mask.astype(np.float32)) @ self.item_categories
            ).tocsr()
            train_item_categories.eliminate_zeros()
            if CATEGORY_TASK in self._aux_tasks and train_item_categories.nnz == 0:
                raise ValueError(
                    f"aux task 'category': no training item has a '{self.config['category_field']}' "
                    f"(field of {self.dataset_name}.item)"
                )
        if COINTERACTION in self._aux_tasks and len(src) == 0:
            raise ValueError("aux task 'cointeraction': no training user has two items")
        for dataset in datasets:
            dataset.relations = relations
            dataset.relation_stats = stats
            dataset.train_item_mask = train_item_mask
            dataset.train_item_categories = train_item_categories
        for line in datasets[0]._aux_lines(derived_only=True):
            self.logger.info(line)
        return datasets

    # ---------------------------------------------------------------- access and reporting

    def relation_matrix(self, name: str, form: str = "csr") -> sp.spmatrix:
        """The adjacency of relation ``name`` as a scipy matrix (``form``: csr, coo, ...)."""
        if name not in self.relations:
            raise KeyError(
                f"no relation '{name}' in {self.dataset_name}; loaded: {', '.join(self.relations) or 'none'}"
            )
        return self.relations[name].to_scipy(form)

    def _aux_lines(self, derived_only: bool = False) -> list[str]:
        """One line per relation and per category structure; ``derived_only``: those built by ``build``."""
        lines = []
        for name, stats in self.relation_stats.items():
            if derived_only and name != COINTERACTION:
                continue
            relation = self.relations[name]
            kind = f"{relation.space}-{relation.space}, {'directed' if relation.directed else 'undirected'}"
            lines.append(set_color(f"Relation {name}", "blue") + f" ({kind}): {stats.summary()}")
        structures = [("training items", self.train_item_categories)]
        if not derived_only:
            structures.insert(0, ("items", self.item_categories))
        for which, categories in structures:
            if categories is None:
                continue
            lines.append(
                set_color(f"Categories ({self.config['category_field']}) of {which}", "blue")
                + f": {int((np.diff(categories.indptr) > 0).sum())} items with a category, "
                f"{int((np.diff(categories.tocsc().indptr) > 0).sum())} categories used, "
                f"{categories.nnz} item-category pairs"
            )
        return lines

    def __str__(self):
        return "\n".join([super().__str__(), *self._aux_lines()])
