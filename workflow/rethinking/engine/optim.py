"""The engine's optimizer: SGD with momentum and weight decay, as torch.optim.SGD(fused=True) computes it.

Why not torch.optim.SGD itself: the update is the same kernel (torch._fused_sgd_), but torch's Optimizer
imports torch._dynamo the first time one is built and stepped (its `_disable_dynamo` and `_use_grad`
wrappers), which costs about 1.2-1.4 s of every training process on the project's CPU, where a digits
run trains in a few seconds (`python benchmarks/optimizer_import.py` measures it). This class calls
the same kernel without that import.

Same update, same state_dict: `state_dict()` is the dict torch.optim.SGD writes (state keyed by the
parameter's position, one entry per param group with torch's keys), so checkpoints written by either
load into either. `load_state_dict` follows torch's rules (group and size checks, saved hyperparameters
win, buffers moved to the parameter's device and dtype) and also lays every momentum buffer out like
its parameter: a checkpoint of a pack or of a CPU run holds contiguous (NCHW) buffers where a conv model
on CUDA is channels_last, and the other way round, and the fused kernels pair parameter, gradient and
buffer by storage position (CUDA's refuses mismatched strides at the first step, the CPU's silently
updates each weight with another weight's momentum).

Dampening 0, no Nesterov, no maximize: the only SGD the pipeline trains with (docs/CHOICES.md).
"""

from __future__ import annotations

import torch

GROUP_DEFAULTS = {
    "dampening": 0,
    "nesterov": False,
    "maximize": False,
    "foreach": None,
    "differentiable": False,
    "fused": True,
}


class SGD:
    """SGD over `params` (one param group) with learning rate `lr`, `momentum` and L2 `weight_decay`:
    g = grad + weight_decay * p; buf = momentum * buf + g (buf = g at the first step); p -= lr * buf."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float = 0.0):
        params = list(params)
        if not params:
            raise ValueError("SGD got an empty parameter list")
        self.param_groups = [
            {"params": params, "lr": lr, "momentum": momentum, "weight_decay": weight_decay, **GROUP_DEFAULTS}
        ]
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            with_grad = [p for p in g["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in with_grad):
                raise RuntimeError("SGD: sparse gradients are not supported")
            hyper = {
                "weight_decay": g["weight_decay"],
                "momentum": g["momentum"],
                "lr": g["lr"],
                "dampening": g["dampening"],
                "nesterov": g["nesterov"],
                "maximize": g["maximize"],
                "grad_scale": None,
                "found_inf": None,
            }
            if g["momentum"] == 0:
                for params in _by_device_and_dtype(with_grad):
                    torch._fused_sgd_(params, [p.grad for p in params], [], is_first_step=False, **hyper)
                continue
            # torch's first step sets buf = g; a parameter without a buffer yet gets that (a resumed state
            # may hold buffers for some parameters only)
            fresh = [p for p in with_grad if "momentum_buffer" not in self.state.get(p, {})]
            going = [p for p in with_grad if "momentum_buffer" in self.state.get(p, {})]
            for first, part in ((True, fresh), (False, going)):
                for params in _by_device_and_dtype(part):
                    if first:
                        for p in params:
                            self.state.setdefault(p, {})["momentum_buffer"] = torch.empty_like(p.grad)
                    torch._fused_sgd_(
                        params,
                        [p.grad for p in params],
                        [self.state[p]["momentum_buffer"] for p in params],
                        is_first_step=first,
                        **hyper,
                    )

    def state_dict(self) -> dict:
        """torch.optim.SGD's format: {"state": {position: {"momentum_buffer": t}}, "param_groups": [...]}."""
        state, groups, i = {}, [], 0
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                if p in self.state:
                    state[i] = dict(self.state[p])
                ids.append(i)
                i += 1
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        """Resume from a state torch.optim.SGD (fused or not) or this class wrote; stays fused."""
        groups = saved["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(groups)} parameter groups, this optimizer has {len(self.param_groups)}"
            )
        for ours, theirs in zip(self.param_groups, groups):
            if len(ours["params"]) != len(theirs["params"]):
                raise ValueError(
                    f"loaded state dict has a group of {len(theirs['params'])} parameters where "
                    f"this optimizer's has {len(ours['params'])}"
                )
        state = {}
        for ours, theirs in zip(self.param_groups, groups):
            for p, i in zip(ours["params"], theirs["params"]):
                buf = saved["state"].get(i, {}).get("momentum_buffer")
                if buf is not None:
                    if buf.shape != p.shape:
                        raise ValueError(
                            f"loaded momentum buffer {i} has shape {tuple(buf.shape)}, its parameter {tuple(p.shape)}"
                        )
                    buf = buf.to(device=p.device, dtype=p.dtype)  # as torch: the saved tensor itself if it fits
                    if buf.stride() != p.stride():
                        buf = torch.empty_like(p).copy_(buf)  # p's layout, buf's values
                    state[p] = {"momentum_buffer": buf}
            ours.update({k: v for k, v in theirs.items() if k != "params"}, fused=True, foreach=None)
        self.state = state


def _by_device_and_dtype(params: list) -> list[list]:
    """The fused kernel takes tensors of one device and dtype."""
    groups: dict = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    return list(groups.values())
