"""Exact one-step meta-gradients for sample reweighting, computed cheaply (shared by ``l2rw``,
``meta-reweight`` and ``mwnet``).

For a batch ``(x, y)`` with per-example losses ``l_i(theta)``, weights ``w`` and step size ``eta``, the virtual
SGD step is ``theta_hat(w) = theta - eta * grad_theta sum_i w_i l_i(theta) / B`` and the meta loss
``L_V(theta_hat)`` is the mean cross-entropy of a clean meta batch. The score of sample ``i`` is

    g_i := -dL_V(theta_hat(w))/dw_i = (eta / B) * grad L_V(theta_hat)^T grad l_i(theta).

It needs no second-order autograd (``docs/methods.md``, "Exact meta-gradient"):

1. :func:`virtual_params`: ``theta_hat`` by one ordinary backward of ``sum_i w_i l_i / B`` through the step's
   forward (``theta_hat = theta`` for L2RW's ``w = 0``, no backward);
2. :func:`meta_gradient`: ``u = grad L_V(theta_hat)`` by one ordinary backward on the meta batch;
3. all ``B`` inner products ``grad l_i(theta)^T u`` from ONE forward-mode pass, the directional derivative of
   the per-example loss vector ``l(theta)`` along ``u``: either :func:`loss_jvp` (a full forward-mode pass) or,
   inside a training step, :meth:`RecordedForward.loss_tangent`, which propagates only the tangents through the
   activations of the step's own forward (the primal half of the pass is that forward, already paid for).

:func:`meta_scores` chains the three. ``reference_meta_loss`` in ``tests/meta_reference.py`` builds
``L_V(theta_hat(w))`` with the whole graph through the virtual step, so that double backward gives the same
quantities the slow, obvious way; it is the ground truth for the tests and is not part of the package. The
methods' base class, :class:`~nlbench.methods.meta_batch.MetaBatchMethod`, is in :mod:`nlbench.methods.meta_batch`;
this module is autodiff only.

Choices nlbench makes here (not fixed by the papers):

- ``theta`` is every parameter with ``requires_grad``; the virtual step is plain SGD without momentum or weight
  decay, as in the official L2RW and MW-Net code.
- BatchNorm: the meta pass and :func:`loss_jvp` run with the running statistics *frozen*: each ``_BatchNorm``
  module is switched to ``track_running_stats=False`` for the pass (:func:`frozen_batchnorm_stats`). In
  training mode it then normalises with the batch statistics, exactly as a pass on copies of the running-stat
  buffers would, but never writes ``running_mean``, ``running_var`` or ``num_batches_tracked`` (in-place buffer
  updates inside forward-mode transforms fail, and meta passes must not move the statistics). The virtual step
  and the tangents reuse the real step's forward, which updates the statistics once, as ERM's does. In eval
  mode the running statistics are read as usual.
- The forward-mode pass uses :mod:`torch.autograd.forward_ad` (dual tensors through
  :func:`torch.func.functional_call`) rather than the :func:`torch.func.jvp` wrapper: the same engine and the
  same single pass without functorch's per-op wrapping, which cost 15-25 % of the pass on two CPU cores.
- Cheaper tangent rules than PyTorch's generic ones where they matter (:func:`_bn_train_tangent` for
  training-mode batch norm: PyTorch's materialises about ten activation-sized temporaries and made the pass of
  a BatchNorm network ~1.5x slower; no wasted convolution of the first layer's all-zero input tangent).

Measured on a shared 2-core CPU (1 thread, process CPU time, ResNet-32, B = 100), in units of one ERM step
(forward + backward): a full forward-mode pass (:func:`loss_jvp`) 0.95-1.0, the tangent replay on a recorded
forward 0.7-0.8, the meta pass 1.0-1.1. Whole steps: ``benchmarks/test_step_cost.py``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

__all__ = ["RecordedForward", "frozen_batchnorm_stats", "loss_jvp", "meta_gradient", "meta_scores",
           "per_example_losses", "trainable_params", "virtual_params"]


def trainable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """``theta``: the model's parameters that require gradients, by name."""
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers of ``model`` never update their running statistics.

    Training-mode layers normalise with the batch statistics (their output is unchanged); eval-mode layers use
    the running statistics as always. The modules' ``track_running_stats`` flags are restored on exit.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def per_example_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row, shape ``(B,)``, in at least float32 (logits may be bf16 under autocast)."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return F.cross_entropy(logits, y, reduction="none")


