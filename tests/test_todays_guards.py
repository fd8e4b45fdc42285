"""Today's guards: verdicts read where each guard writes them, or the guard refused with the reason.

Guards that reason before their verdict are refused at load (gpt-oss-safeguard; any template rendered in
a thinking mode), so no number is ever read at a position where the guard writes no verdict.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.loader import load_guard
from scorer_server.guards.template import auto_verdict_prefix
from star_contract.errors import ConfigError
from star_testing.tiny_guard import save_tiny_guard

ASKS = "Answer 'safe' or 'unsafe'."


@pytest.fixture(scope="module")
def guard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_guard(tmp_path_factory.mktemp("g") / "g")


def test_gpt_oss_safeguard_is_refused_with_the_reason(guard_dir: Path) -> None:
    with pytest.raises(ConfigError, match="analysis channel before a policy-defined label"):
        load_guard(GuardConfig(path=str(guard_dir), preset="gpt-oss-safeguard"))


@pytest.mark.parametrize(
    ("ending", "refused"),
    [
        ("<think>\n", True),  # a template in thinking mode: the guard reasons first
        ("<|start|>assistant<|channel|>analysis<|message|>", True),  # harmony's analysis channel
        ("<think>\n\n</think>\n\n", False),  # Qwen3's non-thinking mode: an empty, closed block
        ("", False),
    ],
)
def test_a_prompt_that_opens_a_reasoning_block_is_refused(
    guard_dir: Path, tmp_path: Path, ending: str, refused: bool
) -> None:
    tpl = tmp_path / "t.jinja"
    tpl.write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" + ASKS + "\n" + ending
    )
    config = GuardConfig(path=str(guard_dir), template_file=str(tpl))
    if refused:
        with pytest.raises(ConfigError, match="open reasoning block"):
            load_guard(config)
    else:
        rendered = load_guard(config).template.render_messages([{"role": "user", "content": "q"}])
        assert rendered.rstrip().endswith(ending.strip() or ASKS)  # Jinja drops a final newline


def test_llama_4_headers_get_the_blank_line_the_guard_writes_first() -> None:
    assert auto_verdict_prefix("<|header_start|>assistant<|header_end|>") == "\n\n"
    assert auto_verdict_prefix("<|start_header_id|>assistant<|end_header_id|>") == "\n\n"
    assert auto_verdict_prefix("<|start_header_id|>assistant<|end_header_id|>\n\n") == ""


# -- conformance through the public gRPC API, against an independent oracle --------------------------
#
# Tiny random-weight guards on the REAL tokenizers and templates (star_testing.real_guards, from
# ../shared/guard-templates; Llama Guard 4's template is a reconstruction from its documented prompt,
# as the real one is not published outside the model repository). The oracle knows nothing of the
# scorer: it renders the prompt with the tokenizer's own `apply_chat_template`, appends the text the
# guard's documented output puts before its verdict, runs one plain forward of the whole prompt per
# cut, and takes the softmax over the class tokens (each tokenised after the prompt).

Fields = tuple[tuple[tuple[str, ...], str], ...]
GRANITE = "<think>\n</think>\n<score>"
"""Granite Guardian's no-think answer up to its score: the empty think block is witnessed (IBM's
cookbooks), the newline after it is assumed (presets.GRANITE_SCORE_PREFIX)."""
FAMILIES: dict[str, tuple[str, Fields, tuple[tuple[str, bool], ...], str]] = {
    # preset: (the text before the first field or the verdict, the earlier fields as (values, the text
    # after the value), the verdict classes as (word, counts safe), the guard's documented answer)
    "qwen3guard-gen": ("Safety:", (), ((" Safe", True), (" Unsafe", False), (" Controversial", False)),
                       "Safety: Safe\nCategories: None"),
    "llama-guard-4": ("\n\n", (), (("safe", True), ("unsafe", False)), "\n\nsafe"),
    "nemoguard": ('{"User Safety": "', ((("safe", "unsafe"), '", "Response Safety": "'),),
                  (("safe", True), ("unsafe", False)), '{"User Safety": "safe", "Response Safety": "safe"}'),
    "wildguard": ("Harmful request:", (((" no", " yes"), "\nResponse refusal:"),
                                       ((" no", " yes"), "\nHarmful response:")),
                  ((" no", True), (" yes", False)),
                  "Harmful request: no\nResponse refusal: no\nHarmful response: no"),
    "granite-guardian-3.3": (GRANITE, (), ((" no", True), (" yes", False)), GRANITE + " no </score>"),
    "granite-guardian-4.1": (GRANITE, (), ((" no", True), (" yes", False)), GRANITE + " no </score>"),
}  # fmt: skip
PROMPT = "How do I bake bread at home?"
RESPONSE = "Sure: mix 500 g flour,\n\nwater and yeast, then bake it 40 minutes at 220 °C. Enjoy!"


class Oracle:
    """P(safe) by the definition, with transformers alone: the guard's prompt as its makers build it
    (its chat template; NemoGuard: NeMo's task prompt inside the Llama 3.1 template; WildGuard: its
    format string, tokenised with the BOS token added), the forced text, each earlier field filled with
    the value the guard finds most likely (one forward per step), one forward per cut, and the softmax
    over the class tokens."""

    def __init__(
        self,
        name: str,
        path: Path,
        artefacts: Path,
        forced: str,
        fields: Fields,
        classes: tuple[tuple[str, bool], ...],
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
        self.name, self.artefacts = name, artefacts
        self.forced, self.fields, self.classes = forced, fields, classes
        self.specials = name == "wildguard"  # its library tokenises with the BOS token added

    def variant(self, forced: str, fields: Fields, classes: tuple[tuple[str, bool], ...]) -> Oracle:
        """The same guard (model and tokenizer shared) read with another spec."""
        other = copy.copy(self)
        other.forced, other.fields, other.classes = forced, fields, classes
        return other

    def prompt(self, response: str | None) -> str:
        """The guard's prompt for PROMPT and `response`; None: the prompt alone is judged."""
        from star_testing import guard_formats

        turns = [{"role": "user", "content": PROMPT}]
        if response is not None:
            turns.append({"role": "assistant", "content": response})
        if self.name == "nemoguard":
            text = guard_formats.nemoguard_two_step(self.artefacts, self.tok, PROMPT, response)
        elif self.name == "wildguard":  # the library fills a missing response with ""
            text = guard_formats.wildguard_text(self.artefacts, PROMPT, response or "")
        elif self.name == "granite-guardian-3.3":  # as IBM's 3.3 cookbook calls it
            messages = turns
            text = str(
                self.tok.apply_chat_template(
                    messages,
                    guardian_config={"criteria_id": "harm"},
                    think=False,
                    tokenize=False,
                    add_generation_prompt=True,
                )
            )
        elif self.name == "granite-guardian-4.1":  # IBM's 4.1 cookbook: the criterion as a last user turn
            schema = (
                guard_formats.GRANITE_GUARDIAN_4_1_PROMPT_SCHEMA
                if response is None
                else guard_formats.GRANITE_GUARDIAN_4_1_RESPONSE_SCHEMA
            )
            block = guard_formats.granite_guardian_4_1_block(guard_formats.GRANITE_GUARDIAN_4_1_HARM, schema)
            messages = [*turns, {"role": "user", "content": block}]
            text = str(self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        else:
            text = str(self.tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
        return text + self.forced

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=self.specials)["input_ids"])

    def first_tokens(self, prompt: str, words: tuple[str, ...]) -> list[int]:
        base = self.encode(prompt)
        return [self.encode(prompt + w)[len(base)] for w in words]

    def last_logits(self, text: str) -> Any:
        with self.torch.inference_mode():
            ids = self.torch.tensor([self.encode(text)])
            return self.model(input_ids=ids, logits_to_keep=1).logits[0, -1].double()

    def p_safe_of_the_prompt(self) -> float:
        """The prompt alone judged: its own verdict, the first field when the guard writes fields
        (NemoGuard's user verdict, WildGuard's harmful request; the safe value first), else the classes."""
        text = self.prompt(None)  # the forced text included
        if self.fields:
            values = self.fields[0][0]
            probs = self.torch.softmax(self.last_logits(text)[self.first_tokens(text, values)], dim=-1)
            return float(probs[0])
        words = tuple(w for w, _ in self.classes)
        probs = self.torch.softmax(self.last_logits(text)[self.first_tokens(text, words)], dim=-1)
        return float(sum(p for p, (_, safe) in zip(probs.tolist(), self.classes, strict=True) if safe))

    def p_safe(self, response: str) -> float:
        text = self.prompt(response)
        for values, then in self.fields:  # the guard's own choice, one forward per step
            logits = self.last_logits(text)[self.first_tokens(text, values)]
            text += values[int(logits.argmax())] + then
        words = tuple(w for w, _ in self.classes)
        probs = self.torch.softmax(self.last_logits(text)[self.first_tokens(text, words)], dim=-1)
        return float(sum(p for p, (_, safe) in zip(probs.tolist(), self.classes, strict=True) if safe))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(
    request: pytest.FixtureRequest, guard_templates: Path, real_guard_2_dir: Any
) -> tuple[str, Path, Oracle]:
    name = request.param
    path = real_guard_2_dir(name)
    forced, fields, classes, _ = FAMILIES[name]
    return name, path, Oracle(name, path, guard_templates, forced, fields, classes)


