"""Packing: several runs of one model trained in one process as one stacked model.

One small run (an MLP on CIFAR-10 at batch 128) cannot keep a large GPU busy:
its kernels are tiny and the step is bound by launch overhead. A pack trains K
runs that share the model, the input shape and every training setting (they
differ in corruption, and so in data and labels, and in seed) as one model
whose parameters are stacked along a new first axis: each layer is one batched
kernel for all K runs (batched_forward for a plain stack of layers, else
`torch.func.vmap` over `functional_call`). SGD with momentum and weight decay is
applied to the stacked tensors element by element, which is each run's own
update; each run keeps its own permutation generator, learning-rate schedule
(epoch counter), stop rule, checkpoint and run folder, in the same formats as a
single run.

What a pack changes: float rounding only (a batched matrix product sums in
another order), so a packed run follows its single-run trajectory to within
rounding, not bit for bit. Runs whose model has active dropout layers are never
packed (a pack's random masks would differ from a single run's), so every packed
run is a run the single engine could have produced up to rounding.

A single run is a pack of one (`Single`): the same interface over a plain
module and the engine's SGD, so the training loop (rethinking.engine.loop) has
one path for both, and a single run's arithmetic is exactly the plain loop's
(same ops in the same order: its results are unchanged by the adapter).

Whether packing pays is a property of the device and the model: on the project's
2-core CPU a pack of 10 MLP 1x512 runs makes the default experiment 1.1x faster
(params.yaml packs them: `training.pack: {mlp_1x512: 10, default: 1}`), while
AlexNet gains nothing (docs/PERFORMANCE.md); `training.pack` defaults to 1. Which
runs share a pack (`plan_packs`) is decided in rethinking.plan.packs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .optim import SGD, make_optimizer

# parameter-free modules that treat every sample on its own: the K x B samples of a pack are one batch to them
PER_SAMPLE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.LocalResponseNorm, nn.Identity)


def _per_sample(m: nn.Module) -> bool:
    if next(m.parameters(), None) is not None or next(m.buffers(), None) is not None:
        return False
    if isinstance(m, nn.Dropout):
        return m.p == 0
    return isinstance(m, PER_SAMPLE) or getattr(m, "per_sample", False)


def batched_forward(module: nn.Module):
    """The stacked forward of an nn.Sequential of Linear, Conv2d, Flatten and per-sample layers, one
    batched op per layer: f(params, x) maps the K x B x ... inputs of K members to K x B x classes
    logits, params being stack_module_state's. None for any other module (the pack uses vmap).

    A Linear is one batched matrix product (K x B x in @ K x in x out); a Conv2d one grouped
    convolution over the members' channels side by side (B x K*C x H x W, groups K); a per-sample
    layer sees the K*B samples as one batch. vmap does the same arithmetic through its batching
    rules, at several times the dispatch cost per op on a CPU."""
    if not isinstance(module, nn.Sequential):
        return None
    layers = []
    for name, m in module.named_children():
        if isinstance(m, nn.Linear):
            layers.append(("linear", name, m))
        elif isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            layers.append(("conv", name, m))
        elif isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            layers.append(("flatten", name, m))
        elif _per_sample(m):
            layers.append(("each", name, m))
        else:
            return None

    def forward(p: dict, x: torch.Tensor) -> torch.Tensor:
        k, b = x.shape[:2]
        h, kb = x, True  # kb: h is K x B x ...; else B x K x ... (the layout of the convolutions)
        for kind, name, m in layers:
            if kind == "linear":
                if not kb:
                    h, kb = h.transpose(0, 1), True
                w, bias = p[f"{name}.weight"], p.get(f"{name}.bias")
                h = (
                    torch.bmm(h, w.transpose(1, 2))
                    if bias is None
                    else torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))
                )
            elif kind == "conv":
                if kb:
                    h, kb = h.transpose(0, 1), False
                w, bias = p[f"{name}.weight"], p.get(f"{name}.bias")
                out = F.conv2d(
                    h.reshape(b, k * h.shape[2], *h.shape[3:]),
                    w.reshape(-1, *w.shape[2:]),
                    None if bias is None else bias.reshape(-1),
                    m.stride,
                    m.padding,
                    m.dilation,
                    k * m.groups,
                )
                h = out.view(b, k, -1, *out.shape[2:])
            elif kind == "flatten":
                h = h.reshape(h.shape[0], h.shape[1], -1)
            else:
                out = m(h.reshape(-1, *h.shape[2:]))
                h = out.view(h.shape[0], h.shape[1], *out.shape[1:])
        return h if kb else h.transpose(0, 1)

    return forward


class Stacked:
    """K models of one architecture as stacked tensors, trained with a hand-written SGD.

    The forward pass is batched_forward's where the model is a plain stack of layers (the MLPs,
    AlexNet), else torch.func.vmap over functional_call (Inception: any module). The update is
    torch.optim.SGD's (dampening 0, no Nesterov): g = grad + wd * p; buf = momentum * buf + g (buf
    starts at 0, so the first buf is g, as torch's clone); p -= lr_k * buf, with each run's own lr_k,
    as four foreach ops over all stacked tensors (on CUDA each one fused kernel: _update).
    """

    def __init__(self, models: list[nn.Module], momentum: float, weight_decay: float):
        self.template = copy.deepcopy(models[0])  # a real module, loaded with one member's tensors on demand
        self.base = copy.deepcopy(models[0]).to("meta")
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.detach().clone() for k, v in buffers.items()}
        self.momentum_buf = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.momentum, self.weight_decay = momentum, weight_decay
        self._lrs_full = None  # _lr_like's tensors
        self.aligned: bool | None = None  # _update's operand layout: None = aligned on CUDA only

        def loss_and_logits(p, b, x, y):
            logits = functional_call(self.base, (p, b), (x,))
            return F.cross_entropy(logits.float(), y), logits

        self._forward = vmap(loss_and_logits)
        self._batched = None if self.buffers else batched_forward(self.template)

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def set_lrs(self, lrs: list[float]) -> None:
        """Each member's learning rate for the steps that follow (one epoch's)."""
        self.lrs = torch.tensor(lrs, device=next(iter(self.params.values())).device)
        self._lrs_full = None

    def step(self, xb: torch.Tensor, yb: torch.Tensor, autocast):
        """One SGD step of every member on its own batch xb[k], yb[k]; returns (losses (K,), correct (K,))."""
        lrs = self.lrs
        self.base.train()
        if self._batched is not None:
            with autocast():
                logits = self._batched(self.params, xb)
            k, b = yb.shape
            losses = F.cross_entropy(logits.reshape(k * b, -1).float(), yb.reshape(-1), reduction="none")
            losses = losses.view(k, b).mean(1)
        else:
            with autocast():
                losses, logits = self._forward(self.params, self.buffers, xb, yb)
        names = list(self.params)
        params = [self.params[n] for n in names]
        grads = torch.autograd.grad(losses.sum(), params)
        with torch.no_grad():
            self._update(params, [self.momentum_buf[n] for n in names], grads, lrs)
        correct = (logits.detach().argmax(-1) == yb).sum(1)
        return losses.detach(), correct

    def _update(self, params: list, bufs: list, grads: tuple, lrs: torch.Tensor) -> None:
        """SGD with momentum and weight decay on every stacked tensor as foreach ops: g + wd * p,
        momentum * buf + g, p - lr_k * buf, the same arithmetic element for element on either path.

        Aligned (`self.aligned`; by default on CUDA only): every operand list is alike tensor by tensor,
        the parameters' sizes and strides, dense. That is the condition of CUDA's fused multi-tensor
        kernels (one launch per op for all tensors); one operand of another size or layout sends the
        whole list to a loop of per-tensor kernels, ~3 launches per tensor. So a gradient whose strides
        differ from its parameter's (a batched linear weight's: bmm's backward returns it transposed) is
        copied into the parameter's layout, and the lr operand is a tensor the parameter's size
        (`_lr_like`) instead of a broadcast (K, 1, ...) view. A CPU has no fused foreach kernels: there
        the copies only add memory traffic (a pack of 10 MLP 1x512 runs steps 0.90x as fast), so the
        CPU keeps the broadcast view and autograd's layouts (docs/PERFORMANCE.md)."""
        aligned = params[0].is_cuda if self.aligned is None else self.aligned
        if aligned:
            grads = [g if g.stride() == p.stride() else torch.empty_like(p).copy_(g) for g, p in zip(grads, params)]
            lr_operand = self._lr_like(params, lrs)
        else:
            lr_operand = [lrs.view(-1, *([1] * (p.dim() - 1))) for p in params]
        if self.weight_decay:  # in place: autograd.grad's fresh tensors (or their copies)
            torch._foreach_add_(grads, params, alpha=self.weight_decay)
        torch._foreach_mul_(bufs, self.momentum)
        torch._foreach_add_(bufs, grads)
        torch._foreach_addcmul_(params, lr_operand, bufs, value=-1.0)

    def _lr_like(self, params: list, lrs: torch.Tensor) -> list:
        """Each parameter's tensor of its members' learning rates (member k's slice all lr_k), in the
        parameter's layout; kept until set_lrs or keep changes the learning rates or the members."""
        if self._lrs_full is None:
            self._lrs_full = [torch.empty_like(p).copy_(lrs.view(-1, *([1] * (p.dim() - 1)))) for p in params]
        return self._lrs_full

    def member(self, k: int) -> nn.Module:
        """Member k as an ordinary module (a copy: for evaluation, checkpoints and summaries)."""
        state = {n: v[k].detach() for n, v in {**self.params, **self.buffers}.items()}
        self.template.load_state_dict(state)
        return self.template

    def optimizer_state(self, k: int, module: nn.Module, lr: float) -> dict:
        """Member k's momentum as an SGD state_dict for `module` (torch.optim.SGD's format: a single run
        resumes from it)."""
        opt = SGD(module.parameters(), lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        for (n, _), p in zip(module.named_parameters(), module.parameters()):
            opt.state[p] = {"momentum_buffer": self.momentum_buf[n][k].detach().clone()}
        return opt.state_dict()

    def load_member(self, k: int, model_state: dict, optimizer_state: dict, process: dict | None = None) -> None:
        """Put a run's checkpoint (single or packed: the same format) into slot k. The process's random
        state (`process`) is not the member's: packed runs have no dropout, nothing else draws from it."""
        module = self.template
        module.load_state_dict(model_state)
        opt = SGD(module.parameters(), lr=0.0, momentum=self.momentum)
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
        self._lrs_full = None


class Single:
    """One run as a pack of one: a plain module and the engine's optimizer behind Stacked's interface.

    The step is the plain loop's, op for op (forward under autocast, cross-entropy in fp32, zero_grad,
    backward, the fused SGD or Adam step), so a single run's numbers do not depend on the adapter. The
    process's random state belongs to the run (dropout draws from it): a resume restores it. The optimizer
    is SGD unless `optimizer` (a run's settings' `optimizer` and `adam`, optim.make_optimizer) says adam;
    Adam runs are always single (plan.packs: Stacked updates with SGD only)."""

    def __init__(
        self,
        model: nn.Module,
        momentum: float,
        weight_decay: float,
        lr: float,
        channels_last: bool = False,
        optimizer: dict | None = None,
    ):
        self.channels_last = channels_last
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        chosen = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, **(optimizer or {})}
        self.opt = make_optimizer(self.model.parameters(), chosen)

    def __len__(self) -> int:
        return 1

    def set_lrs(self, lrs: list[float]) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lrs[0]

    def step(self, xb: torch.Tensor, yb: torch.Tensor, autocast):
        """One optimizer step on the member's batch xb[0], yb[0]; returns (losses (1,), correct (1,))."""
        x, y = xb[0], yb[0]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.model.training:
            self.model.train()
        with autocast():
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach().reshape(1), (logits.detach().argmax(1) == y).sum().reshape(1)

    def member(self, k: int) -> nn.Module:
        return self.model

    def optimizer_state(self, k: int, module: nn.Module, lr: float) -> dict:
        return self.opt.state_dict()

    def load_member(self, k: int, model_state: dict, optimizer_state: dict, process: dict | None = None) -> None:
        from .run import set_rng_state

        self.model.load_state_dict(model_state)
        self.opt.load_state_dict(optimizer_state)
        if process is not None:
            set_rng_state(process, next(self.model.parameters()).device)

    def keep(self, members: list[int]) -> None:
        """A pack of one never shrinks: its loop ends with its run."""
