"""Linear + cross-entropy from hidden states, in chunks of tokens so the full logits never exist.

    loss = linear_cross_entropy(hidden, weight, labels)     # == F.cross_entropy(hidden @ weight.T)

Layout: `hidden` (..., d), `weight` (V, d) (the LM head), `labels` (...) int; the loss is the mean
over tokens whose label is not `ignore_index` (0 with zero gradients when every label is ignored,
where F.cross_entropy would give NaN). Label smoothing follows F.cross_entropy: with eps > 0 each
token's loss is (1 - eps) * nll + eps * mean over classes of -log p.

How the memory stays bounded: the forward walks the N tokens `chunk_size` rows at a time. For each
chunk it computes the (chunk, V) logits, turns them *in place* into d loss / d logits, and uses
them at once for the chunk's share of both gradients (d hidden = g @ W, d weight += g.T @ h), then
drops them. The backward only scales the stored gradients, in place, by the incoming scalar (so
it runs once: no retain_graph). The peak is one (chunk, V) fp32 buffer plus the (V, d) weight
gradient (accumulated in the weight's dtype, each chunk's addmm summing in fp32), never (N, V).

The per-chunk "logits -> loss and gradient" step has two implementations with one contract:
`_chunk_loss_torch` here (the reference, also what CPU runs) and a Triton row kernel in
`triton_cross_entropy` (one pass for the online log-sum-exp, one to write the gradient), picked by
`framelab.kernels.backends`. The matmuls are cuBLAS / MKL in both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from framelab.kernels.backends import use_triton


def linear_cross_entropy_reference(hidden, weight, labels, ignore_index: int = -100,
                                   label_smoothing: float = 0.0):
    logits = (hidden.reshape(-1, hidden.shape[-1]) @ weight.t()).float()
    return F.cross_entropy(logits, labels.reshape(-1), ignore_index=ignore_index,
                           label_smoothing=label_smoothing)


def _chunk_loss_torch(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                      smoothing: float, scale: torch.Tensor, compute_grad: bool) -> torch.Tensor:
    """Summed loss of a (C, V) fp32 logits chunk; overwrites `logits` with d(mean loss)/d logits
    (softmax - (1 - eps) * onehot - eps / V, times `scale` = 1 / n_valid, zero on ignored rows)."""
    V = logits.shape[1]
    valid = labels != ignore_index
    target = torch.where(valid, labels, 0)
    target_logit = logits.gather(1, target[:, None]).squeeze(1)
    mean_logit = logits.mean(1) if smoothing else None
    row_max = logits.amax(1, keepdim=True)
    probs = logits.sub_(row_max).exp_()  # in place: the chunk's only (C, V) buffer
    sum_exp = probs.sum(1)
    lse = sum_exp.log() + row_max.squeeze(1)
    loss = lse - target_logit
    if smoothing:
        loss = (1.0 - smoothing) * loss + smoothing * (lse - mean_logit)
    loss_sum = torch.where(valid, loss, 0.0).sum()
    if compute_grad:
        probs.div_(sum_exp[:, None])
        if smoothing:
            probs.sub_(smoothing / V)
        probs.scatter_add_(1, target[:, None], probs.new_full((len(target), 1), smoothing - 1.0))
        probs.mul_((valid.to(probs.dtype) * scale)[:, None])
    return loss_sum


class LinearCrossEntropyFunction(torch.autograd.Function):
    """(hidden (N, d), weight (V, d), labels (N,), ...) -> mean loss; grads computed in forward.

    The matmuls run in `compute_dtype` (hidden's dtype, or the autocast dtype when autocast is on;
    the caller turns autocast off around this); the gradients come back in each input's dtype."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, smoothing, chunk_size, compute_dtype,
                grad_hidden, grad_weight, triton_chunks):
        if triton_chunks:
            from framelab.kernels.triton_cross_entropy import chunk_loss_triton as chunk_loss
        else:
            chunk_loss = _chunk_loss_torch
        N = hidden.shape[0]
        h_all, w = hidden.to(compute_dtype), weight.to(compute_dtype)  # no copy when they match
        n_valid = (labels != ignore_index).sum()
        scale = 1.0 / n_valid.clamp(min=1).to(torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        dh = torch.empty_like(hidden) if grad_hidden else None
        dw = torch.zeros_like(weight) if grad_weight else None  # addmm sums each chunk in fp32
        compute_grad = grad_hidden or grad_weight
        for start in range(0, N, chunk_size):
            rows = slice(start, start + chunk_size)
            h = h_all[rows]
            logits = h @ w.t()
            if not triton_chunks:  # the kernel reads low precision itself; the torch path needs fp32
                logits = logits.float()
            total += chunk_loss(logits, labels[rows], ignore_index, smoothing, scale, compute_grad)
            if not compute_grad:
                continue
            g = logits.to(compute_dtype)
            if dh is not None:
                if dh.dtype == compute_dtype:
                    torch.mm(g, w, out=dh[rows])
                else:
                    dh[rows] = g @ w
            if dw is not None:
                if dw.dtype == compute_dtype:
                    dw.addmm_(g.t(), h)
                else:  # e.g. fp32 master weights under bf16 autocast
                    dw.add_(g.t() @ h)
            del logits, g
        # kept on ctx, not saved: they are results, scaled in place once by the backward
        ctx.grads = (dh, dw)
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy computes its gradients once, in forward; it "
                               "cannot be back-propagated twice (retain_graph)")
        dh, dw = ctx.grads
        ctx.grads = None
        if dh is not None:
            dh.mul_(grad_loss.to(dh.dtype))
        if dw is not None:
            dw.mul_(grad_loss.to(dw.dtype))
        return dh, dw, None, None, None, None, None, None, None, None


def linear_cross_entropy(hidden, weight, labels, ignore_index: int = -100,
                         label_smoothing: float = 0.0, chunk_size: int = 4096):
    """Mean cross-entropy over non-ignored tokens of `hidden @ weight.T` against `labels`."""
    if chunk_size < 1:
        raise ValueError(f"linear_cross_entropy: chunk_size must be >= 1, got {chunk_size}")
    d = hidden.shape[-1]
    h2 = hidden.reshape(-1, d).contiguous()
    y = labels.reshape(-1)
    if y.shape[0] != h2.shape[0]:
        raise ValueError(f"linear_cross_entropy: {h2.shape[0]} hidden rows but {y.shape[0]} labels")
    device_type = hidden.device.type
    compute_dtype = hidden.dtype
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    grad_on = torch.is_grad_enabled()
    triton_chunks = use_triton("linear_cross_entropy", hidden, weight)
    with torch.autocast(device_type, enabled=False):
        return LinearCrossEntropyFunction.apply(
            h2, weight.contiguous(), y.contiguous(), ignore_index, float(label_smoothing),
            chunk_size, compute_dtype, grad_on and hidden.requires_grad,
            grad_on and weight.requires_grad, triton_chunks)