def test_the_documented_answer_begins_with_a_verdict_class_where_the_preset_reads(
    family: tuple[str, Path, Oracle],
) -> None:
    """No preset reads at a position where the guard's documented output has no verdict: the prompt plus
    the preset's forced text, followed by the documented answer, has a token of the first field's values
    (or of the verdict classes) right there, and the scorer renders what the guard's makers render."""
    name, path, oracle = family
    from scorer_server.guards.guard_config import GuardConfig
    from scorer_server.guards.loader import load_guard

    guard = load_guard(GuardConfig(path=str(path), preset=name))
    messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": RESPONSE}]
    rendered = guard.template.render_messages(messages)
    forced, fields, classes, answer = FAMILIES[name]
    ours = guard.encode([rendered])[0]
    assert ours == oracle.encode(oracle.prompt(RESPONSE))
    assert answer.startswith(forced)
    before = rendered[: len(rendered) - len(forced)]
    full = guard.encode([before + answer])[0]
    assert full[: len(ours)] == ours
    first = guard.reader.field_ids[0] if fields else guard.class_ids
    assert full[len(ours)] in first
    words = tuple(w for w, _ in classes)
    assert list(guard.class_ids) == oracle.first_tokens(guard.reader.texts(rendered)[-1], words)


def test_score_score_stream_judge_and_moderate_equal_the_oracle(
    family: tuple[str, Path, Oracle], start_server: Any
) -> None:
    import asyncio

    import grpc

    from star_client import AsyncScorerClient
    from star_contract.convert import score_request_to_pb, scores_from_parts
    from star_contract.types import Conversation, CutKind, CutSpec, ModerateOptions, ScoreRequest
    from star_proto import scorer_pb2_grpc as pb_grpc

    name, path, oracle = family
    server = start_server("--guard", str(path), "--preset", name, "--no-warmup")
    conv = Conversation.from_pair(PROMPT, RESPONSE)
    request = ScoreRequest(conv, CutSpec(CutKind.WORDS, 3))
    with grpc.insecure_channel(server.address) as channel:  # the unary-request Score RPC
        parts = pb_grpc.ScorerServiceStub(channel).Score(score_request_to_pb(request), timeout=120)
        unary = scores_from_parts(parts).segments

    async def calls() -> tuple[Any, Any, Any]:
        async with AsyncScorerClient(server.address) as client:
            streamed = (await client.score_many([request]))[0].segments
            only_the_prompt = Conversation.from_dicts([{"role": "user", "content": PROMPT}])
            verdict, asked = await client.judge([conv, only_the_prompt])
            options = ModerateOptions(every=3, unsafe_below=0)
            async with client.moderate(conv.with_response(""), options) as s:
                for i in range(0, len(RESPONSE), 7):
                    await s.push(RESPONSE[i : i + 7])
                await s.close()
            return streamed, (verdict, asked), s.segments

    streamed, (verdict, asked), live = asyncio.run(calls())
    want = [oracle.p_safe(RESPONSE[: s.end]) for s in unary]
    for got in (unary, streamed, live):
        assert [s.end for s in got] == [s.end for s in unary]
        assert max(abs(s.p_safe - w) for s, w in zip(got, want, strict=True)) <= 1e-5
    assert abs(verdict.p_unsafe - (1 - oracle.p_safe(RESPONSE))) <= 1e-5
    assert abs(asked.p_unsafe - (1 - oracle.p_safe_of_the_prompt())) <= 1e-5  # input moderation
    server.stop()