def virtual_params(model: nn.Module, losses: torch.Tensor, weights: torch.Tensor | None, eta: float, *,
                   retain_graph: bool = True) -> dict[str, torch.Tensor]:
    """``theta_hat = theta - eta * grad_theta sum_i w_i l_i / B``, detached.

    ``losses`` ``(B,)`` must carry the graph to the parameters of ``model`` (a forward at ``theta``);
    ``weights`` ``(B,)`` are treated as constants. With ``weights=None`` (all zero, L2RW), ``theta_hat = theta``
    and no backward runs. ``retain_graph`` keeps the graph of ``losses`` for the real step that reuses it.
    """
    params = trainable_params(model)
    if weights is None or not params:
        return {k: p.detach() for k, p in params.items()}
    obj = (weights.detach().to(losses.dtype) * losses).sum() / losses.shape[0]
    grads = torch.autograd.grad(obj, list(params.values()), retain_graph=retain_graph, allow_unused=True)
    pairs = zip(params.items(), grads, strict=True)
    return {k: p.detach() if g is None else p.detach() - eta * g for (k, p), g in pairs}


def meta_gradient(model: nn.Module, x_meta: torch.Tensor, y_meta: torch.Tensor,
                  params: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``u = grad_theta L_V`` at ``params`` (default: the model's own parameters), by one ordinary backward.

    ``L_V`` is the mean cross-entropy of the (model-ready) meta batch; BatchNorm running statistics are frozen.
    Returns detached gradients keyed like :func:`trainable_params` (zeros for parameters ``L_V`` does not reach).
    """
    params = trainable_params(model) if params is None else params
    leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    if not leaves:
        return {}
    with torch.enable_grad(), frozen_batchnorm_stats(model):
        loss = per_example_losses(functional_call(model, leaves, (x_meta,)), y_meta).mean()
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(leaves.items(), grads, strict=True)}


def _bn_train_tangent(x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, weight: torch.Tensor | None,
                      x_t: torch.Tensor | None, w_t: torch.Tensor | None, b_t: torch.Tensor | None) -> torch.Tensor:
    """Tangent of training-mode batch norm ``y = weight * (x - mean) * invstd + bias`` (batch statistics).

    With ``xh = (x - mean) * invstd`` and ``s = weight * invstd`` per channel, the tangent
    ``dy = s * (dx - mean(dx)) - s * mean(dx * xh) * xh + dweight * xh + dbias`` is rewritten as
    ``s * dx + c1 * x + c0`` with per-channel ``c1, c0``: two reductions and two fused passes, without
    materialising ``xh``. PyTorch's generic rule materialises about ten activation-sized temporaries.
    """
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    n = x.numel() // x.shape[1]
    mean, invstd = mean.view(shape), invstd.view(shape)
    s = invstd if weight is None else weight.view(shape) * invstd
    c1 = torch.zeros_like(s) if w_t is None else w_t.view(shape) * invstd  # dweight * xh = c1 * x - c1 * mean
    c0 = -c1 * mean if b_t is None else b_t.view(shape) - c1 * mean
    if x_t is None:
        return torch.addcmul(c0.to(x.dtype), x, c1.to(x.dtype))
    mean_t = x_t.sum(dims, keepdim=True) / n
    dot = ((x_t * x).sum(dims, keepdim=True) / n - mean * mean_t) * invstd  # mean(dx * xh)
    k = s * dot * invstd  # -s * mean(dx * xh) * xh = -k * x + k * mean
    c1 = c1 - k
    c0 = c0 + k * mean - s * mean_t
    return torch.addcmul(c0.to(x.dtype), x_t, s.to(x.dtype)).addcmul_(x, c1.to(x.dtype))


class _BatchNormJVP(torch.autograd.Function):
    """Training-mode batch norm (batch statistics, no running stats) with :func:`_bn_train_tangent` as its
    forward-mode rule; the primal is PyTorch's fused kernel. Only used inside :func:`loss_jvp` (no reverse
    rule)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_forward(x, mean, invstd, weight)
        return out

    @staticmethod
    def jvp(ctx, x_t, w_t, b_t, _eps_t):
        return _bn_train_tangent(*ctx.saved_tensors, x_t, w_t, b_t)

    @staticmethod
    def backward(ctx, *grads):  # pragma: no cover - the forward-mode pass runs under no_grad
        raise RuntimeError("_BatchNormJVP has no reverse-mode rule; it is only used inside loss_jvp")


class _ConstInputJVP(torch.autograd.Function):
    """``fn(x, weight, bias, *args)`` for a layer linear in ``(weight, bias)`` whose input ``x`` has no tangent.

    The tangent is ``fn(x, dweight, None, *args) + dbias``. PyTorch's generic rule would also run ``fn`` on an
    all-zero input tangent: one wasted convolution in the first layer, the largest one in LeNet.
    """

    @staticmethod
    def forward(ctx, fn, x, weight, bias, *args):
        ctx.save_for_forward(x)
        ctx.fn, ctx.args = fn, args
        return fn(x, weight, bias, *args)

    @staticmethod
    def jvp(ctx, _fn_t, _x_t, w_t, b_t, *_args_t):
        (x,) = ctx.saved_tensors
        out = ctx.fn(x, w_t, None, *ctx.args)
        if b_t is None:
            return out
        return out + (b_t if ctx.fn is F.linear else b_t.view(1, -1, *[1] * (out.dim() - 2)))

    @staticmethod
    def backward(ctx, *grads):  # pragma: no cover - the forward-mode pass runs under no_grad
        raise RuntimeError("_ConstInputJVP has no reverse-mode rule; it is only used inside loss_jvp")


_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_LINEAR_IN_PARAMS = (F.linear, F.conv1d, F.conv2d, F.conv3d)  # fn(input, weight, bias, *args)


def _has_tangent(t) -> bool:
    return isinstance(t, torch.Tensor) and fwAD.unpack_dual(t).tangent is not None


class _LeanJVPRules(TorchFunctionMode):
    """Cheaper forward-mode rules for the JVP pass: training-mode ``F.batch_norm`` without running statistics
    goes to :class:`_BatchNormJVP`; linear layers and convolutions whose input carries no tangent (the first
    layer) go to :class:`_ConstInputJVP`. Everything else runs unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            a = {**dict(zip(_BN_ARGS, args, strict=False)), **kwargs}
            weight, bias = a.get("weight"), a.get("bias")
            if a.get("training") and a.get("running_mean") is None and (weight is None) == (bias is None):
                return _BatchNormJVP.apply(a["input"], weight, bias, a.get("eps", 1e-5))
        elif func in _LINEAR_IN_PARAMS and not kwargs and len(args) >= 2 and not _has_tangent(args[0]) \
                and _has_tangent(args[1]):
            x, weight, bias, *rest = (*args, None) if len(args) == 2 else args
            return _ConstInputJVP.apply(func, x, weight, bias, *rest)
        return func(*args, **kwargs)


def loss_jvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             tangent: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example losses at ``theta`` and their directional derivatives ``grad l_i(theta)^T tangent``.

    One forward-mode pass (dual numbers) of the model on ``x`` (model-ready) with every parameter named in
    ``tangent`` carrying its tangent; BatchNorm running statistics are frozen. Returns two detached ``(B,)``
    tensors ``(l, dl)``. The pass needs roughly the time of one forward plus one backward.
    """
    params = trainable_params(model)
    with torch.no_grad(), frozen_batchnorm_stats(model), _LeanJVPRules(), fwAD.dual_level():
        duals = {k: fwAD.make_dual(p.detach(), tangent[k].to(p.dtype)) for k, p in params.items() if k in tangent}
        losses = per_example_losses(functional_call(model, duals, (x,)), y)
        primal, tan = fwAD.unpack_dual(losses)
    if tan is None:  # no parameter reaches the loss
        tan = torch.zeros_like(primal)
    return primal, tan


# ------------------------------------------------------------------------------------------------------------
# Forward-mode tangents from a recorded forward (no second forward pass)
#
# The recorder sees every torch-level call of the forward. Each op's tensor inputs are resolved to *slots* when
# the op runs (a slot is the op output or parameter that tensor object is), so the replay needs no reference to
# intermediate tensors: an op keeps only what its tangent rule reads (the conv input, the ReLU output, pooling
# indices), which autograd saves for the backward anyway. Holding every activation (and, in the replay, every
# tangent until the end) raised the peak memory and, with it, the page faults of the following passes enough to
# cost ~10 % of a ResNet-32 step on the CPU.


def _tensors(args) -> Iterator[torch.Tensor]:
    """Tensors among ``args`` and inside nested lists/tuples (as in ``torch.cat``), depth first, in order."""
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from _tensors(a)


@dataclass(slots=True)
class _Op:
    rule: Callable
    ins: tuple  # input slots (None: no tangent can flow in), in the order the rule expects
    outs: tuple  # output slots
    func: Any = None
    keep: Any = None  # what the rule reads besides tangents


def _rule_fallback(op: _Op, tin: list) -> list:
    """Any op: re-run it once on dual numbers built from the kept primal inputs (exact; costs that op)."""
    args, kwargs = op.keep
    it = iter(tin)

    def dual(a):
        if isinstance(a, torch.Tensor):
            t = next(it)
            return a if t is None else fwAD.make_dual(a, t.to(a.dtype))
        if isinstance(a, (list, tuple)):
            return type(a)(dual(b) for b in a)
        return a

    with fwAD.dual_level():
        args = [dual(a) for a in args]
        kwargs = {k: dual(v) for k, v in kwargs.items()}
        res = op.func(*args, **kwargs)
        res = [res] if isinstance(res, torch.Tensor) else res
        return [fwAD.unpack_dual(r).tangent for r in res]


def _rule_linear_layer(op: _Op, tin: list) -> list:
    """``F.linear`` / ``F.convNd(x, W, b, *rest)``: bilinear in ``(x, W)``, linear in ``b``."""
    x, w, rest, bias_view, shape = op.keep
    tx, tw, tb = tin
    t = None if tx is None else op.func(tx, w, None, *rest)
    if tw is not None:
        tw_x = op.func(x, tw, None, *rest)
        t = tw_x if t is None else t.add_(tw_x)
    if tb is not None:
        tb = tb.view(bias_view)
        t = tb.expand(shape) if t is None else t.add_(tb)
    return [t]


def _rule_batch_norm(op: _Op, tin: list) -> list:
    x, weight, mean, invstd = op.keep
    return [_bn_train_tangent(x, mean, invstd, weight, *tin)]


def _rule_relu(op: _Op, tin: list) -> list:
    return [torch.ops.aten.threshold_backward(tin[0], op.keep, 0)]


def _rule_max_pool2d(op: _Op, tin: list) -> list:
    idx = op.keep
    return [tin[0].flatten(2).gather(2, idx.flatten(2)).view(idx.shape)]


def _rule_unary_linear(op: _Op, tin: list) -> list:
    """Ops linear in their first argument (shape ops, indexing, average pooling, sums, zero padding)."""
    rest, kwargs = op.keep
    return [op.func(tin[0], *rest, **kwargs)]


def _rule_add(op: _Op, tin: list) -> list:
    shape, alpha = op.keep  # out = a + alpha * b
    ta, tb = tin
    t = ta if tb is None else (tb * alpha if ta is None else ta + tb * alpha)
    return [t if t.shape == shape else t.expand(shape)]


def _rule_mul(op: _Op, tin: list) -> list:
    a, b, shape = op.keep
    ta, tb = tin
    t = None if ta is None else ta * b
    if tb is not None:
        t = a * tb if t is None else t + a * tb
    return [t if t.shape == shape else t.expand(shape)]


def _rule_cat(op: _Op, tin: list) -> list:
    metas, rest, kwargs = op.keep
    parts = [torch.zeros(s, dtype=d, device=dev) if t is None else t for t, (s, d, dev) in zip(tin, metas, strict=True)]
    return [op.func(parts, *rest, **kwargs)]


_T = torch.Tensor
_ADD = {torch.add, _T.add, _T.__add__, _T.__radd__}
_SUB = {torch.sub, _T.sub, _T.__sub__, torch.subtract}
_MUL = {torch.mul, _T.mul, _T.__mul__, _T.__rmul__, torch.multiply}
_UNARY_LINEAR = {
    _T.__getitem__, _T.view, _T.reshape, torch.reshape, _T.flatten, torch.flatten, _T.contiguous, _T.permute,
    torch.permute, _T.transpose, torch.transpose, _T.squeeze, torch.squeeze, _T.unsqueeze, torch.unsqueeze,
    _T.mean, torch.mean, _T.sum, torch.sum, _T.neg, torch.neg, _T.__neg__, _T.expand, _T.view_as, _T.reshape_as,
    _T.expand_as, _T.clone, torch.clone, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
}
_INPLACE_DUNDERS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__ipow__", "__iand__",
                    "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__setitem__"}
