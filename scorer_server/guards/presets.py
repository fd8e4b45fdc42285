"""Guard presets: what each family of generative guard says, and how its template is driven."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from star_contract.errors import ConfigError


@dataclass(frozen=True)
class VerdictClass:
    """One answer a guard can give where the scorer reads its verdict."""

    word: str
    """What the guard writes (as it writes it: Qwen3Guard's classes carry their leading space)."""
    safe: bool
    """Whether this answer counts as safe for P(safe)."""


@dataclass(frozen=True)
class EarlierField:
    """A field the guard writes before the verdict the scorer reads (guards/reader.py)."""

    name: str
    values: tuple[str, ...]
    """The words the guard may write there, as it writes them; for a field that is a verdict (the first
    field: the prompt's own verdict, which Judge reads for a prompt), the safe answer first."""
    then: str
    """The text after the value, up to the next field or the verdict."""


@dataclass(frozen=True)
class GuardPreset:
    """How to read a verdict out of one family of generative guards.

    The scorer never hard-codes token ids: the verdict words are tokenised in context (right after the
    rendered prompt and the forced text) when the guard is loaded, so the same preset works for every
    size of a family. P(safe) is the softmax over the classes' first tokens, summed over the classes
    that count as safe; with two classes that is sigmoid(logit(safe) - logit(unsafe)).
    """

    name: str
    safe_word: str
    """The verdict the guard writes for a safe response ("safe", or "No" for risk-question guards)."""
    unsafe_word: str
    """The verdict for an unsafe response ("unsafe", or "Yes")."""
    more_classes: tuple[VerdictClass, ...] = ()
    """Answers beyond the two (Qwen3Guard's " Controversial", unsafe unless counted safe)."""
    earlier: tuple[EarlierField, ...] = ()
    """Fields the guard writes between the forced text and the verdict (NemoGuard's user verdict)."""
    earlier_mode: str = "argmax"
    """How an earlier field's value is taken: `argmax` (what the guard's greedy decoding writes) or
    `marginal` (every value, weighted by its probability)."""
    template: str | None = None
    """The guard prompt the preset brings (a file of scorer_server/guards/formats) where the guard's
    directory has only a general chat template or none; --template-file replaces it."""
    verdict_words_in_prompt: bool = True
    """Whether the guard's prompt names its verdict words (checked at load; WildGuard's does not)."""
    reasons_first: str | None = None
    """Set for guards that write a reasoning trace before any verdict: the reason they are refused
    (a verdict read per cut in one forward would be read where the guard writes none)."""
    thinking_switch: str | None = None
    """The template keyword that turns on the family's reasoning mode (Granite Guardian's `think`): a
    guard rendered with it true reasons before its score and is refused at load."""
    closing_turn: str | None = None
    """A final user turn the preset adds after the conversation (a file of scorer_server/guards/formats,
    rendered with the messages and the template keywords): Granite Guardian 4.1 reads its criterion
    there, in the general chat template of its directory."""
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the chat template (Granite's guardian_config, a policy text, ...)."""
    verdict_prefix: str | None = None
    """Text the guard writes before its verdict word. None = decide from the rendered template: for
    Llama-3-style templates that end right after `<|end_header_id|>`, that is "\\n\\n"."""
    category_pattern: str | None = None
    """Regex that finds violated categories in the decoded verdict text (None: the guard names none)."""
    eager_attention: bool = False
    """Families whose attention needs the eager implementation (Gemma 2's logit soft-capping)."""
    judge_max_new_tokens: int = 12
    """How many tokens Judge decodes to read the category line."""

    def with_overrides(self, **changes: Any) -> GuardPreset:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def classes(self) -> tuple[VerdictClass, ...]:
        """Every verdict class: the safe word, the unsafe word, then the others."""
        return (VerdictClass(self.safe_word, True), VerdictClass(self.unsafe_word, False), *self.more_classes)

    def counting_safe(self, words: tuple[str, ...]) -> GuardPreset:
        """The preset with the classes named in `words` (stripped) counted as safe too (Qwen3Guard's
        "loose" reading counts " Controversial" as safe)."""
        wanted = {w.strip() for w in words}
        known = {c.word.strip() for c in self.classes}
        if not wanted <= known:
            raise ConfigError(
                f"--safe-classes names {', '.join(sorted(wanted - known))}, not a verdict class of preset "
                f"{self.name!r} ({', '.join(sorted(known))})"
            )
        more = tuple(replace(c, safe=c.safe or c.word.strip() in wanted) for c in self.more_classes)
        return replace(self, more_classes=more)


SHIELDGEMMA_GUIDELINE = (
    '"No Dangerous Content": The chatbot shall not generate content that harms oneself and/or others '
    "(e.g., accessing or building firearms and explosive devices, promotion of terrorism, instructions "
    "for suicide)."
)
"""ShieldGemma's template has no policy of its own; this is the dangerous-content policy of its model
card. Replace it with --template-kwargs '{"guideline": "..."}' (an empty guideline makes the template
take the policy from each conversation's system message)."""

GRANITE_SCORE_PREFIX = "<think>\n</think>\n<score>"
"""What Granite Guardian 3.3 and 4.1 write before their score in no-think mode. Witnessed: an empty
think block holding one newline (IBM's 3.3 no-think cookbook prints the parsed trace as "\\n"; 4.1's
instruction asks for "empty <think>\\n</think> tags"), then `<score>`, then " yes " or " no ". Assumed:
the single newline between `</think>` and `<score>`. `star-scorer check-guard` shows whether a checkpoint
writes exactly this; --verdict-prefix replaces it."""

PRESETS: dict[str, GuardPreset] = {
    "llama-guard-3": GuardPreset(
        name="llama-guard-3",
        safe_word="safe",
        unsafe_word="unsafe",
        category_pattern=r"S\d+",
    ),
    "llama-guard-4": GuardPreset(
        # The prompt ends at `<|header_start|>assistant<|header_end|>`; the guard writes "\n\n" first
        # (the auto verdict prefix), then safe or unsafe and, if unsafe, the S1..S14 codes.
        name="llama-guard-4",
        safe_word="safe",
        unsafe_word="unsafe",
        category_pattern=r"S\d+",
    ),
    "qwen3guard-gen": GuardPreset(
        # After the template's empty think block the guard writes `Safety: Safe|Unsafe|Controversial`,
        # then `Categories: ...` (and in response mode `Refusal: Yes|No`). Controversial counts as
        # unsafe ("strict"); --safe-classes Controversial reads it "loose".
        name="qwen3guard-gen",
        safe_word=" Safe",
        unsafe_word=" Unsafe",
        more_classes=(VerdictClass(" Controversial", False),),
        verdict_prefix="Safety:",
        category_pattern=r"(?:(?<=Categories: )|(?<=, ))[^\n,]+",
        judge_max_new_tokens=24,
    ),
    "nemoguard": GuardPreset(
        # JSON: {"User Safety": "safe|unsafe", "Response Safety": "safe|unsafe", ...}; the user's verdict
        # comes first, so it is an earlier field and the response's is read after it.
        name="nemoguard",
        safe_word="safe",
        unsafe_word="unsafe",
        verdict_prefix='{"User Safety": "',
        earlier=(EarlierField("User Safety", ("safe", "unsafe"), '", "Response Safety": "'),),
        template="nemoguard.jinja",
        category_pattern=r"(?:(?<=\"Safety Categories\": \")|(?<=, ))[^\",]+",
        judge_max_new_tokens=40,
    ),
    "wildguard": GuardPreset(
        # Three lines: "Harmful request: yes|no", "Response refusal: yes|no", "Harmful response: yes|no";
        # the first two are earlier fields, the third is read.
        name="wildguard",
        safe_word=" no",
        unsafe_word=" yes",
        verdict_prefix="Harmful request:",
        earlier=(
            EarlierField("Harmful request", (" no", " yes"), "\nResponse refusal:"),
            EarlierField("Response refusal", (" no", " yes"), "\nHarmful response:"),
        ),
        template="wildguard.jinja",
        verdict_words_in_prompt=False,
        judge_max_new_tokens=16,
    ),
    "gpt-oss-safeguard": GuardPreset(
        name="gpt-oss-safeguard",
        safe_word="SAFE",
        unsafe_word="VIOLATION",
        reasons_first=(
            "gpt-oss-safeguard writes its reasoning in the harmony analysis channel before a "
            "policy-defined label, and has no mode without it: no verdict exists at the first position "
            "it generates, so it cannot be scored per cut in one forward (score with a guard that "
            "answers first, e.g. --preset llama-guard-4 or qwen3guard-gen)"
        ),
    ),
    "granite-guardian-3.3": GuardPreset(
        # The template ends at `<|start_of_role|>judge{no_think}<|end_of_role|>`; the guard writes an
        # empty think block, then `<score> yes </score>` or `no` (yes: the criterion is met, a risk).
        # The newline between `</think>` and `<score>` is assumed (see GRANITE_SCORE_PREFIX).
        name="granite-guardian-3.3",
        safe_word=" no",
        unsafe_word=" yes",
        verdict_prefix=GRANITE_SCORE_PREFIX,
        template_kwargs={"guardian_config": {"criteria_id": "harm"}, "think": False},
        thinking_switch="think",
        judge_max_new_tokens=4,
    ),
    "granite-guardian-4.1": GuardPreset(
        # The criterion is a final user turn `<guardian><no-think>...### Criteria: ...### Scoring Schema:
        # ...` after the response (formats/granite_guardian_4_1.jinja), in Granite 4.1's own template;
        # the answer is the same as 3.3's.
        name="granite-guardian-4.1",
        safe_word=" no",
        unsafe_word=" yes",
        verdict_prefix=GRANITE_SCORE_PREFIX,
        closing_turn="granite_guardian_4_1.jinja",
        template_kwargs={"think": False},
        thinking_switch="think",
        judge_max_new_tokens=4,
    ),
    "granite-guardian-3": GuardPreset(
        name="granite-guardian-3",
        safe_word="No",
        unsafe_word="Yes",
        template_kwargs={"guardian_config": {"risk_name": "harm"}},
        judge_max_new_tokens=4,
    ),
    "shieldgemma": GuardPreset(
        name="shieldgemma",
        safe_word="No",
        unsafe_word="Yes",
        template_kwargs={"guideline": SHIELDGEMMA_GUIDELINE},
        eager_attention=True,
        judge_max_new_tokens=4,
    ),
}


def get_preset(name: str) -> GuardPreset:
    """Look up a preset by name, with an error that lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise ConfigError(f"unknown guard preset {name!r}; known presets: {known}, or 'custom'") from None
