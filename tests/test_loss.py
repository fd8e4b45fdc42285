"""STAR-DSS loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from trainer_client.loss import (
    KLEstimator,
    RSNormalize,
    compute_loss,
    kl_per_token,
    rs_loss,
    sft_loss,
    star_dss_loss,
    target_logprobs,
)


def _setup() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    ref_logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 2, 3], [4, 0, 2]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    return logits, ref_logits, targets, mask


def _lp(logits: torch.Tensor, b: int, t: int, y: int) -> float:
    row = [float(x) for x in logits[b, t]]
    z = math.log(sum(math.exp(x) for x in row))
    return row[y] - z


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_dss_matches_hand_computation(est: KLEstimator) -> None:
    logits, ref_logits, targets, mask = _setup()
    w = torch.tensor([[0.9, 0.2, 0.5], [0.0, 0.7, 0.3]])
    out = star_dss_loss(logits, targets, mask, w, ref_logits=ref_logits, lambda_kl=0.5, estimator=est)
    total, n = 0.0, 0
    for b in range(2):
        for t in range(3):
            if not mask[b, t]:
                continue
            y = int(targets[b, t])
            lp, lq = _lp(logits, b, t, y), _lp(ref_logits, b, t, y)
            d = lp - lq
            kl = {"k1": d, "k2": 0.5 * d * d, "k3": math.exp(-d) - 1 + d}[est]
            wt = float(w[b, t])
            total += wt * (-lp) + (1 - wt) * 0.5 * kl
            n += 1
    assert out.label_tokens == n == 4
    assert float(out.loss) == pytest.approx(total / n, rel=1e-5)
    assert out.mean_star == pytest.approx((0.9 + 0.2 + 0.7 + 0.3) / 4)
    assert out.share_below_half == pytest.approx(2 / 4)


def test_full_vocab_kl() -> None:
    logits, ref_logits, targets, _ = _setup()
    kl = kl_per_token(
        target_logprobs(logits, targets), target_logprobs(ref_logits, targets), "full", logits, ref_logits
    )
    p = torch.softmax(logits[0, 0], -1)
    q = torch.softmax(ref_logits[0, 0], -1)
    assert float(kl[0, 0]) == pytest.approx(float((p * (p.log() - q.log())).sum()), rel=1e-5)
    assert float(kl.min()) >= 0.0


def test_weight_one_is_plain_ce() -> None:
    logits, ref_logits, targets, mask = _setup()
    ones = torch.ones(2, 3)
    out = star_dss_loss(logits, targets, mask, ones, ref_logits=ref_logits)
    ce = torch.nn.functional.cross_entropy(logits[mask.bool()], targets[mask.bool()])
    assert float(out.loss) == pytest.approx(float(ce), rel=1e-6)
    assert float(sft_loss(logits, targets, mask).loss) == pytest.approx(float(ce), rel=1e-6)


def test_weight_zero_is_pure_kl() -> None:
    logits, ref_logits, targets, mask = _setup()
    out = star_dss_loss(logits, targets, mask, torch.zeros(2, 3), ref_logits=ref_logits, lambda_kl=0.5)
    d = target_logprobs(logits, targets) - target_logprobs(ref_logits, targets)
    expect = float((0.5 * 0.5 * d.pow(2))[mask.bool()].mean())
    assert float(out.loss) == pytest.approx(expect, rel=1e-5)
    assert out.weighted_ce == 0.0
    # equal policies: zero KL and zero gradient
    same = star_dss_loss(logits, targets, mask, torch.zeros(2, 3), ref_logits=logits.clone())
    assert float(same.loss) == pytest.approx(0.0, abs=1e-7)


def test_masked_tokens_contribute_nothing() -> None:
    logits, ref_logits, targets, mask = _setup()
    w = torch.rand(2, 3)
    a = star_dss_loss(logits, targets, mask, w, ref_logits=ref_logits)
    logits2, ref2, w2, targets2 = logits.clone(), ref_logits.clone(), w.clone(), targets.clone()
    off = ~mask.bool()
    logits2[off] = 1e4
    ref2[off] = -1e4
    w2[off] = 0.0
    targets2[off] = -100
    b = star_dss_loss(logits2, targets2, mask, w2, ref_logits=ref2)
    assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-6)
    assert math.isfinite(float(b.loss))
    g = logits.clone().requires_grad_(True)
    star_dss_loss(g, targets, mask, w, ref_logits=ref_logits).loss.backward()
    assert g.grad is not None and float(g.grad[off].abs().sum()) == 0.0


def test_rs_drops_examples() -> None:
    logits, _, targets, mask = _setup()
    keep = torch.tensor([1.0, 0.0])
    out = rs_loss(logits, targets, mask, keep, normalize="kept")
    only0 = sft_loss(logits[:1], targets[:1], mask[:1])
    assert float(out.loss) == pytest.approx(float(only0.loss), rel=1e-6)
    none = rs_loss(logits, targets, mask, torch.zeros(2), normalize="kept")
    assert float(none.loss) == 0.0 and none.label_tokens == 0


def _rs_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vocabulary 4; a row [x, 0, 0, 0] with target 0 has CE = log(e^x + 3) - x, so x = log 3 gives
    CE = log 6 - log 3 = log 2, x = 0 gives log 4 and x = log 9 gives log 12 - log 9 = log(4/3).
    Example 0: label tokens with CE log 2 and log 4 (its third position is masked, CE log 4 there).
    Example 1: a masked first position, then label tokens with CE log(4/3) and log 4."""
    x = [[math.log(3), 0.0, 0.0], [0.0, math.log(9), 0.0]]
    logits = torch.zeros(2, 3, 4)
    logits[:, :, 0] = torch.tensor(x)
    targets = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    return logits, targets, mask


