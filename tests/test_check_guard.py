"""`star-scorer check-guard` (scorer_server/check_guard.py): the report on tiny guards, its forced-text and
verdict checks on guards scripted to write a known text, and the command's exit codes and output.

Random weights write garbage, so on them only the report's shape and arithmetic are checked. To check
the verdicts, `script` rewires a tiny model so that, greedily, it writes a chosen text after the prompt.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from scorer_server.check_guard import PROBES, ProbeReport, check_guard
from scorer_server.cli import main
from scorer_server.guards.guard import Guard
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.loader import load_guard
from star_testing.tiny_guard import TinyGuardSpec, build_model, build_tokenizer

LLAMA_EOS = "<|eot_id|>"


def bare_prompt(guard: Guard) -> str:
    """The probes' prompt without the forced text (every probe's ends the same way)."""
    scored = guard.template.render(PROBES[0].conversation)
    forced = guard.template.verdict_prefix
    assert scored.endswith(forced)
    return scored[: len(scored) - len(forced)]


def script(guard: Guard, text: str) -> Guard:
    """Rewire `guard`'s model (Llama- or Qwen3-shaped) in place so that after the probes' prompt it
    greedily writes `text`: every layer's attention and MLP output is zeroed, so the last position sees
    only its own token; each token of the chain (the prompt's last token, then `text`'s tokens) gets a
    one-hot embedding, and the output head maps it to its successor with a logit of 80 (the others: 0)."""
    bare = bare_prompt(guard)
    base, full = guard.encode([bare])[0], guard.encode([bare + text])[0]
    assert full[: len(base)] == base, "the text merges with the end of the prompt"
    chain = [base[-1], *full[len(base) :]]
    successor: dict[int, int] = {}
    for a, b in itertools.pairwise(chain):
        assert successor.setdefault(a, b) == b, "a token of the chain has two successors"
    model = guard.model
    assert len(successor) <= model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for k, (a, b) in enumerate(successor.items()):
            embed[a] = 0.0
            embed[a, k] = 1.0
            head[b, k] = 10.0  # the final RMS norm scales the one-hot by sqrt(hidden) = 8
    return guard


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama Guard whose template ends at the assistant header, so the preset's forced
    text is "\\n\\n" (the auto verdict prefix). As in Llama 3's tokenizer (token 271), "\\n\\n" is one
    token, so `script` can write it (two "\\n" tokens in a row would need a model that counts)."""
    from tokenizers import AddedToken

    out = tmp_path_factory.mktemp("check-guard") / "tiny-llama-guard"
    spec = TinyGuardSpec(header_newlines=False)
    tok = build_tokenizer(spec)
    tok.add_tokens([AddedToken("\n\n", normalized=False)])
    build_model(spec, len(tok), tokenizer=tok).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def load(path: Path, preset: str = "llama-guard-3") -> Guard:
    return load_guard(GuardConfig(path=str(path), preset=preset))


@pytest.fixture(scope="module")
def random_reports(guard_dir: Path) -> list[ProbeReport]:
    return check_guard(load(guard_dir), PROBES, max_new_tokens=8)


