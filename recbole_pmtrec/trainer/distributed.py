"""The multi-task trainers under DDP: a distributed step equals the single-process step on the global batch.

Per-task gradients are taken with ``torch.autograd.grad``, which bypasses DDP's all-reduce hooks, and
PMTRec's row weights are non-linear in the gradients, so averaging *combined* gradients is not the
single-process step. :meth:`DistributedStep.reduce` averages every task's gradients across ranks *before*
the combiner sees them (``MultiTaskTrainer.train_step`` calls it between ``_per_task_row_gradients`` and the
combiner):

- a table's per-task row block ``[T, R, d]`` with its ``touched [T, R]`` mask: each rank touched its own
  rows, so the ranks first all-gather their row indices (one small collective for every table at once),
  take the sorted union ``U`` (the rows the global batch touched, in the order one process would hold them),
  place their block in a ``[T, U, d + 1]`` buffer (the last channel counts touches) and sum it in one
  all-reduce. A table some rank holds densely (``row_grad_mode: dense``, a graph encoder, or ``auto`` on a
  small table) is reduced densely on every rank: the ranks must agree on the collective;
- the dense parameters' gradients (per task for a task-level combiner) and the task losses ride in the same
  all-reduce, with a presence flag per parameter so an unused one stays ``None`` as in one process.

Sums are divided by the world size: each rank's losses are means over its share of the global batch
(RecBole's loader gives each rank ``train_batch_size / world_size`` rows), so the average of the rank means
is the global mean, as one process computes it. Every rank then runs the same combiner on the same numbers;
a stochastic combiner (PCGrad's order, RLW's weights, GradDrop's mask) draws from a generator state shared by
all ranks (seeded from ``seed``, saved in checkpoints), so the ranks stay identical.

Auxiliary tasks: each rank's sampler draws ``aux_batch_size / world_size`` anchors with its own generator
(seed + rank), so the global auxiliary batch is the union of the ranks' draws, of the single-process size.
Parameters start identical: DDP's constructor (RecBole's ``AbstractTrainer``) broadcasts rank 0's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_ABSENT, _UNIQUE, _DENSE = 0, 1, 2


def _shared_generator_state(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(int(seed)).get_state()


class DistributedStep:
    """What a :class:`~recbole_pmtrec.trainer.multitask.MultiTaskTrainer` needs under DDP (one per trainer)."""

    def __init__(self, trainer):
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.device = trainer.device
        self.tables = trainer.tables  # name -> weight, the same order on every rank
        self.dense_params = trainer.dense_params
        self.bytes_last = 0  # payload of the last step's collectives (bytes this rank sent)
        self.steps = 0
        self.bytes_total = 0
        self.shared_rng = _shared_generator_state(trainer.config["seed"])
        self._share_combiner_randomness(trainer.combiner)
        self._wait_for_checkpoints(trainer)
        sampler = getattr(trainer.model, "aux_sampler", None)
        if sampler is not None:  # global aux batch = union of the ranks' draws, of the one-process size
            sampler.batch_size = max(1, sampler.batch_size // self.world)
            sampler.generator.manual_seed(int(trainer.config["seed"]) + self.rank)

    # -------------------------------------------------------------------------------- randomness
    def _share_combiner_randomness(self, combiner) -> None:
        """Run the combiner's ``combine`` / ``combine_rows`` on the shared generator state (instance
        attributes: the combiner's class and ``state_dict`` are untouched)."""
        for name in ("combine", "combine_rows"):
            method = getattr(combiner, name)
            setattr(combiner, name, self._on_shared_rng(method))

    def _on_shared_rng(self, method):
        def call(*args, **kwargs):
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(self.shared_rng)
                result = method(*args, **kwargs)
                self.shared_rng = torch.get_rng_state()
            return result

        return call

    # -------------------------------------------------------------------------------- checkpoints
    @staticmethod
    def _wait_for_checkpoints(trainer) -> None:
        """Every rank returns from ``_save_checkpoint`` only once rank 0 has written the whole file (a barrier
        after the save; an instance attribute, the trainer's class untouched). Ranks other than 0 return from
        the save at once, and a read right after it (``evaluate(load_best_model=True)`` after ``fit``, as
        RecBole's examples call it, or a resume in the same group) would find no file or a partial one.
        Every rank calls ``_save_checkpoint`` (``fit``'s decisions are the same on every rank; the save
        gathers the ranks' random states, a collective already), so the barrier adds no new way to hang."""
        save = trainer._save_checkpoint

        def save_then_wait(*args, **kwargs):
            result = save(*args, **kwargs)
            dist.barrier()
            return result

        trainer._save_checkpoint = save_then_wait

    # -------------------------------------------------------------------------------- the step
    def reduce(self, blocks, dense_sum, per_task_dense, losses):
        """Average the per-task blocks, dense gradients and losses over the ranks; see the module docstring.
        Returns ``(blocks, dense_sum, per_task_dense, losses)`` in the shapes ``train_step`` passes in."""
        num_tasks = losses.numel()
        names = list(self.tables)
        dtype = losses.dtype if not blocks else next(iter(blocks.values()))[1].dtype
        sent = 0

        # 1. who holds what: mode and row count per table (one all-gather)
        meta = torch.zeros(len(names), 2, dtype=torch.long, device=self.device)
        for i, name in enumerate(names):
            if name in blocks:
                index = blocks[name][0]
                meta[i, 0] = _DENSE if index is None else _UNIQUE
                meta[i, 1] = 0 if index is None else index.numel()
        metas = self._all_gather(meta)
        sent += meta.numel() * 8
        modes = torch.stack(metas)[:, :, 0].amax(dim=0).tolist()
        counts = torch.stack(metas)[:, :, 1]  # [W, tables]

        # 2. the union of the rows each rank touched, for the tables every rank holds by rows
        unions = {}
        unique_tables = [i for i, mode in enumerate(modes) if mode == _UNIQUE]
        if unique_tables:
            widths = [int(counts[:, i].max()) for i in unique_tables]
            padded = torch.full((sum(widths),), -1, dtype=torch.long, device=self.device)
            at = 0
            for i, width in zip(unique_tables, widths):
                if names[i] in blocks:
                    index = blocks[names[i]][0]
                    padded[at : at + index.numel()] = index
                at += width
            gathered = torch.stack(self._all_gather(padded))  # [W, sum(widths)]
            sent += padded.numel() * 8
            at = 0
            for i, width in zip(unique_tables, widths):
                rows = gathered[:, at : at + width].reshape(-1)
                unions[names[i]] = torch.unique(rows[rows >= 0])
                at += width

        # 3. one all-reduce: table blocks with a touch channel, dense gradients with presence flags, losses
        pieces, tables_layout = [], []
        for i, name in enumerate(names):
            if modes[i] == _ABSENT:
                continue
            width = self.tables[name].shape[-1]
            rows = unions[name].numel() if modes[i] == _UNIQUE else self.tables[name].shape[0]
            buffer = torch.zeros(num_tasks, rows, width + 1, dtype=dtype, device=self.device)
            if name in blocks:
                index, grads, touched = blocks[name]
                if modes[i] == _UNIQUE:
                    index = torch.searchsorted(unions[name], index)
                where = slice(None) if index is None else index
                buffer[:, where, :width] = grads
                buffer[:, where, width] = touched.to(dtype)
            pieces.append(buffer.reshape(-1))
            tables_layout.append((name, buffer.shape, unions.get(name)))
        per_task = per_task_dense is not None
        for p, param in enumerate(self.dense_params):
            for grads in per_task_dense if per_task else [dense_sum]:
                g = grads[p]
                pieces.append(
                    param.new_zeros(param.numel(), dtype=dtype) if g is None else g.reshape(-1).to(dtype)
                )
        present = [
            any((grads[p] is not None) for grads in (per_task_dense if per_task else [dense_sum]))
            for p in range(len(self.dense_params))
        ]
        pieces.append(torch.tensor(present, dtype=dtype, device=self.device))
        pieces.append(losses.detach().to(dtype))
        flat = torch.cat(pieces)
        dist.all_reduce(flat)
        sent += flat.numel() * flat.element_size()
        self._count(sent)

        # 4. unpack, dividing sums by the world size
        world, at = self.world, 0
        reduced = {}
        for name, shape, union in tables_layout:
            size = shape.numel()
            buffer = flat[at : at + size].reshape(shape)
            at += size
            reduced[name] = (union, buffer[:, :, :-1] / world, buffer[:, :, -1] > 0)
        copies = num_tasks if per_task else 1
        dense = []
        for param in self.dense_params:
            size = param.numel() * copies
            dense.append(flat[at : at + size].reshape(copies, *param.shape) / world)
            at += size
        present = flat[at : at + len(self.dense_params)] > 0
        at += len(self.dense_params)
        reduced_losses = flat[at : at + num_tasks].to(losses.dtype) / world
        if per_task:
            per_task_dense = [tuple(g[t] for g in dense) for t in range(num_tasks)]
        elif dense_sum is not None:
            dense_sum = tuple(g[0] if ok else None for g, ok in zip(dense, present.tolist()))
        return reduced, dense_sum, per_task_dense, reduced_losses

    def _all_gather(self, tensor):
        out = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(out, tensor)
        return out

    def _count(self, sent: int) -> None:
        self.bytes_last = sent
        self.bytes_total += sent
        self.steps += 1

    # -------------------------------------------------------------------------------- epochs, checkpoints, evaluation
    @staticmethod
    def start_epoch(train_data, epoch_idx: int) -> None:
        """A new shuffle of the global order each epoch, as RecBole's ``_train_epoch`` does."""
        if train_data.shuffle:
            train_data.sampler.set_epoch(epoch_idx)

    def gather_rng(self, state: dict) -> dict:
        """Every rank's random state (and the combiners' shared one) for rank 0's checkpoint (collective)."""
        states = [None] * self.world
        dist.all_gather_object(states, {**state, "shared": self.shared_rng})
        return {"ranks": states}

    def own_rng(self, state: dict) -> dict:
        """This rank's part of a checkpoint's random state (a rank the saving run lacked takes rank 0's)."""
        ranks = state.get("ranks")
        if ranks is None:
            return state
        mine = ranks[self.rank] if self.rank < len(ranks) else ranks[0]
        self.shared_rng = mine.get("shared", self.shared_rng)
        return mine

    def gather_rows(self, tensors: dict) -> dict:
        """Concatenate every rank's evaluation rows (CPU tensors of equal keys, first dimension = rows), so a
        metric that is not a mean over rows (AUC) is computed on all of them; rank order."""
        count = torch.tensor([next(iter(tensors.values())).shape[0]], device=self.device)
        counts = [int(c) for c in self._all_gather(count)]
        longest = max(counts)
        out = {}
        for key, value in tensors.items():
            padded = value.new_zeros((longest, *value.shape[1:])).to(self.device)
            padded[: value.shape[0]] = value.to(self.device)
            parts = self._all_gather(padded)
            out[key] = torch.cat([p[:c] for p, c in zip(parts, counts)]).cpu()
        return out


def rank_rng(state: dict, step: DistributedStep | None) -> dict:
    """The random state this process restores from a checkpoint: its own rank's under DDP, rank 0's when a
    single process resumes a multi-process run."""
    if step is not None:
        return step.own_rng(state)
    return state["ranks"][0] if "ranks" in state else state


def attach(trainer) -> DistributedStep | None:
    """The trainer's distributed helper, or None for a single process."""
    if trainer.config["single_spec"]:
        return None
    return DistributedStep(trainer)


def barrier() -> None:
    """Wait for every rank (no-op in one process): before any rank reads what rank 0 wrote."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def share_checkpoint_name(trainer) -> None:
    """Give every rank rank 0's ``saved_model_file``: RecBole names it from each process's clock, and a
    rank whose clock ticked over would look for a file nobody wrote."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    name = [trainer.saved_model_file]
    dist.broadcast_object_list(name, src=0)
    trainer.saved_model_file = name[0]
