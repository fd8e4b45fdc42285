"""One verdict reader for the local engine and the remote backends (they used to disagree: the remote
path searched the whole answer for categories, the local one only the lines after the verdict)."""

from __future__ import annotations

import math

import pytest

from scorer_server.backends import remote
from scorer_server.engine import engine
from scorer_server.guards.presets import get_preset
from scorer_server.guards.verdict import read_verdict


def test_categories_are_read_after_the_verdict_line_only() -> None:
    preset = get_preset("llama-guard-3")
    v = read_verdict(1.0 / (1.0 + math.exp(3.0)), "unsafe S3\nS1,S10,S1", preset)
    assert v.unsafe and v.categories == ("S1", "S10") and v.text == "unsafe S3\nS1,S10,S1"
    assert v.p_unsafe == pytest.approx(1.0 / (1.0 + math.exp(-3.0)))
    assert read_verdict(0.1, "unsafe S3", preset).categories == ()


def test_a_safe_verdict_names_no_category() -> None:
    v = read_verdict(0.9, "safe\nS1", get_preset("llama-guard-3"))
    assert not v.unsafe and v.categories == ()


def test_both_judge_paths_use_the_one_reader() -> None:
    assert engine.read_verdict is read_verdict and remote.read_verdict is read_verdict


def test_three_class_verdicts_sum_the_classes_that_count_as_safe() -> None:
    """Qwen3Guard's Safe / Unsafe / Controversial: strict by default (Controversial is unsafe), loose
    with --safe-classes Controversial; categories come from its `Categories:` line."""
    from scorer_server.guards.verdict import classes_p_safe

    strict = get_preset("qwen3guard-gen")
    loose = strict.counting_safe(("Controversial",))
    logits = [1.0, 0.0, 2.0]
    z = sum(math.exp(x) for x in logits)
    assert classes_p_safe(logits, [c.safe for c in strict.classes]) == pytest.approx(math.exp(1.0) / z)
    assert classes_p_safe(logits, [c.safe for c in loose.classes]) == pytest.approx(
        (math.exp(1) + math.exp(2)) / z
    )
    assert classes_p_safe(logits, [True, False, False], temperature=2.0) == pytest.approx(
        math.exp(0.5) / sum(math.exp(x / 2) for x in logits)
    )
    v = read_verdict(0.1, " Unsafe\nCategories: Violent, Sexual Content\nRefusal: No", strict)
    assert v.unsafe and v.categories == ("Violent", "Sexual Content")
    with pytest.raises(Exception, match="not a verdict class"):
        strict.counting_safe(("Maybe",))


def test_earlier_fields_argmax_follows_the_guards_choice_and_marginal_weighs_every_value() -> None:
    """WildGuard-shaped: two earlier fields of two values each, then the verdict (node order: root, the
    two first-field values, then the four paths)."""
    from scorer_server.guards.reader import VerdictReader

    reader = VerdictReader(
        field_values=((" no", " yes"), (" no", " yes")),
        field_then=("\nB:", "\nC:"),
        field_ids=((1, 2), (1, 2)),
        class_ids=(1, 2),
        safe=(True, False),
    )
    assert reader.nodes == 7 and list(reader.paths())[3:] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert reader.texts("A:")[-1] == "A: yes\nB: yes\nC:"
    field = [[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]  # root prefers " yes"; after " yes", " no" and " yes" tie
    verdicts = [[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 3.0]]
    logits = field + verdicts
    # argmax: " yes" (index 1), then the tie goes to the first value: the path (1, 0)
    assert reader.p_safe(logits) == pytest.approx(1 / (1 + math.exp(-3.0)))
    p_yes = 1 / (1 + math.exp(-1.0))
    want = p_yes * (0.5 * (1 / (1 + math.exp(-3.0))) + 0.5 * (1 / (1 + math.exp(3.0))))
    want += (1 - p_yes) * (
        1 / (1 + math.exp(-2.0)) * 0.5 + (1 - 1 / (1 + math.exp(-2.0))) * (1 / (1 + math.exp(-1.0)))
    )
    marginal = VerdictReader(**{**reader.__dict__, "mode": "marginal"})
    assert marginal.p_safe(logits) == pytest.approx(want)