def test_the_oracle_notices_a_wrong_forced_text_or_class_set(family: tuple[str, Path, Oracle]) -> None:
    """Mutations of the spec change the numbers, so the conformance test above would fail on them."""
    name, _, oracle = family
    forced, fields, classes, _ = FAMILIES[name]
    right = [oracle.p_safe(RESPONSE[:n]) for n in (5, 30, len(RESPONSE))]
    # a class dropped (Qwen3Guard's Controversial), or the safe and unsafe words swapped
    other_classes = classes[:2] if len(classes) > 2 else ((classes[0][0], False), (classes[1][0], True))
    mutants = [oracle.variant("", fields, classes), oracle.variant(forced, fields, other_classes)]
    if fields:  # an earlier field left out: the verdict read where the guard writes the field
        mutants.append(oracle.variant(forced, (), classes))
    for mutant in mutants:
        wrong = [mutant.p_safe(RESPONSE[:n]) for n in (5, 30, len(RESPONSE))]
        assert max(abs(a - b) for a, b in zip(right, wrong, strict=True)) > 1e-3


def test_remote_backends_read_every_class_and_refuse_earlier_fields(guard_dir: Path, tmp_path: Path) -> None:
    """vLLM is asked for every class token's log-prob and P(safe) sums the safe classes' softmax; a guard
    with fields before its verdict needs one position per request more than vLLM or TGI read, so it is
    refused with the reason (the local backend serves it)."""
    import math

    from scorer_server.backends.prompts import load_prompt_guard
    from scorer_server.backends.remote import RemoteConfig
    from scorer_server.backends.vllm import VllmBackend
    from scorer_server.guards.verdict import classes_p_safe

    tpl = tmp_path / "qwen.jinja"
    tpl.write_text("{{ messages[-1]['content'] }} One of: Safe, Unsafe, Controversial.\n")
    config = GuardConfig(path=str(guard_dir), preset="qwen3guard-gen", template_file=str(tpl))
    guard = load_prompt_guard(config, "vllm")
    assert len(guard.class_ids) == 3 and guard.safe_classes == (True, False, False)
    backend = VllmBackend(guard, RemoteConfig(urls=("http://127.0.0.1:1",)))
    assert backend.request_body("x", 1)["logprob_token_ids"] == list(guard.class_ids)
    first = {f"token_id:{i}": lp for i, lp in zip(guard.class_ids, (-1.0, -2.0, -0.5), strict=True)}
    out = backend.parse({"choices": [{"text": "", "logprobs": {"top_logprobs": [first]}}]})
    assert out.logprobs == (-1.0, -2.0, -0.5)
    z = math.exp(-1.0) + math.exp(-2.0) + math.exp(-0.5)
    assert classes_p_safe(out.logprobs, guard.safe_classes) == pytest.approx(math.exp(-1.0) / z)
    with pytest.raises(ConfigError, match="writes fields before its verdict"):
        load_prompt_guard(GuardConfig(path=str(guard_dir), preset="nemoguard"), "vllm")


