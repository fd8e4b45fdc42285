"""Today's guards: verdicts read where each guard writes them, or the guard refused with the reason.

Guards that reason before their verdict are refused at load (gpt-oss-safeguard; any template rendered in
a thinking mode), so no number is ever read at a position where the guard writes no verdict.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scorer_server.guards.loader import GuardConfig, load_guard
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