@pytest.mark.parametrize(
    ("keep", "norm", "expected", "tokens", "kept_share"),
    [
        # published: sum of the kept examples' CE / all 4 label tokens of the micro-batch
        ([1.0, 0.0], "all", (math.log(2) + math.log(4)) / 4, 4, 0.5),  # 3 log 2 / 4 = 0.5199
        ([0.0, 1.0], "all", (math.log(4 / 3) + math.log(4)) / 4, 4, 0.5),  # log(16/3) / 4 = 0.4185
        ([1.0, 1.0], "all", (math.log(2) + 2 * math.log(4) + math.log(4 / 3)) / 4, 4, 1.0),
        ([0.0, 0.0], "all", 0.0, 4, 0.0),
        # ours: the same sums / the kept examples' 2 label tokens
        ([1.0, 0.0], "kept", (math.log(2) + math.log(4)) / 2, 2, 1.0),  # 3 log 2 / 2 = 1.0397
        ([0.0, 1.0], "kept", (math.log(4 / 3) + math.log(4)) / 2, 2, 1.0),
        ([1.0, 1.0], "kept", (math.log(2) + 2 * math.log(4) + math.log(4 / 3)) / 4, 4, 1.0),
        ([0.0, 0.0], "kept", 0.0, 0, 1.0),
    ],
)
def test_rs_normalisation_by_hand(
    keep: list[float], norm: RSNormalize, expected: float, tokens: int, kept_share: float
) -> None:
    logits, targets, mask = _rs_batch()
    g = logits.clone().requires_grad_(True)
    out = compute_loss("rs", g, targets, mask, keep=torch.tensor(keep), rs_normalize=norm)
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert out.label_tokens == tokens and out.mean_star == pytest.approx(kept_share)
    out.loss.backward()  # a graph even when nothing is kept
    assert g.grad is not None
    dropped = [b for b, k in enumerate(keep) if k == 0.0]
    assert all(float(g.grad[b].abs().sum()) == 0.0 for b in dropped)


def test_rs_default_is_the_published_normalisation() -> None:
    logits, targets, mask = _rs_batch()
    keep = torch.tensor([1.0, 0.0])
    assert float(rs_loss(logits, targets, mask, keep).loss) == pytest.approx(3 * math.log(2) / 4)
    assert float(compute_loss("rs", logits, targets, mask, keep=keep).loss) == pytest.approx(
        3 * math.log(2) / 4
    )
    with pytest.raises(ValueError, match="rs normalisation"):
        rs_loss(logits, targets, mask, keep, normalize="some")  # type: ignore[arg-type]


def test_compute_loss_rejects_bad_input() -> None:
    logits, _, targets, mask = _setup()
    with pytest.raises(ValueError, match="unknown method"):
        compute_loss("ppo", logits, targets, mask)
    with pytest.raises(ValueError, match="reference"):
        compute_loss("dss", logits, targets, mask, weights=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="estimator"):
        kl_per_token(torch.zeros(1), torch.zeros(1), "k9")  # type: ignore[arg-type]
