"""STAR-DSS, SFT and RS losses over label tokens (PAPER.md section 3).

Every function takes tensors already aligned by position: `logits[b, t]` predicts `targets[b, t]`
(use `shift_for_causal_lm` on model inputs first). `mask` is 1 on label tokens and 0 on prompt and
padding; masked positions contribute nothing to any term, whatever their weights or targets hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3", "full"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3", "full")
RSNormalize = Literal["all", "kept"]
RS_NORMALIZE: tuple[str, ...] = ("all", "kept")


@dataclass(frozen=True)
class LossOutput:
    """The loss to backpropagate plus detached statistics for the metrics log."""

    loss: torch.Tensor
    weighted_ce: float
    """sum(w * CE) / label tokens."""
    kl: float
    """Mean KL estimate over label tokens (0 when the method has no KL term)."""
    mean_star: float
    """Mean STAR weight over label tokens."""
    share_below_half: float
    """Share of label tokens whose weight is below 0.5."""
    label_tokens: int


def shift_for_causal_lm(
    logits: torch.Tensor, input_ids: torch.Tensor, *per_token: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Align next-token logits with their targets: drop the last logit and the first token of each input."""
    return (logits[:, :-1], input_ids[:, 1:], *(x[:, 1:] for x in per_token))


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position, in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)


def kl_per_token(
    logp_theta: torch.Tensor,
    logp_ref: torch.Tensor,
    estimator: KLEstimator = "k2",
    logits: torch.Tensor | None = None,
    ref_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-position KL(pi_theta || pi_ref) estimate.

    k1, k2 and k3 use only the target token's log-probs (`logp_theta`, `logp_ref`):
    k1 = log pi_theta - log pi_ref, k2 = 0.5 * (log pi_theta - log pi_ref)^2,
    k3 = exp(log pi_ref - log pi_theta) - 1 - (log pi_ref - log pi_theta).
    'full' is the exact KL over the vocabulary and needs both full logit tensors.
    """
    if estimator == "full":
        if logits is None or ref_logits is None:
            raise ValueError("the full-vocabulary KL needs the trainee's and the reference's logits")
        lp = torch.log_softmax(logits.float(), dim=-1)
        lq = torch.log_softmax(ref_logits.float(), dim=-1)
        return (lp.exp() * (lp - lq)).sum(-1)
    diff = logp_theta - logp_ref
    if estimator == "k1":
        return diff
    if estimator == "k2":
        return 0.5 * diff.pow(2)
    if estimator == "k3":
        return torch.exp(-diff) - 1.0 + diff
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


def star_dss_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    *,
    ref_logprobs: torch.Tensor | None = None,
    ref_logits: torch.Tensor | None = None,
    lambda_kl: float = 0.5,
    estimator: KLEstimator = "k2",
) -> LossOutput:
    """loss = sum over label tokens of [w CE + (1 - w) lambda_kl KL] / number of label tokens.

    `ref_logprobs` are the reference model's log-probs of the targets (enough for k1/k2/k3);
    `ref_logits` the reference's full logits (needed for 'full', and used to derive `ref_logprobs`).
    """
    m = mask.to(torch.float32)
    n = m.sum()
    denom = n.clamp_min(1.0)
    w = weights.to(torch.float32) * m
    logp = target_logprobs(logits, targets)
    ce = -logp
    ce_term = (torch.where(m > 0, ce, 0.0) * w).sum()
    kl_term = torch.zeros((), device=logits.device)
    kl_mean = 0.0
    if lambda_kl > 0:
        if ref_logprobs is None:
            if ref_logits is None:
                raise ValueError("STAR-DSS with lambda_kl > 0 needs reference log-probs or logits")
            ref_logprobs = target_logprobs(ref_logits, targets)
        kl = kl_per_token(logp, ref_logprobs.float(), estimator, logits, ref_logits)
        kl = torch.where(m > 0, kl, 0.0)
        kl_term = (kl * (1.0 - w) * m).sum() * lambda_kl
        kl_mean = float(kl.detach().sum() / denom)
    loss = (ce_term + kl_term) / denom
    return LossOutput(
        loss=loss,
        weighted_ce=float(ce_term.detach() / denom),
        kl=kl_mean,
        mean_star=float(w.sum() / denom),
        share_below_half=float(((weights < 0.5).float() * m).sum() / denom),
        label_tokens=int(n.item()),
    )


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> LossOutput:
    """Plain SFT: mean CE over label tokens (STAR-DSS with every weight 1)."""
    ones = torch.ones_like(targets, dtype=torch.float32)
    return star_dss_loss(logits, targets, mask, ones, lambda_kl=0.0)


def rs_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    keep: torch.Tensor,
    normalize: RSNormalize = "all",
) -> LossOutput:
    """Rejection sampling: CE on the label tokens of kept examples (`keep[b]` is 0 or 1), no KL.

    `normalize` picks the denominator:
    'all' (the published code's): the label tokens of the whole micro-batch, dropped examples included,
    i.e. STAR-DSS with weight 1 on kept and 0 on dropped examples and no KL; `mean_star` is then the
    share of label tokens kept and `label_tokens` counts all of them.
    'kept': the label tokens of the kept examples only, so the loss is their mean CE (SFT on the kept
    examples); `label_tokens` counts the kept ones.
    A batch with none kept gives a zero loss that still carries a graph, so every rank of a multi-GPU
    run steps together.
    """
    if normalize == "all":
        w = keep.to(torch.float32).view(-1, 1).expand(targets.shape)
        return star_dss_loss(logits, targets, mask, w, lambda_kl=0.0)
    if normalize != "kept":
        raise ValueError(f"unknown rs normalisation {normalize!r}; choose {' or '.join(RS_NORMALIZE)}")
    kept = mask.to(torch.float32) * keep.to(torch.float32).view(-1, 1)
    out = sft_loss(logits, targets, kept)
    if out.label_tokens == 0:
        return LossOutput(logits.sum() * 0.0, 0.0, 0.0, 1.0, 0.0, 0)
    return out


def compute_loss(
    method: str,
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    ref_logits: torch.Tensor | None = None,
    lambda_kl: float = 0.5,
    estimator: KLEstimator = "k2",
    rs_normalize: RSNormalize = "all",
) -> LossOutput:
    """Dispatch on the training method: 'sft', 'rs' (normalised as `rs_normalize`, see `rs_loss`) or
    'dss'."""
    if method == "sft":
        return sft_loss(logits, targets, mask)
    if method == "rs":
        if keep is None:
            raise ValueError("method 'rs' needs a keep flag per example")
        return rs_loss(logits, targets, mask, keep, rs_normalize)
    if method == "dss":
        if weights is None:
            raise ValueError("method 'dss' needs STAR weights per token")
        return star_dss_loss(
            logits,
            targets,
            mask,
            weights,
            ref_logprobs=ref_logprobs,
            ref_logits=ref_logits,
            lambda_kl=lambda_kl,
            estimator=estimator,
        )
    raise ValueError(f"unknown method {method!r}; choose sft, rs or dss")