_STOCHASTIC = ("dropout", "rrelu", "gumbel")
_BN_NAMES = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_POOL_NAMES = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


@functools.cache
def _inplace_arg(func) -> int | None:
    """Position of the ``inplace`` parameter of ``func`` (``torch.nn.functional`` activations), else ``None``."""
    try:
        params = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):  # builtins without a signature
        return None
    return params.index("inplace") if "inplace" in params else None


def _zero_padding(args, kwargs) -> bool:
    """``F.pad`` call that pads with the constant 0 (linear in the input)."""
    mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
    value = kwargs.get("value", args[3] if len(args) > 3 else None)
    return mode == "constant" and not value


class _Recorder(TorchFunctionMode):
    """Records the torch-level calls of one forward so that tangents can be propagated through them later.

    Training-mode batch norm is run as ``torch.native_batch_norm`` (to keep the batch statistics) and max
    pooling with indices; functional in-place activations (``nn.ReLU(inplace=True)``) run out of place, so the
    tensors a rule keeps hold their values. Any other in-place write to a tensor of the record, or a stochastic
    op (dropout) that a replay could not reproduce, marks the record invalid, and :class:`RecordedForward` falls
    back to a separate forward-mode pass.
    """

    def __init__(self, params: dict[str, torch.Tensor]):
        super().__init__()
        self.ops: list[_Op] = []
        self.slot_of: dict[int, tuple[int, weakref.ref]] = {}
        self.param_slots: dict[str, int] = {}
        self.n_slots = 0
        self.valid = True
        for name, p in params.items():
            self.param_slots[name] = self._new_slot(p)

    def _new_slot(self, t: torch.Tensor) -> int:
        self.slot_of[id(t)] = (self.n_slots, weakref.ref(t))
        self.n_slots += 1
        return self.n_slots - 1

    def slot(self, t) -> int | None:
        """The slot of tensor object ``t``, or ``None`` if no recorded op made it (a constant: no tangent)."""
        if not isinstance(t, torch.Tensor):
            return None
        entry = self.slot_of.get(id(t))
        return entry[0] if entry is not None and entry[1]() is t else None

    def _add(self, rule, ins, out, func=None, keep=None):
        ins = tuple(self.slot(t) for t in ins)
        if any(s is not None for s in ins):  # ops no tangent can reach are left out of the replay
            outs = tuple(self._new_slot(o) for o in ([out] if isinstance(out, torch.Tensor) else out))
            self.ops.append(_Op(rule, ins, outs, func, keep))
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.valid:
            return func(*args, **kwargs)
        if func is F.relu:
            x = args[0] if args else kwargs["input"]
            out = F.relu(x)  # out of place even for inplace=True: the module returns the result
            return self._add(_rule_relu, (x,), out, keep=out)
        if func is F.batch_norm:
            a = {**dict(zip(_BN_NAMES, args, strict=False)), **kwargs}
            if a.get("training"):
                x, w, b = a["input"], a.get("weight"), a.get("bias")
                F._verify_batch_size(x.size())
                out, mean, invstd = torch.native_batch_norm(x, w, b, a.get("running_mean"), a.get("running_var"),
                                                            True, a.get("momentum", 0.1), a.get("eps", 1e-5))
                return self._add(_rule_batch_norm, (x, w, b), out, keep=(x, w, mean, invstd))
        if func is F.max_pool2d:
            a = {**dict(zip(_POOL_NAMES, args, strict=False)), **kwargs}
            if not a.pop("return_indices", False) and a["input"].dim() == 4:
                x = a.pop("input")
                out, idx = F.max_pool2d_with_indices(x, **a)
                return self._add(_rule_max_pool2d, (x,), out, keep=idx)
        name = getattr(func, "__name__", "")
        if any(s in name for s in _STOCHASTIC) and kwargs.get("training", args[2] if len(args) > 2 else True) \
                and (kwargs.get("p", args[1] if len(args) > 1 else 0.5) or 0) > 0:
            self.valid = False
            return func(*args, **kwargs)
        flag = _inplace_arg(func)
        if flag is not None and (kwargs.get("inplace") or (len(args) > flag and args[flag] is True)):
            # functional ``inplace=True`` (activations, dropout): run out of place, the module returns the result
            if len(args) > flag:
                args = (*args[:flag], False, *args[flag + 1:])
            else:
                kwargs = {**kwargs, "inplace": False}
        elif (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS:
            if args and self.slot(args[0]) is not None:
                self.valid = False  # a tensor of the record changes value: the replay would read the new one
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            if any(out is t for t in _tensors(args)):  # returned an input unchanged (in-place writes are above)
                return out
            return self._record(func, args, kwargs, out)
        if isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
            return self._add(_rule_fallback, (*_tensors(args), *_tensors(kwargs.values())), out, func,
                             (args, kwargs))
        return out

    def _record(self, func, args, kwargs, out):
        if func in _LINEAR_IN_PARAMS and not kwargs and len(args) >= 2:
            x, w, b, *rest = (*args, None) if len(args) == 2 else args
            view = (-1,) if func is F.linear else (1, -1, *[1] * (out.dim() - 2))
            return self._add(_rule_linear_layer, (x, w, b), out, func, (x, w, rest, view, out.shape))
        linear = func in _UNARY_LINEAR or (func is F.pad and _zero_padding(args, kwargs))
        if linear and args and isinstance(args[0], torch.Tensor) \
                and not any(True for _ in _tensors((*args[1:], *kwargs.values()))):
            return self._add(_rule_unary_linear, (args[0],), out, func, (args[1:], kwargs))
        if (func in _ADD or func in _SUB) and len(args) == 2 and set(kwargs) <= {"alpha"}:
            sign = -1.0 if func in _SUB else 1.0
            return self._add(_rule_add, args, out, func, (out.shape, sign * kwargs.get("alpha", 1)))
        if func is _T.__rsub__ and len(args) == 2 and not kwargs:  # out = b - a
            return self._add(_rule_add, (args[1], args[0]), out, func, (out.shape, -1.0))
        if func in _MUL and len(args) == 2 and not kwargs:
            return self._add(_rule_mul, args, out, func, (args[0], args[1], out.shape))
        if func is torch.cat and args and isinstance(args[0], (list, tuple)):
            metas = [(t.shape, t.dtype, t.device) for t in args[0]]
            return self._add(_rule_cat, args[0], out, func, (metas, args[1:], kwargs))
        return self._add(_rule_fallback, (*_tensors(args), *_tensors(kwargs.values())), out, func, (args, kwargs))


class RecordedForward:
    """``model(x)``, recorded so that directional derivatives of its output along parameter tangents can be
    computed later from the saved activations, without a second forward pass.

    Run it in place of the step's ordinary forward: ``rec = RecordedForward(model, x)``; ``rec.output`` is the
    model output with its autograd graph (BatchNorm statistics move as in any training forward). Later,
    :meth:`loss_tangent` gives ``grad l_i(theta)^T u`` for every sample, exactly what :func:`loss_jvp` computes,
    at the cost of the tangent half of a forward-mode pass only. The parameters must not change in between.

    Tangent rules exist for convolutions, linear layers, training-mode batch norm, ReLU, max pooling, sums,
    products, concatenation and shape/pooling ops; any other op is replayed on dual numbers (exact, at the cost
    of that op). If the forward writes in place into a recorded tensor or uses dropout, the record is invalid and
    :meth:`loss_tangent` runs :func:`loss_jvp` instead (``valid`` tells which).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor):
        self.model, self.x = model, x
        rec = _Recorder(trainable_params(model))
        with rec:
            self.output = model(x)
        self.valid = rec.valid and isinstance(self.output, torch.Tensor)
        self._ops = rec.ops if self.valid else []
        self._param_slots, self._n_slots = rec.param_slots, rec.n_slots
        self._out_slot = rec.slot(self.output) if self.valid else None
        # free each tangent after its last reader: the replay then holds about one layer's tangents, not all
        last: dict[int, int] = {}
        for i, op in enumerate(self._ops):
            last.update((s, i) for s in op.ins if s is not None)
        self._frees = [[] for _ in self._ops]
        for s, i in last.items():
            if s != self._out_slot:
                self._frees[i].append(s)

    def output_tangent(self, tangent: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Tangent of :attr:`output` along the parameter tangents ``tangent`` (keyed by parameter name);
        ``None`` if no parameter reaches the output. Only for a ``valid`` record."""
        if not self.valid:
            raise RuntimeError("this forward could not be recorded; use loss_jvp")
        tan: list[torch.Tensor | None] = [None] * self._n_slots
        for name, s in self._param_slots.items():
            tan[s] = tangent.get(name)
        with torch.no_grad():
            for op, frees in zip(self._ops, self._frees, strict=True):
                tin = [None if s is None else tan[s] for s in op.ins]
                if any(t is not None for t in tin):
                    for s, t in zip(op.outs, op.rule(op, tin), strict=True):
                        tan[s] = t
                del tin
                for s in frees:
                    tan[s] = None
        return None if self._out_slot is None else tan[self._out_slot]

    def loss_tangent(self, y: torch.Tensor, tangent: dict[str, torch.Tensor]) -> torch.Tensor:
        """``grad l_i(theta)^T tangent`` for the cross-entropy of every sample, ``(B,)``, detached."""
        if not self.valid:
            return loss_jvp(self.model, self.x, y, tangent)[1]
        t = self.output_tangent(tangent)
        logits = self.output.detach()
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        if t is None:
            return torch.zeros(len(y), dtype=logits.dtype, device=logits.device)
        t = t.to(logits.dtype)
        # d CE_i = sum_c (softmax_ic - onehot_ic) * dz_ic
        return (torch.softmax(logits, 1) * t).sum(1) - t.gather(1, y[:, None]).squeeze(1)


def meta_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_meta: torch.Tensor, y_meta: torch.Tensor,
                eta: float, weights: torch.Tensor | None = None, *,
                forward: RecordedForward | None = None) -> torch.Tensor:
    """Exact scores ``g_i = -dL_V(theta_hat(w))/dw_i = (eta/B) grad L_V(theta_hat)^T grad l_i(theta)``, ``(B,)``.

    ``x`` and ``x_meta`` must be model-ready (normalised). ``weights`` ``(B,)`` are the current weights of the
    virtual step (``None`` = all zero, L2RW's ``theta_hat = theta``). ``forward`` may pass the caller's
    :class:`RecordedForward` of ``model`` on ``x`` at ``theta`` (its graph is retained for the caller's real
    step, and its activations give the tangents); otherwise a forward runs here with frozen BatchNorm
    statistics. The model's parameters, gradients and BatchNorm statistics are left untouched. Costs one
    forward, one backward (virtual step; only for non-zero ``weights``), one forward + backward on the meta
    batch and the tangent half of a forward-mode pass.
    """
    if forward is None:
        with torch.enable_grad() if weights is not None else torch.no_grad(), frozen_batchnorm_stats(model):
            forward = RecordedForward(model, x)
    params = None
    if weights is not None:
        params = virtual_params(model, per_example_losses(forward.output, y), weights, eta)
    u = meta_gradient(model, x_meta, y_meta, params)
    return forward.loss_tangent(y, u) * (eta / x.shape[0])
