"""The multi-task trainer: per-task gradients -> combiner (``mtl_method``) -> ``.grad`` -> optimizer step.

A RecBole ``Trainer`` with ``_train_epoch`` overridden; ``fit``, evaluation, early stopping and checkpoints
are RecBole's. One step:

1. one forward (``model.multitask_forward``): every task's loss and the embedding rows it gathered;
2. one backward of the summed loss with respect to the gathered rows (each task gathered its own copy, so
   the gradient reaching a task's rows is that task's alone) and the dense parameters;
3. per embedding table, the per-task row gradients ``[T, R, d]`` are assembled, either over the rows the
   batch touched (``R`` unique rows: large tables) or over the whole table (small tables, where a dense
   buffer is cheaper than finding unique rows); for graph encoders the per-task gradients at the encoder
   output are pushed back to the base tables by the encoder (``base_gradients``);
4. a per-row combiner (PMTRec, EW) combines each row; a task-level combiner (PCGrad, Nash-MTL, ...) sees the
   Jacobian of the gathered rows ``[T, P]``; the result is written into ``.grad`` once;
5. the optimizer steps.

Epochs are numbered as RecBole numbers them, from 0 (``epoch_idx``), in the log, in errors and in
checkpoints. Only PMTRec's Task Focusing formula counts from 1: its s is ``epoch_idx + 1`` (epoch 0 is
s = 1), which is what ``train_step`` and the combiners receive as ``epoch``. RecBole's ``resume_checkpoint``
restarts ``epoch_idx`` after the saved epoch, so s continues after a resume. The epoch log gives each task's
loss once, as the mean over the epoch's batches (``_train_epoch`` returns these means, so RecBole's
``train_loss_dict`` and TensorBoard ``Loss/Train<i>`` use the same scale). The combiner's state and the random
state of the run (``trainer/rng.py``: global generators, the training loader's, the auxiliary sampler's)
are saved in the checkpoint and restored with it, so a resumed run trains exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from recbole_pmtrec.compat import load_checkpoint, save_checkpoint
from recbole_pmtrec.trainer import distributed, rng
from recbole_pmtrec.trainer.combiners import build_combiner
from recbole_pmtrec.trainer.fast_eval import FastFullSortMixin
from recbole_pmtrec.trainer.optim import BlockedAdamMixin


class MultiTaskTrainer(FastFullSortMixin, BlockedAdamMixin, Trainer):
    """Trains any model that follows ``recbole_pmtrec.model.multitask`` with any combiner."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.task_names = list(model.task_names)
        self.combiner = build_combiner(config, len(self.task_names)).to(self.device)
        self.row_grad_mode = (config["row_grad_mode"] or "auto").lower()
        if self.row_grad_mode not in {"auto", "dense", "unique"}:
            raise ValueError(f"row_grad_mode must be auto, dense or unique, got '{self.row_grad_mode}'")
        self.tables = dict(model.row_tables())
        table_ids = {id(p) for p in self.tables.values()}
        self.dense_params = [p for p in model.parameters() if p.requires_grad and id(p) not in table_ids]
        self._grad_buffers: dict = {}  # per table: (.grad buffer, rows written into it last step)
        self._weight_sums: dict = {}  # per table: sum, sum of squares, count of per-row task weights (epoch)
        self._train_loader = None  # the loader of the running fit (its generator goes into checkpoints)
        self._pending_loader_rng = None  # a resumed checkpoint's loader state, applied at the next epoch
        self.dist = distributed.attach(self)  # None in one process; under DDP: trainer/distributed.py
        self.logger.info(f"multi-task: tasks {self.task_names}, combiner {self.combiner}")

    # ------------------------------------------------------------------------------------------ step
    def train_step(self, interaction, epoch: int) -> torch.Tensor:
        """One optimisation step; returns the detached per-task losses ``[T]``. ``epoch`` is PMTRec's s,
        RecBole's 0-based epoch + 1 (s = 1 in epoch 0)."""
        model = self.model
        out = model.multitask_forward(interaction)
        losses = torch.stack(out.losses)
        self._check_task_losses(losses, epoch)
        gathers = out.gathers
        rows = [g.rows for g in gathers]
        per_task_dense = None
        if self.dense_params and not self.combiner.per_row:
            # task-level combiners need every task's gradient of the dense parameters: one pass per task
            row_grads = [torch.zeros_like(r) for r in rows]
            per_task_dense = []
            for t in range(len(losses)):
                grads = torch.autograd.grad(
                    losses[t], rows + self.dense_params, retain_graph=True, allow_unused=True
                )
                for i, g in enumerate(gathers):
                    if g.task == t and grads[i] is not None:
                        row_grads[i] = grads[i]
                per_task_dense.append(grads[len(rows) :])
            dense_sum = None
        else:
            # a graph encoder's base_gradients may replay its propagation (NGCF): keep the graph until then
            grads = torch.autograd.grad(
                losses.sum(),
                rows + self.dense_params,
                allow_unused=True,
                retain_graph=not model.gathers_from_base,
            )
            row_grads, dense_sum = grads[: len(rows)], grads[len(rows) :]

        blocks = self._per_task_row_gradients(gathers, row_grads, len(losses))
        if self.dist is not None:  # every task's gradients averaged over the ranks before any combiner
            blocks, dense_sum, per_task_dense, losses = self.dist.reduce(
                blocks, dense_sum, per_task_dense, losses
            )
        if self.combiner.per_row:
            for name, (index, buffer, touched) in blocks.items():
                combined = self.combiner.combine_rows(buffer, touched, epoch)
                self._record_row_weights(name, touched)
                self._write_rows(name, index, combined)
            for param, grad in zip(self.dense_params, dense_sum):
                param.grad = None if grad is None else grad.detach()
        else:
            self._combine_task_level(blocks, per_task_dense, losses.detach(), epoch)

        if self.clip_grad_norm:
            clip_grad_norm_(model.parameters(), **self.clip_grad_norm)
        self.optimizer.step()
        return losses.detach()

    def _per_task_row_gradients(self, gathers, row_grads, num_tasks):
        """``{table: (row index or None for all rows, grads [T, R, d], touched [T, R])}`` for the base tables."""
        by_table: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        for gather, grad in zip(gathers, row_grads):
            if grad is not None:
                by_table.setdefault(gather.table, []).append((gather.task, gather.index.reshape(-1), grad))
        blocks = {}
        from_base = self.model.gathers_from_base
        output_buffers = {}
        for name, parts in by_table.items():
            n_rows = self.tables[name].shape[0]
            dim = parts[0][2].shape[-1]  # the base table's width, or a graph encoder's output width (NGCF)
            index = torch.cat([p[1] for p in parts])
            task = torch.cat([torch.full_like(p[1], p[0]) for p in parts])
            grad = torch.cat([p[2].reshape(-1, dim) for p in parts])
            dense = not from_base or self.row_grad_mode == "dense"
            if self.row_grad_mode == "auto" and from_base:
                dense = n_rows <= index.numel()
            if dense:
                buffer = grad.new_zeros(num_tasks, n_rows, dim)
                buffer.view(-1, dim).index_add_(0, task * n_rows + index, grad)
                touched = torch.zeros(num_tasks, n_rows, dtype=torch.bool, device=grad.device)
                touched.view(-1)[task * n_rows + index] = True
                if from_base:
                    blocks[name] = (None, buffer, touched)
                else:
                    output_buffers[name] = buffer
            else:
                unique, inverse = torch.unique(index, return_inverse=True)
                r = unique.numel()
                buffer = grad.new_zeros(num_tasks, r, dim)
                buffer.view(-1, dim).index_add_(0, task * r + inverse, grad)
                touched = torch.zeros(num_tasks, r, dtype=torch.bool, device=grad.device)
                touched.view(-1)[task * r + inverse] = True
                blocks[name] = (unique, buffer, touched)
        if output_buffers:
            width = next(iter(output_buffers.values())).shape[-1]
            for name, weight in self.tables.items():  # the propagation mixes tables: give it all of them
                if name not in output_buffers:
                    output_buffers[name] = weight.new_zeros(num_tasks, weight.shape[0], width)
            for name, buffer in self.model.base_gradients(output_buffers).items():
                touched = buffer.abs().amax(dim=-1) > 0
                blocks[name] = (None, buffer, touched)
        return blocks

    def _write_rows(self, name, index, rows_grad):
        weight = self.tables[name]
        if index is None:
            weight.grad = rows_grad.detach()
            return
        # one gradient buffer per table, kept across steps: only the rows written last time are zeroed (a fresh
        # zeros_like of a 296k-row table costs its page faults every step); the values are those of zeros_like
        grad, last = self._grad_buffers.get(name, (None, None))
        if (
            grad is None
            or grad.shape != weight.shape
            or grad.dtype != weight.dtype
            or grad.device != weight.device
        ):
            grad = torch.zeros_like(weight)
        else:
            grad[last] = 0
        grad[index] = rows_grad.detach()
        self._grad_buffers[name] = (grad, index)
        weight.grad = grad

    def _combine_task_level(self, blocks, per_task_dense, losses, epoch):
        """Flatten every table block (and the dense parameters' per-task gradients) into ``J[T, P]``,
        let the combiner pick a direction, and scatter it back."""
        num_tasks = losses.numel()
        pieces, shapes = [], []
        for name, (index, buffer, _touched) in blocks.items():
            pieces.append(buffer.reshape(num_tasks, -1))
            shapes.append(("table", name, index, buffer.shape[1:]))
        if per_task_dense is not None:
            for i, param in enumerate(self.dense_params):
                per_task = [g[i] if g[i] is not None else torch.zeros_like(param) for g in per_task_dense]
                pieces.append(torch.stack([g.reshape(-1) for g in per_task]))
                shapes.append(("dense", i, None, param.shape))
        jacobian = torch.cat(pieces, dim=1)
        direction = self.combiner.combine(jacobian, losses, epoch)
        offset = 0
        for kind, key, index, shape in shapes:
            size = int(torch.tensor(shape).prod())
            part = direction[offset : offset + size].reshape(shape)
            offset += size
            if kind == "table":
                self._write_rows(key, index, part)
            else:
                self.dense_params[key].grad = part.detach()

    def _check_task_losses(self, losses: torch.Tensor, epoch: int) -> None:
        """``epoch``: PMTRec's s (from 1); the error names RecBole's 0-based epoch, as the log does."""
        finite = torch.isfinite(losses.detach())
        if not bool(finite.all()):  # one device sync per step, not one per task
            bad = [name for name, ok in zip(self.task_names, finite.tolist()) if not ok]
            raise ValueError(
                f"Training loss is not finite for task(s) {bad} at epoch {epoch - 1} "
                f"(0-based, as in the log; PMTRec's s = {epoch}): "
                + ", ".join(f"{n}={v}" for n, v in zip(self.task_names, losses.detach().tolist()))
            )

    # ------------------------------------------------------------------------------------------ epoch
    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        self._train_loader = train_data
        if self._pending_loader_rng is not None:
            rng.restore_loader(self._pending_loader_rng, train_data)
            self._pending_loader_rng = None
        epoch = epoch_idx + 1  # PMTRec's s: epoch 0 is s = 1
        self._weight_sums = {}
        if self.dist is not None:
            self.dist.start_epoch(train_data, epoch_idx)
        iter_data = (
            tqdm(
                train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink")
            )
            if show_progress
            else train_data
        )
        total = None
        batches = 0
        for interaction in iter_data:
            interaction = interaction.to(self.device)
            self.optimizer.zero_grad()
            losses = self.train_step(interaction, epoch)
            total = losses.clone() if total is None else total + losses
            batches += 1
        mean_losses = total / max(batches, 1)
        self.combiner.end_epoch(epoch, mean_losses)
        self._log_epoch(epoch_idx, mean_losses)
        # the mean per batch (RecBole's Trainer returns the sum over batches): the one scale of the epoch log
        return tuple(float(x) for x in mean_losses)

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        """RecBole's ``epoch N training`` line, with each task's loss by name and its scale said."""
        places = self.config["loss_decimal_place"] or 4
        parts = ", ".join(f"{name}={loss:.{places}f}" for name, loss in zip(self.task_names, losses))
        return (
            set_color(f"epoch {epoch_idx} training", "green")
            + " ["
            + set_color("time", "blue")
            + f": {e_time - s_time:.2f}s, "
            + set_color("task losses (mean per batch)", "blue")
            + f": {parts}]"
        )

    def _record_row_weights(self, table, touched):
        weights = getattr(self.combiner, "last_weights", None)
        if weights is None:
            return
        # masked sums rather than weights[:, active]: no device sync in the step (a GPU keeps its queue)
        active = touched.any(dim=0)
        w = weights.double() * active
        sums = self._weight_sums.setdefault(table, [0.0, 0.0, 0, 0.0, 0])
        sums[0] = sums[0] + w.sum(dim=1)
        sums[1] = sums[1] + (w * w).sum(dim=1)
        sums[2] = sums[2] + active.sum()
        norms = getattr(self.combiner, "last_norms", None)
        if norms is not None:  # mean norm over the rows each task touched: the scale tau acts on
            sums[3] = sums[3] + (norms * touched).sum(dim=1).double()
            sums[4] = sums[4] + touched.sum(dim=1).double()

    def _log_epoch(self, epoch_idx, mean_losses):
        # the losses themselves are logged once, in RecBole's "epoch N training" line (_generate_train_loss_output)
        for name, loss in zip(self.task_names, mean_losses.tolist()):
            self.tensorboard.add_scalar(f"TaskLoss/{name}", loss, epoch_idx)
        for table, (s, ss, n, norm_sum, norm_count) in self._weight_sums.items():
            if int(n) == 0:
                continue
            mean = s / n
            std = (ss / n - mean * mean).clamp_min(0).sqrt()
            text = " ".join(
                f"{t}={m:.3f}±{d:.3f}" for t, m, d in zip(self.task_names, mean.tolist(), std.tolist())
            )
            self.logger.info(
                set_color(f"epoch {epoch_idx} {table} row weights (mean±std)", "blue") + ": " + text
            )
            for t, m, d in zip(self.task_names, mean.tolist(), std.tolist()):
                self.tensorboard.add_scalar(f"RowWeight/{table}/{t}/mean", m, epoch_idx)
                self.tensorboard.add_scalar(f"RowWeight/{table}/{t}/std", d, epoch_idx)
            if isinstance(norm_count, torch.Tensor):
                mean_norm = (norm_sum / norm_count.clamp_min(1)).tolist()
                text = " ".join(f"{t}={v:.2e}" for t, v in zip(self.task_names, mean_norm))
                self.logger.info(
                    f"epoch {epoch_idx} {table} mean row gradient norm per task (tau acts on these): {text}"
                )

    # ------------------------------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        random_state = rng.capture(self._train_loader, self.model)
        if self.dist is not None:  # rank 0 writes every rank's random state
            random_state = self.dist.gather_rng(random_state)
            if self.dist.rank != 0:
                return
        state = {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "combiner": self.combiner.state_dict(),
            "rng": random_state,
        }
        save_checkpoint(state, saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def resume_checkpoint(self, resume_file):
        super().resume_checkpoint(resume_file)
        checkpoint = load_checkpoint(str(resume_file), map_location=self.device)
        if "combiner" in checkpoint:
            self.combiner.load_state_dict(checkpoint["combiner"])
        if "rng" in checkpoint:
            random_state = distributed.rank_rng(checkpoint["rng"], self.dist)
            rng.restore_global(random_state, self.model)
            self._pending_loader_rng = random_state
