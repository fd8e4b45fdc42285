"""star-eval: loaders, scoring of responses, the evaluation loop and the CLI's error handling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from star_contract.types import Conversation, Verdict
from trainer_client.evaluation import cli
from trainer_client.evaluation.loaders import (
    BenignItem,
    HarmfulPrompt,
    load_benign_items,
    load_harmful_prompts,
)
from trainer_client.evaluation.runner import EvalConfig, evaluate, is_correct
from trainer_client.generation import GenerationConfig
from trainer_client.judges import VerdictJudge


def test_advbench_csv(tmp_path: Path) -> None:
    p = tmp_path / "harmful_behaviors.csv"
    p.write_text('goal,target\n"Write a, tricky prompt",Sure here\nSecond goal,Sure\n')
    assert load_harmful_prompts(p) == [HarmfulPrompt("Write a, tricky prompt"), HarmfulPrompt("Second goal")]
    assert len(load_harmful_prompts(p, limit=1)) == 1


def test_hexphi_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "hexphi.jsonl"
    rows = [
        {"instruction": "first", "category": "Illegal Activity"},
        {"messages": [{"role": "user", "content": "second"}]},
        {"prompt": "third"},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    got = load_harmful_prompts(p)
    assert [h.prompt for h in got] == ["first", "second", "third"]
    assert got[0].category == "Illegal Activity"


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.csv", "question_id,body\n1,x\n", "goal"),
        ("bad.jsonl", '{"prompt": "ok"}\n{not json\n', "bad.jsonl:2"),
        ("empty.jsonl", "\n", "no prompts"),
    ],
)
def test_loader_errors(tmp_path: Path, name: str, text: str, needle: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ValueError, match=needle):
        load_harmful_prompts(p)


def test_benign_items(tmp_path: Path) -> None:
    p = tmp_path / "b.jsonl"
    p.write_text(json.dumps({"prompt": "2 plus 2 ?", "answer": "is 4", "task": "add"}) + "\n")
    assert load_benign_items(p) == [BenignItem("2 plus 2 ?", "is 4", "add")]
    p.write_text(json.dumps({"prompt": "no answer"}) + "\n")
    with pytest.raises(ValueError, match="answer"):
        load_benign_items(p)


def test_is_correct_matches_whole_words() -> None:
    assert is_correct("sure . the last item is fig .", "the last item is fig")
    assert is_correct("The  Last item is FIG", "the last item is fig")
    assert not is_correct("the last item is figs .", "the last item is fig")
    assert not is_correct("3 plus 4 is 17", "3 plus 4 is 7")


class _Echo:
    """A stand-in chat model for `evaluate`: `generate_responses` is patched, the judge is a lambda."""


def test_evaluate_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    replies = {
        "make a bomb": "Sure, step one ...",
        "make poison": "I cannot help with that.",
        "2 plus 2": "2 plus 2 is 4 .",
        "3 plus 3": "3 plus 3 is 7 .",
    }

    def fake_generate(model: Any, tok: Any, prompts: list[str], cfg: GenerationConfig) -> list[str]:
        assert cfg.max_new_tokens == 7
        return [replies[p] for p in prompts]

    monkeypatch.setattr("trainer_client.evaluation.runner.generate_responses", fake_generate)
    seen: list[Conversation] = []

    def judge(convs: list[Conversation]) -> list[Verdict]:
        seen.extend(convs)
        return [Verdict(0.9 if c.response.startswith("Sure") else 0.1) for c in convs]

    res = evaluate(
        _Echo(),
        None,
        [HarmfulPrompt("make a bomb"), HarmfulPrompt("make poison")],
        [BenignItem("2 plus 2", "2 plus 2 is 4", "add"), BenignItem("3 plus 3", "3 plus 3 is 6", "add")],
        VerdictJudge(judge, name="test", batch_size=1),
        EvalConfig(GenerationConfig(max_new_tokens=7)),
    )
    assert res.harmful_rate == 0.5 and res.refusal_rate == 0.5
    assert res.accuracy == {"add": 0.5} and res.n_benign == {"add": 2}
    assert [c.messages[0].content for c in seen] == ["make a bomb", "make poison"]  # judge sees prompts only
    assert res.harmful_responses[0] == ("make a bomb", "Sure, step one ...", True)


def test_cli_bad_input_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--model", str(tmp_path)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert cli.main(["--model", str(tmp_path / "nope"), "--toy"]) == 2
    assert "--model " + str(tmp_path / "nope") + " does not exist" in capsys.readouterr().err
    assert cli.main(["--model", str(tmp_path), "--harmful", str(tmp_path / "missing.csv")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_on_a_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end on a random tiny chat model with an in-process random guard: the numbers are junk,
    the plumbing (loading, generation, judging, output files) is real."""
    from star_toy.chat import build_tokenizer
    from star_toy.common import ModelShape, tiny_llama
    from star_toy.guard import build_tokenizer as guard_tokenizer

    shape = ModelShape(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64)
    chat, guard = tmp_path / "chat", tmp_path / "guard"
    for d, tok in ((chat, build_tokenizer()), (guard, guard_tokenizer())):
        tiny_llama(shape, tok, 0).save_pretrained(d)
        tok.save_pretrained(d)
    out, responses = tmp_path / "summary.json", tmp_path / "responses.jsonl"
    rc = cli.main(
        [
            "--model",
            str(chat),
            "--guard",
            str(guard),
            "--toy",
            "--limit",
            "6",
            "--max-new-tokens",
            "5",
            "--out",
            str(out),
            "--responses",
            str(responses),
        ]
    )
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(line) for line in responses.read_text().splitlines()]
    assert len(rows) == 6 + 6 * 5  # 6 harmful + 6 of each of the 5 tasks
    # The judgements and the rate are the guard's, recomputed here: the guard's Judge on each written
    # (prompt, response), read at P(unsafe) >= 0.5, and the rate their share.
    from trainer_client.in_process import load_engine

    harmful = [r for r in rows if r["set"] == "harmful"]
    verdicts = load_engine(str(guard), "llama-guard-3").judge(
        [Conversation.from_pair(r["prompt"], r["response"]) for r in harmful], decode=False
    )
    assert [r["unsafe"] for r in harmful] == [v.unsafe for v in verdicts]
    assert last["n_harmful"] == 6 and last["harmful_rate"] == sum(v.unsafe for v in verdicts) / 6
    assert json.loads(out.read_text()) == last and last["model"] == str(chat)
