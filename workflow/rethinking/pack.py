"""Packing: several runs of one model trained in one process as one stacked model.

One small run (an MLP on CIFAR-10 at batch 128) cannot keep a large GPU busy:
its kernels are tiny and the step is bound by launch overhead. A pack trains K
runs that share the model, the input shape and every training setting (they
differ in corruption, and so in data and labels, and in seed) as one model
whose parameters are stacked along a new first axis, evaluated with
`torch.func.vmap` over `functional_call`: each layer is one batched kernel for
all K runs. SGD with momentum and weight decay is applied to the stacked
tensors element by element, which is each run's own update; each run keeps
its own permutation generator, learning-rate schedule (epoch counter), stop
rule, checkpoint and run folder, in the same formats as a single run.

What a pack changes: float rounding only (a batched matrix product sums in
another order), so a packed run follows its single-run trajectory to within
rounding, not bit for bit. Runs with dropout are never packed (vmap's random
masks would differ from a single run's), so every packed run is a run the
single engine could have produced up to rounding.

Whether packing pays is a property of the device: on the 2-core CPU of this
project it does not (docs/PERFORMANCE.md), so `training.pack` defaults to 1.
Which runs share a pack (`plan_packs`) is decided in rethinking.plan.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


# settings that may differ inside a pack; everything else in run_settings must be equal
class Stacked:
    """K models of one architecture as stacked tensors, trained by vmap and a hand-written SGD.

    The update is torch.optim.SGD's (dampening 0, no Nesterov): g = grad + wd * p;
    buf = momentum * buf + g (buf starts at 0, so the first buf is g, as torch's clone);
    p -= lr_k * buf, with each run's own lr_k.
    """

    def __init__(self, models: list[nn.Module], momentum: float, weight_decay: float):
        self.template = copy.deepcopy(models[0])   # a real module, loaded with one member's tensors on demand
        self.base = copy.deepcopy(models[0]).to("meta")
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.detach().clone() for k, v in buffers.items()}
        self.momentum_buf = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.momentum, self.weight_decay = momentum, weight_decay

        def loss_and_logits(p, b, x, y):
            logits = functional_call(self.base, (p, b), (x,))
            return F.cross_entropy(logits.float(), y), logits

        self._forward = vmap(loss_and_logits)

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def step(self, xb: torch.Tensor, yb: torch.Tensor, lrs: torch.Tensor, autocast):
        """One SGD step of every member on its own batch xb[k], yb[k]; returns (losses (K,), correct (K,))."""
        self.base.train()
        with autocast():
            losses, logits = self._forward(self.params, self.buffers, xb, yb)
        names = list(self.params)
        grads = torch.autograd.grad(losses.sum(), [self.params[n] for n in names])
        with torch.no_grad():
            for n, g in zip(names, grads):
                p, buf = self.params[n], self.momentum_buf[n]
                if self.weight_decay:
                    g = g.add(p, alpha=self.weight_decay)
                buf.mul_(self.momentum).add_(g)
                p.sub_(lrs.view(-1, *([1] * (p.dim() - 1))) * buf)
        correct = (logits.detach().argmax(-1) == yb).sum(1)
        return losses.detach(), correct

    def member(self, k: int) -> nn.Module:
        """Member k as an ordinary module (a copy: for evaluation, checkpoints and summaries)."""
        state = {n: v[k].detach() for n, v in {**self.params, **self.buffers}.items()}
        self.template.load_state_dict(state)
        return self.template

    def optimizer_state(self, k: int, module: nn.Module, lr: float) -> dict:
        """Member k's momentum as a torch.optim.SGD state_dict for `module` (a single run resumes from it)."""
        opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        for (n, _), p in zip(module.named_parameters(), module.parameters()):
            opt.state[p]["momentum_buffer"] = self.momentum_buf[n][k].detach().clone()
        return opt.state_dict()

    def load_member(self, k: int, model_state: dict, optimizer_state: dict) -> None:
        """Put a run's checkpoint (single or packed: the same format) into slot k."""
        module = self.template
        module.load_state_dict(model_state)
        opt = torch.optim.SGD(module.parameters(), lr=0.0, momentum=self.momentum)
        opt.load_state_dict(optimizer_state)
        with torch.no_grad():
            for n, v in {**dict(module.named_parameters()), **dict(module.named_buffers())}.items():
                (self.params if n in self.params else self.buffers)[n][k].copy_(v)
            for n, p in module.named_parameters():
                buf = opt.state.get(p, {}).get("momentum_buffer")
                self.momentum_buf[n][k].copy_(buf if buf is not None else torch.zeros_like(p))

    def keep(self, members: list[int]) -> None:
        """Drop every member not listed (finished runs leave the pack)."""
        idx = torch.tensor(members, dtype=torch.long, device=next(iter(self.params.values())).device)
        self.params = {k: v.detach()[idx].clone().requires_grad_(True) for k, v in self.params.items()}
        self.buffers = {k: v[idx].clone() for k, v in self.buffers.items()}
        self.momentum_buf = {k: v[idx].clone() for k, v in self.momentum_buf.items()}
