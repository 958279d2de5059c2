"""RNN-T loss in plain torch: the log-space forward over the T x (U+1) lattice, one anti-diagonal at a time.

Why here: the demo trains without torchaudio or k2. alpha(t, u) is the log
probability of having emitted u labels after reaching frame t; it depends only
on alpha(t-1, u) (a blank at (t-1, u)) and alpha(t, u-1) (label u at (t, u-1)),
so every cell on the diagonal t + u = d is computed at once from diagonal d-1.
Padding cells (t >= T_n or u > U_n) are never read by valid ones, so a batch is
computed on the padded lattice and each utterance's loss is read at its own
(T_n - 1, U_n). Autograd gives the gradient. Blank is token 0.
"""
from __future__ import annotations

import torch

NEG = -1e30  # finite "log 0": logaddexp(-inf, -inf) would give NaN gradients


def rnnt_loss(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
              target_lengths: torch.Tensor, blank: int = 0, reduction: str = "mean") -> torch.Tensor:
    """logits (N, T, U+1, V) unnormalised; targets (N, U) int64; lengths (N,) -> loss (sum of -log p / N for mean)."""
    n, t_max, u1, _ = logits.shape
    lp = logits.float().log_softmax(dim=-1)
    blank_lp = lp[..., blank]  # (N, T, U+1)
    if u1 > 1:
        emit_lp = lp[:, :, :-1, :].gather(-1, targets[:, None, :u1 - 1, None].expand(n, t_max, u1 - 1, 1))[..., 0]
    else:
        emit_lp = lp.new_zeros(n, t_max, 0)
    # skew to (N, D, T): value at (d, t) is the cell (t, u = d - t); cells off the lattice get NEG
    d_max = t_max + u1 - 1
    t_idx = torch.arange(t_max, device=lp.device)
    u_idx = torch.arange(d_max, device=lp.device)[:, None] - t_idx[None, :]  # (D, T)

    def skew(x: torch.Tensor, width: int) -> torch.Tensor:
        valid = (u_idx >= 0) & (u_idx < width)
        idx = u_idx.clamp(0, max(width - 1, 0))
        if width == 0:
            return lp.new_full((n, d_max, t_max), NEG)
        g = x.gather(2, idx.t()[None].expand(n, t_max, d_max)).transpose(1, 2)  # (N, D, T): x[n, t, idx[d, t]]
        return torch.where(valid[None], g, torch.full_like(g, NEG))

    blank_s, emit_s = skew(blank_lp, u1), skew(emit_lp, u1 - 1)
    neg = lp.new_full((n, 1), NEG)
    alpha = [torch.cat([lp.new_zeros(n, 1), lp.new_full((n, t_max - 1), NEG)], dim=1)]  # d = 0: only (0, 0)
    for d in range(1, d_max):
        prev = alpha[-1]
        # from (t-1, u) by a blank: shift right along t; from (t, u-1) by label u-1: same t
        by_blank = torch.cat([neg, prev[:, :-1] + blank_s[:, d - 1, :-1]], dim=1)
        by_emit = prev + emit_s[:, d - 1]
        a = torch.logaddexp(by_blank, by_emit)
        valid = (u_idx[d] >= 0) & (u_idx[d] < u1)
        alpha.append(torch.where(valid[None], a, torch.full_like(a, NEG)))
    alpha_all = torch.stack(alpha, dim=1)  # (N, D, T)
    last_t = logit_lengths.long() - 1
    last_d = last_t + target_lengths.long()
    rows = torch.arange(n, device=lp.device)
    final = alpha_all[rows, last_d, last_t] + blank_s[rows, last_d, last_t]
    loss = -final
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def rnnt_loss_brute_force(logits: torch.Tensor, target: list[int], blank: int = 0) -> torch.Tensor:
    """-log p(target) for ONE utterance (T, U+1, V), summing over every alignment explicitly (tests only)."""
    import itertools

    lp = logits.float().log_softmax(dim=-1)
    t_len, u1, _ = lp.shape
    u_len = len(target)
    assert u1 == u_len + 1
    scores = []
    steps = t_len - 1 + u_len  # moves from (0, 0) to (T-1, U); then the final blank
    for emit_at in itertools.combinations(range(steps), u_len):
        t = u = 0
        s = lp.new_zeros(())
        emits = set(emit_at)
        for k in range(steps):
            if k in emits:
                s = s + lp[t, u, target[u]]
                u += 1
            else:
                s = s + lp[t, u, blank]
                t += 1
        scores.append(s + lp[t_len - 1, u_len, blank])
    return -torch.logsumexp(torch.stack(scores), dim=0)
