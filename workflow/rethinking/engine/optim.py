"""The engine's optimizers: SGD with momentum and weight decay, as torch.optim.SGD(fused=True) computes it,
and Adam (L2 weight decay, not AdamW's), as torch.optim.Adam(fused=True) does; `make_optimizer` picks one
from a run's settings (`training.optimizer`).

Why not torch.optim.SGD itself: the update is the same kernel (torch._fused_sgd_), but torch's Optimizer
imports torch._dynamo the first time one is built and stepped (its `_disable_dynamo` and `_use_grad`
wrappers), which costs about 1.2-1.4 s of every training process on the project's CPU, where a digits
run trains in a few seconds (`python benchmarks/optimizer_import.py` measures it). These classes call
the same kernels (torch._fused_sgd_, torch._fused_adam_) without that import.

Same update, same state_dict: `state_dict()` is the dict torch.optim.SGD writes (state keyed by the
parameter's position, one entry per param group with torch's keys), so checkpoints written by either
load into either. `load_state_dict` follows torch's rules (group and size checks, saved hyperparameters
win, buffers moved to the parameter's device and dtype) and also lays every momentum buffer (and Adam
moment) out like its parameter: a checkpoint of a pack or of a CPU run holds contiguous (NCHW) buffers
where a conv model on CUDA is channels_last, and the other way round, and the fused kernels pair
parameter, gradient and buffer by storage position (CUDA's refuses mismatched strides at the first
step, the CPU's silently updates each weight with another weight's momentum).

Dampening 0, no Nesterov, no maximize: the only SGD the pipeline trains with (docs/CHOICES.md). Adam:
no amsgrad, no maximize, weight decay added to the gradient (torch.optim.Adam's, decoupled_weight_decay
False); its state per parameter is torch's fused one: `step` (a float32 scalar on the parameter's
device), `exp_avg`, `exp_avg_sq`.
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


class _Fused:
    """What the engine's optimizers share: one param group, zero_grad, torch.optim's state_dict format."""

    def __init__(self, params, group: dict):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        self.param_groups = [{"params": params, **group}]
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.detach_().zero_()

    def _with_grad(self, g: dict) -> list:
        with_grad = [p for p in g["params"] if p.grad is not None]
        if any(p.grad.is_sparse for p in with_grad):
            raise RuntimeError(f"{type(self).__name__}: sparse gradients are not supported")
        return with_grad

    def state_dict(self) -> dict:
        """torch.optim's format: {"state": {position: {name: tensor}}, "param_groups": [...]}."""
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

    def _check_groups(self, groups: list) -> None:
        """torch's checks: as many groups, each of as many parameters."""
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


def _like(buf: torch.Tensor, p: torch.Tensor, what: str) -> torch.Tensor:
    """A saved buffer on p's device and dtype and in p's layout (see the module's docstring)."""
    if buf.shape != p.shape:
        raise ValueError(f"loaded {what} has shape {tuple(buf.shape)}, its parameter {tuple(p.shape)}")
    buf = buf.to(device=p.device, dtype=p.dtype)  # as torch: the saved tensor itself if it fits
    if buf.stride() != p.stride():
        buf = torch.empty_like(p).copy_(buf)  # p's layout, buf's values
    return buf


class SGD(_Fused):
    """SGD over `params` (one param group) with learning rate `lr`, `momentum` and L2 `weight_decay`:
    g = grad + weight_decay * p; buf = momentum * buf + g (buf = g at the first step); p -= lr * buf."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, **GROUP_DEFAULTS})

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            with_grad = self._with_grad(g)
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

    def load_state_dict(self, saved: dict) -> None:
        """Resume from a state torch.optim.SGD (fused or not) or this class wrote; stays fused."""
        groups = saved["param_groups"]
        self._check_groups(groups)
        state = {}
        for ours, theirs in zip(self.param_groups, groups):
            for p, i in zip(ours["params"], theirs["params"]):
                buf = saved["state"].get(i, {}).get("momentum_buffer")
                if buf is not None:
                    state[p] = {"momentum_buffer": _like(buf, p, f"momentum buffer {i}")}
            ours.update({k: v for k, v in theirs.items() if k != "params"}, fused=True, foreach=None)
        self.state = state


ADAM_GROUP_DEFAULTS = {
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": True,
    "decoupled_weight_decay": False,
}


class Adam(_Fused):
    """Adam over `params` (one param group) with learning rate `lr`, `betas`, `eps` and L2 `weight_decay`
    (torch.optim.Adam's, not AdamW's): g = grad + weight_decay * p; m = b1 m + (1 - b1) g;
    v = b2 v + (1 - b2) g^2; p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        b1, b2 = (float(b) for b in betas)
        super().__init__(
            params, {"lr": lr, "betas": (b1, b2), "eps": eps, "weight_decay": weight_decay, **ADAM_GROUP_DEFAULTS}
        )

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            with_grad = self._with_grad(g)
            for p in with_grad:
                if p not in self.state:  # torch's lazy state: step 0 (float32 on p's device), zero moments
                    self.state[p] = {
                        "step": torch.zeros((), dtype=torch.float32, device=p.device),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
            for params in _by_device_and_dtype(with_grad):
                states = [self.state[p] for p in params]
                steps = [st["step"] for st in states]
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(
                    params,
                    [p.grad for p in params],
                    [st["exp_avg"] for st in states],
                    [st["exp_avg_sq"] for st in states],
                    [],
                    steps,
                    amsgrad=False,
                    lr=g["lr"],
                    beta1=g["betas"][0],
                    beta2=g["betas"][1],
                    weight_decay=g["weight_decay"],
                    eps=g["eps"],
                    maximize=False,
                    grad_scale=None,
                    found_inf=None,
                )

    def load_state_dict(self, saved: dict) -> None:
        """Resume from a state torch.optim.Adam (fused, foreach or neither) or this class wrote; stays fused."""
        groups = saved["param_groups"]
        self._check_groups(groups)
        state = {}
        for ours, theirs in zip(self.param_groups, groups):
            for p, i in zip(ours["params"], theirs["params"]):
                st = saved["state"].get(i)
                if st:
                    if st.get("max_exp_avg_sq") is not None:
                        raise ValueError(f"loaded state {i} is amsgrad's; the engine's Adam has no amsgrad")
                    state[p] = {
                        "step": torch.as_tensor(st["step"]).to(dtype=torch.float32, device=p.device).reshape(()),
                        "exp_avg": _like(st["exp_avg"], p, f"exp_avg {i}"),
                        "exp_avg_sq": _like(st["exp_avg_sq"], p, f"exp_avg_sq {i}"),
                    }
            ours.update({k: v for k, v in theirs.items() if k != "params"}, fused=True, foreach=None)
            ours["betas"] = tuple(float(b) for b in ours["betas"])
        self.state = state


def make_optimizer(params, settings: dict):
    """The optimizer a run's settings (plan.settings.run_settings) ask for: SGD unless `optimizer` says adam
    (then `adam` holds betas and eps; momentum is not Adam's and is ignored)."""
    kind = settings.get("optimizer", "sgd")
    if kind == "sgd":
        return SGD(params, lr=settings["lr"], momentum=settings["momentum"], weight_decay=settings["weight_decay"])
    if kind == "adam":
        a = settings["adam"]
        return Adam(params, lr=settings["lr"], betas=a["betas"], eps=a["eps"], weight_decay=settings["weight_decay"])
    raise ValueError(f"optimizer {kind!r}: expected sgd or adam")


def _by_device_and_dtype(params: list) -> list[list]:
    """The fused kernel takes tensors of one device and dtype."""
    groups: dict = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    return list(groups.values())