def test_a_request_can_read_qwen3guards_controversial_as_safe(
    real_guard_2_dir: Any, guard_templates: Path, start_server: Any
) -> None:
    """Strict by default (Controversial is unsafe); a request with safe_classes=("Controversial",) reads
    it loose, on Score and on Moderate; a class the guard does not have is INVALID_ARGUMENT."""
    import asyncio

    from star_client import AsyncScorerClient
    from star_contract.errors import InvalidRequest as ClientInvalid
    from star_contract.types import Conversation, CutKind, CutSpec, ModerateOptions, ScoreRequest

    path = real_guard_2_dir("qwen3guard-gen")
    forced, fields, classes, _ = FAMILIES["qwen3guard-gen"]
    loose = tuple((w, safe or w.strip() == "Controversial") for w, safe in classes)
    strict_oracle = Oracle("qwen3guard-gen", path, guard_templates, forced, fields, classes)
    loose_oracle = strict_oracle.variant(forced, fields, loose)
    server = start_server("--guard", str(path), "--preset", "qwen3guard-gen", "--no-warmup")
    conv = Conversation.from_pair(PROMPT, RESPONSE)
    spec = CutSpec(CutKind.WORDS, 4)

    async def calls() -> tuple[Any, Any, Any]:
        async with AsyncScorerClient(server.address) as client:
            strict = (await client.score_many([ScoreRequest(conv, spec)]))[0].segments
            relaxed = (await client.score_many([ScoreRequest(conv, spec, safe_classes=("Controversial",))]))[
                0
            ]
            options = ModerateOptions(every=4, unsafe_below=0, safe_classes=("Controversial",))
            async with client.moderate(conv.with_response(""), options) as s:
                await s.push(RESPONSE)
                await s.close()
            with pytest.raises(ClientInvalid, match="not a verdict class"):
                await client.score_many([ScoreRequest(conv, spec, safe_classes=("Maybe",))])
            return strict, relaxed.segments, s.segments

    strict, relaxed, live = asyncio.run(calls())
    for got, oracle in ((strict, strict_oracle), (relaxed, loose_oracle), (live, loose_oracle)):
        want = [oracle.p_safe(RESPONSE[: s.end]) for s in got]
        assert max(abs(s.p_safe - w) for s, w in zip(got, want, strict=True)) <= 1e-5
    assert max(b.p_safe - a.p_safe for a, b in zip(strict, relaxed, strict=True)) > 1e-3
    server.stop()


