"""Adam over large embedding tables, cache-blocked: the same arithmetic as ``torch.optim.Adam``, bit for bit.

On the CPU, PyTorch's Adam (its single-tensor path, the default there) runs each step as a sequence of
whole-tensor passes: ``grad + wd * param``, ``exp_avg.lerp_``, ``exp_avg_sq.mul_().addcmul_()``, ``sqrt``,
``/ sqrt(bias_correction2)``, ``+ eps``, ``param.addcdiv_``. On Epinions' tables (22k + 296k rows x 32, 41 MB
per tensor) every pass streams the tensors through memory, and that, not the arithmetic, was ~70 % of a
multi-task training step (docs/RESULTS.md, "Training step").

:class:`BlockedAdam` runs the same PyTorch function (``torch.optim.adam.adam``, single-tensor path) on
consecutive chunks of ``CHUNK`` elements of each large parameter, so the chunk's tensors stay in cache across
the passes. Every operation in Adam's update is elementwise, so a chunk's elements get exactly the operations
they get in the whole-tensor pass; chunks are multiples of any SIMD width, so the vectorised and scalar parts of
each kernel cover the same elements (only the tensor's last elements take the scalar tail, in both).
``tests/test_optim.py`` checks parameters and both moments against ``torch.optim.Adam`` with ``torch.equal``
over many steps (weight decay, odd sizes, zero-gradient rows, 1 and 2 threads, a resume from a state dict).

It is used only where it changes nothing but the memory traffic: every parameter on the CPU (elsewhere PyTorch
defaults to its foreach or fused kernels), the default single-tensor path
(not ``foreach`` / ``fused``, not ``capturable`` / ``differentiable`` / ``amsgrad``, no grad scaling, real
dtypes); anything else is handed to ``torch.optim.Adam.step`` as it is. The optimizer's state dict is Adam's
(same keys), so checkpoints load into either class.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam

# elements per chunk: 1 MiB per float32 tensor, so a chunk's five tensors (param, grad, two moments, a
# temporary) stay in cache across the passes. Measured on Epinions' two tables (318k x 32, 2-core EPYC, one
# thread): a step takes 118 ms with torch.optim.Adam; 44, 29, 22, 22, 34, 42 ms with chunks of 2^14 .. 2^20
# (below 2^16 the per-chunk Python calls weigh, above 2^19 the chunk leaves the cache)
CHUNK = 1 << 18
# smaller parameters are passed whole
MIN_BLOCKED = 2 * CHUNK


class BlockedAdam(torch.optim.Adam):
    """``torch.optim.Adam`` whose CPU update of a large parameter runs chunk by chunk (module docstring)."""

    def _blockable(self, group) -> bool:
        on_cpu = all(p.device.type == "cpu" for p in group["params"])  # elsewhere torch picks foreach / fused
        return on_cpu and not (
            group["foreach"]
            or group["fused"]
            or group["capturable"]
            or group["differentiable"]
            or group["amsgrad"]
            or getattr(self, "grad_scale", None) is not None
            or getattr(self, "found_inf", None) is not None
        )

    @torch.no_grad()
    def step(self, closure=None):
        if not all(self._blockable(group) for group in self.param_groups):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps = [], [], [], [], [], []
            has_complex = self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps)
            lists = ([], [], [], [], [])  # params, grads, exp_avgs, exp_avg_sqs, steps
            advance = []  # state step tensors of the chunked parameters, advanced once after the update
            for p, g, m, v, s in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
                tensors = (p, g, m, v)
                chunked = (
                    p.numel() >= MIN_BLOCKED
                    and not torch.is_complex(p)
                    and all(t.is_contiguous() and t.device == p.device for t in tensors)
                )
                if not chunked:
                    for out, item in zip(lists, (p, g, m, v, s)):
                        out.append(item)
                    continue
                flat = [t.view(-1) for t in tensors]
                for start in range(0, p.numel(), CHUNK):
                    for out, t in zip(lists, flat):
                        out.append(t[start : start + CHUNK])
                    lists[4].append(s.clone())  # each chunk advances its own copy of the step
                advance.append(s)
            adam(
                *lists[:4],
                [],
                lists[4],
                foreach=False,
                fused=False,
                has_complex=has_complex,
                amsgrad=False,
                beta1=group["betas"][0],
                beta2=group["betas"][1],
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
                capturable=False,
                differentiable=False,
                decoupled_weight_decay=group["decoupled_weight_decay"],
            )
            for s in advance:
                s += 1
        return loss


def blocked(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``optimizer`` as a :class:`BlockedAdam` with the same parameter groups and settings if it is a plain
    ``torch.optim.Adam`` with no state yet; anything else is returned as it is."""
    if type(optimizer) is not torch.optim.Adam or optimizer.state:
        return optimizer
    return BlockedAdam(optimizer.param_groups, **optimizer.defaults)


class BlockedAdamMixin:
    """Put before RecBole's ``Trainer`` in a trainer's bases: the Adam RecBole builds (``learner: adam``)
    becomes :class:`BlockedAdam` when ``blocked_adam`` is on (the default: it changes no number)."""

    def _build_optimizer(self, **kwargs):
        optimizer = super()._build_optimizer(**kwargs)
        if self.config["blocked_adam"] is False:
            return optimizer
        return blocked(optimizer)