@pytest.fixture(scope="module")
def fitting_dir(guard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny guard scripted to answer "\\n\\nsafe<|eot_id|>", saved as a guard directory."""
    guard = script(load(guard_dir), "\n\nsafe" + LLAMA_EOS)
    out = tmp_path_factory.mktemp("check-guard") / "scripted-guard"
    guard.model.save_pretrained(str(out))
    guard.tokenizer.save_pretrained(str(out))
    return out


def test_the_report_has_every_field_and_the_classes_hold_the_class_mass(
    random_reports: list[ProbeReport],
) -> None:
    assert [r.probe for r in random_reports] == [p.name for p in PROBES]
    for r in random_reports:
        assert r.forced_text == "\n\n"
        assert 1 <= r.generated_tokens <= 8 and r.generated
        assert [(c.word, c.safe) for c in r.classes] == [("safe", True), ("unsafe", False)]
        assert all(c.token_id >= 0 and c.token for c in r.classes)
        assert sum(c.p for c in r.classes) == pytest.approx(r.class_mass, abs=1e-12)
        assert sum(c.p_classes for c in r.classes) == pytest.approx(1.0, abs=1e-12)
        for c in r.classes:
            assert c.p_classes == pytest.approx(c.p / r.class_mass, rel=1e-9)
        assert len(r.top) == 5
        assert [t.p for t in r.top] == sorted((t.p for t in r.top), reverse=True)
        assert r.top[0].p >= max(c.p for c in r.classes)
        assert sum(t.p for t in r.top) <= 1.0 + 1e-12
        # The verdict follows the rule, and says why when it is "does not fit".
        checks_hold = r.writes_forced_text and r.verdict is not None and r.verdict_as_written
        assert r.fits == (checks_hold and r.class_mass > 0.5)
        assert (r.reason == "") == r.fits
        assert r.line == (f"{r.probe}: fits" if r.fits else f"{r.probe}: does not fit: {r.reason}")


def test_greedy_decoding_writes_what_generate_writes(
    guard_dir: Path, random_reports: list[ProbeReport]
) -> None:
    """The cached greedy loop writes exactly what transformers' own greedy `generate` writes."""
    guard = load(guard_dir)
    eos = guard.tokenizer.eos_token_id
    for probe, report in zip(PROBES, random_reports, strict=True):
        ids = guard.encode([guard.template.render(probe.conversation).removesuffix("\n\n")])[0]
        x = torch.tensor([ids])
        out = guard.model.generate(
            x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=8,
            eos_token_id=eos,
            pad_token_id=eos,
        )
        new = out[0, len(ids) :].tolist()
        assert len(new) == report.generated_tokens
        assert guard.tokenizer.decode(new, skip_special_tokens=False) == report.generated


@pytest.mark.parametrize(
    ("writes", "forced", "verdict", "as_written", "mass", "why"),
    [
        ("\n\nsafe" + LLAMA_EOS, True, "safe", True, 1, ""),
        ("\n\nunsafe\nS1" + LLAMA_EOS, True, "unsafe", True, 1, ""),
        (
            "safe" + LLAMA_EOS,
            False,
            None,
            False,
            0,
            "does not write the forced text '\\n\\n' first: it writes 'safe<|eot_id|>'",
        ),
        # "safely" starts with the token "safe": the mass is the classes', only the text check sees it
        ("\n\nsafely" + LLAMA_EOS, True, None, False, 1, "none of the classes 'safe', 'unsafe'"),
        ("\n\n safe" + LLAMA_EOS, True, "safe", False, 0, "not as the class spells it ('safe')"),
    ],
    ids=["safe", "unsafe", "no-forced-text", "no-verdict-word", "spaced-otherwise"],
)
def test_the_forced_text_and_verdict_checks_on_scripted_guards(
    guard_dir: Path, writes: str, forced: bool, verdict: str | None, as_written: bool, mass: int, why: str
) -> None:
    """A guard scripted to write a known text: the report quotes it, and judges the forced text and the
    verdict word right (a word spaced otherwise than its class is not the token the scorer reads)."""
    guard = script(load(guard_dir), writes)
    bare = bare_prompt(guard)
    tokens = len(guard.encode([bare + writes])[0]) - len(guard.encode([bare])[0])
    for r in check_guard(guard, PROBES, max_new_tokens=16):
        assert (r.generated, r.generated_tokens) == (writes, tokens)  # it stops after the EOS token
        assert (r.writes_forced_text, r.verdict, r.verdict_as_written) == (forced, verdict, as_written)
        assert r.fits == (why == "")
        assert why in r.reason
        assert r.class_mass == pytest.approx(mass, abs=0.01)
        assert ("probability mass" in r.reason) == (mass == 0)
        if r.fits:
            # Where the scorer reads, the guard's next token is the verdict it writes.
            written = next(c for c in r.classes if c.word == verdict)
            assert written.p > 0.999 and written.p_classes > 0.999
            assert r.top[0].token_id == written.token_id


def test_a_fitting_guard_does_not_fit_when_the_classes_must_hold_all_the_mass(guard_dir: Path) -> None:
    guard = script(load(guard_dir), "\n\nsafe" + LLAMA_EOS)
    assert all(r.fits for r in check_guard(guard, PROBES))
    for r in check_guard(guard, PROBES, min_class_mass=1.0):
        assert not r.fits and r.writes_forced_text and r.verdict == "safe"
        assert r.reason.startswith("the verdict classes hold 1 of the probability mass")
        assert r.reason.endswith("(needs > 1)")


def test_exit_code_0_when_every_probe_fits(fitting_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-guard", str(fitting_dir), "--preset", "llama-guard-3"]) == 0
    out = capsys.readouterr().out
    assert "  forced text: '\\n\\n'" in out
    assert "  greedy (3 of at most 16 tokens): '\\n\\nsafe<|eot_id|>'" in out
    assert out.rstrip().splitlines()[-len(PROBES) :] == [f"{p.name}: fits" for p in PROBES]


def test_exit_code_3_when_a_probe_does_not_fit(guard_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-guard", str(guard_dir), "--preset", "llama-guard-3", "--max-new-tokens", "4"]) == 3
    captured = capsys.readouterr()
    last = captured.out.rstrip().splitlines()[-len(PROBES) :]
    assert [line.split(":")[0] for line in last] == [p.name for p in PROBES]
    assert any(": does not fit: " in line for line in last)
    assert captured.err == ""


def test_json_prints_one_object_per_probe(guard_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["check-guard", str(guard_dir), "--preset", "llama-guard-3", "--max-new-tokens", "4", "--json"]
    code = main(args)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(PROBES)
    objects = [json.loads(line) for line in lines]
    assert [o["probe"] for o in objects] == [p.name for p in PROBES]
    for o in objects:
        assert set(o) == {f.name for f in fields(ProbeReport)}
        assert set(o["classes"][0]) == {"word", "safe", "token_id", "token", "p", "p_classes"}
        assert set(o["top"][0]) == {"token_id", "token", "p"}
        assert sum(c["p"] for c in o["classes"]) == pytest.approx(o["class_mass"], abs=1e-12)
    assert code == (0 if all(o["fits"] for o in objects) else 3)


def test_json_of_a_fitting_guard(fitting_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-guard", str(fitting_dir), "--preset", "llama-guard-3", "--json"]) == 0
    for line in capsys.readouterr().out.splitlines():
        o = json.loads(line)
        assert (o["fits"], o["reason"], o["forced_text"], o["verdict"]) == (True, "", "\n\n", "safe")


def test_a_preset_the_loader_refuses_exits_2_with_its_reason(
    guard_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gpt-oss-safeguard reasons before its verdict: no number is read where no verdict is written."""
    assert main(["check-guard", str(guard_dir), "--preset", "gpt-oss-safeguard"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(
        "star-scorer check-guard: error: preset 'gpt-oss-safeguard' cannot be scored: gpt-oss-safeguard "
        "writes its reasoning in the harmony analysis channel"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--template-kwargs", "{nope"], "--template-kwargs is not valid JSON"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, not 0"),
        (["--min-class-mass", "1.5"], "--min-class-mass must be between 0 and 1, not 1.5"),
        (["--dtype", "int3"], "--dtype must be one of bfloat16, float16, float32, not 'int3'"),
        (["--preset", "llama-guard-9"], "unknown guard preset 'llama-guard-9'"),
        (["--preset", "granite-guardian-3"], "probably the wrong preset for this guard"),
        (["--template-file", "/nonexistent.jinja"], "cannot read --template-file /nonexistent.jinja"),
    ],
    ids=["kwargs", "max-new-tokens", "min-class-mass", "dtype", "unknown-preset", "wrong-preset", "file"],
)
def test_usage_and_config_errors_exit_2_with_one_line(
    guard_dir: Path, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-guard", str(guard_dir), "--preset", "llama-guard-3", *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("star-scorer check-guard: error: ")
    assert message in captured.err


def test_a_missing_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-guard", str(tmp_path / "none"), "--preset", "llama-guard-3"]) == 2
    err = capsys.readouterr().err
    assert err == f"star-scorer check-guard: error: the guard directory {tmp_path / 'none'} does not exist\n"


def test_without_a_preset_argparse_exits_2(guard_dir: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check-guard", str(guard_dir)])
    assert exc.value.code == 2


@pytest.fixture(scope="module")
def qwen3guard(guard_templates: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3Guard-Gen's real template and tokenizer with a tiny random Qwen3 (89 MB, built once)."""
    from star_testing.real_guards import save_real_guard_2

    out = tmp_path_factory.mktemp("qwen3guard") / "qwen3guard-gen"
    return save_real_guard_2(out, "qwen3guard-gen", guard_templates)[0]


def test_qwen3guard_report_names_its_forced_text_and_classes(qwen3guard: Path) -> None:
    """On the real Qwen3Guard template and tokenizer: the forced text is `Safety:`, the classes are the
    three words with their leading space; scripted to write its documented answer, the guard fits."""
    guard = load(qwen3guard, "qwen3guard-gen")
    for r in check_guard(guard, PROBES, max_new_tokens=4):
        assert r.forced_text == "Safety:"
        assert [c.word for c in r.classes] == [" Safe", " Unsafe", " Controversial"]
        assert [c.safe for c in r.classes] == [True, False, False]
        assert sum(c.p for c in r.classes) == pytest.approx(r.class_mass, abs=1e-12)
    answer = "Safety: Unsafe<|im_end|>"
    for r in check_guard(script(guard, answer), PROBES):
        assert (r.generated, r.writes_forced_text) == (answer, True)
        assert (r.verdict, r.verdict_as_written) == ("Unsafe", True)
        assert r.fits and r.classes[1].p_classes > 0.999


def test_qwen3guard_through_the_cli(qwen3guard: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-guard", str(qwen3guard), "--preset", "qwen3guard-gen", "--max-new-tokens", "2"])
    out = capsys.readouterr().out
    assert "  forced text: 'Safety:'\n" in out
    assert "' Safe' (safe, token " in out and "' Unsafe' (unsafe, token " in out
    assert "' Controversial' (unsafe, token " in out
    assert code == 3  # random weights do not write "Safety:"