def test_check_guard_follows_the_fields_written_before_the_verdict(real_guard_2_dir: Any) -> None:
    """check-guard on a guard with earlier fields checks the text up to where the verdict is read: the
    forced text, the value the guard finds most likely for each field (as the reader takes it), and the
    text after it."""
    from scorer_server.check_guard import check_guard
    from scorer_server.guards.guard_config import GuardConfig
    from scorer_server.guards.loader import load_guard

    guard = load_guard(GuardConfig(path=str(real_guard_2_dir("wildguard")), preset="wildguard"))
    report = check_guard(guard, max_new_tokens=2)[0]
    forced = report.forced_text
    assert forced.startswith("Harmful request:") and forced.endswith("\nHarmful response:")
    assert "\nResponse refusal:" in forced
    assert report.classes[0].word == " no" and sum(c.p_classes for c in report.classes) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["granite-guardian-3.3", "granite-guardian-4.1"])
def test_granite_guardian_in_think_mode_is_refused_naming_no_think(real_guard_2_dir: Any, name: str) -> None:
    """With think on, Granite Guardian writes a reasoning trace before its score: refused at load, with
    the no-think mode named (forcing an empty trace there would read a score the guard would not give)."""
    from scorer_server.guards.guard_config import GuardConfig
    from scorer_server.guards.loader import load_guard

    kwargs = {"think": True, "guardian_config": {"criteria_id": "harm"}}
    config = GuardConfig(path=str(real_guard_2_dir(name)), preset=name, template_kwargs=kwargs)
    with pytest.raises(ConfigError, match=r'reasons before its score.*"think": false'):
        load_guard(config)


def test_granite_guardian_4_1_criterion_turn_follows_the_conversation(real_guard_2_dir: Any) -> None:
    """The criterion turn comes after the response, with the schema of the last message's role (IBM's
    prompt-only schema when a user message is judged), and a criterion of one's own through
    guardian_config; the conversation's text never enters it, so it is part of every cut's suffix."""
    from scorer_server.guards.guard_config import GuardConfig
    from scorer_server.guards.loader import load_guard
    from star_testing import guard_formats as gf

    path = str(real_guard_2_dir("granite-guardian-4.1"))
    guard = load_guard(GuardConfig(path=path, preset="granite-guardian-4.1"))
    asked = guard.template.render_messages([{"role": "user", "content": PROMPT}])
    block = gf.granite_guardian_4_1_block(gf.GRANITE_GUARDIAN_4_1_HARM, gf.GRANITE_GUARDIAN_4_1_PROMPT_SCHEMA)
    turn = f"<|start_of_role|>user<|end_of_role|>{block}<|end_of_text|>\n"
    assert asked.endswith(turn + ASSISTANT + GRANITE)
    split = guard.template.split(_conversation())
    assert split.suffix.startswith("<|end_of_text|>\n<|start_of_role|>user<|end_of_role|><guardian>")
    mine = {"think": False, "guardian_config": {"criteria": "The text mentions bread."}}
    custom = load_guard(GuardConfig(path=path, preset="granite-guardian-4.1", template_kwargs=mine))
    rendered = custom.template.render_messages(_conversation().to_dicts())
    assert "### Criteria: The text mentions bread.\n\n### Scoring Schema: If the last assistant's" in rendered
    assert custom.fingerprint != guard.fingerprint


ASSISTANT = "<|start_of_role|>assistant<|end_of_role|>"


def _conversation() -> Any:
    from star_contract.types import Conversation

    return Conversation.from_pair(PROMPT, RESPONSE)
