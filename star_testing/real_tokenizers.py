"""The real tokenizers of today's guards, built from the artefacts in ../shared/guard-templates
(SOURCES-2.md) without a model hub: Qwen3 (Qwen3Guard), Llama 4 (Llama Guard 4) and Mistral v3
(WildGuard). Each is a transformers fast tokenizer (`PreTrainedTokenizerFast`, saved as
"TokenizersBackend", so AutoTokenizer loads its tokenizer.json as it is). The Llama 3 one (Llama Guard 3,
NemoGuard) is `real_guards.llama3_tokenizer`.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

QWEN3_VOCAB = "qwen3.vocab.json"
QWEN3_MERGES = "qwen3.merges.txt"
QWEN3_SPECIALS = "qwen3.special_tokens.json"
LLAMA4_RANKS = "llama4.tokenizer.model"
LLAMA4_SOURCE = "llama4.tokenizer.py"
MISTRAL_V3_MODEL = "mistral-v3.tokenizer.model"


def qwen3_tokenizer(artefacts: str | Path) -> Any:
    """The real Qwen3 fast tokenizer: byte-level BPE from qwen3.vocab.json + qwen3.merges.txt, NFC
    normalisation and the Qwen2 pre-tokenize regex of qwen3.special_tokens.json (as Qwen2/2.5/3's
    tokenizer.json), and the specials 151643..151668 of that JSON as added special tokens with their ids;
    eos `<|im_end|>`, pad `<|endoftext|>`, no BOS (Qwen has none)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = Path(artefacts)
    spec = json.loads((folder / QWEN3_SPECIALS).read_text(encoding="utf-8"))
    tok = Tokenizer(models.BPE.from_file(str(folder / QWEN3_VOCAB), str(folder / QWEN3_MERGES)))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(spec["pretokenize_regex"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    for text, token_id in sorted(spec["special_tokens"].items(), key=lambda kv: kv[1]):
        if tok.get_vocab_size() != token_id:
            raise ValueError(f"{text} should get id {token_id}, the next free id is {tok.get_vocab_size()}")
        tok.add_special_tokens([AddedToken(text, special=True, normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def llama4_source_values(artefacts: str | Path) -> tuple[list[str], str]:
    """Llama 4's special tokens in id order (from 200000) and its O200K_PATTERN split regex, read from
    Meta's models/llama4/tokenizer.py as text (never executed): its module-level lists are evaluated from
    their literals, `+` and `get_reserved_special_tokens(...)` calls only, and the list is padded with
    `<|reserved_special_token_i|>` to `num_reserved_special_tokens`, as its Tokenizer.__init__ does."""
    tree = ast.parse((Path(artefacts) / LLAMA4_SOURCE).read_text(encoding="utf-8"))
    values: dict[str, Any] = {}

    def reserved(name: str, count: int, start_index: int = 0) -> list[str]:
        return [f"<|{name}_reserved_special_token_{i}|>" for i in range(start_index, start_index + count)]

    def evaluate(node: ast.expr) -> Any:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return evaluate(node.left) + evaluate(node.right)
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id != "get_reserved_special_tokens" or node.keywords:
                raise ValueError(f"unexpected call {ast.unparse(node)}")
            return reserved(*[ast.literal_eval(a) for a in node.args])
        return ast.literal_eval(node)

    def assigned(body: list[ast.stmt], names: tuple[str, ...]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target = stmt.targets[0]
                if isinstance(target, ast.Name) and target.id in names:
                    values[target.id] = evaluate(stmt.value)

    lists = (
        "LLAMA4_TEXT_POST_TRAIN_SPECIAL_TOKENS",
        "LLAMA4_VISION_SPECIAL_TOKENS",
        "LLAMA4_REASONING_SPECIAL_TOKENS",
        "LLAMA4_SPECIAL_TOKENS",
        "BASIC_SPECIAL_TOKENS",
    )
    assigned(tree.body, lists)
    tokenizer_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Tokenizer")
    assigned(tokenizer_class.body, ("num_reserved_special_tokens", "O200K_PATTERN"))
    specials = [*values["BASIC_SPECIAL_TOKENS"], *values["LLAMA4_SPECIAL_TOKENS"]]
    count = values["num_reserved_special_tokens"]
    if len(set(specials)) != len(specials) or len(specials) > count:
        raise ValueError("llama4 tokenizer.py: duplicate or too many special tokens")
    specials += [f"<|reserved_special_token_{i}|>" for i in range(count - len(specials))]
    return specials, values["O200K_PATTERN"]


def llama4_tokenizer(artefacts: str | Path) -> Any:
    """The real Llama 4 fast tokenizer (Llama Guard 4's): Meta's tiktoken ranks (200,000) with the
    O200K_PATTERN split and the 2,048 specials of its tokenizer.py from id 200000, converted by
    transformers' TikTokenConverter; bos `<|begin_of_text|>`, eos `<|eot|>`, pad `<|finetune_right_pad|>`.
    Like `llama3_tokenizer`, it adds no BOS of its own: templates write `<|begin_of_text|>`."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    specials, pattern = llama4_source_values(artefacts)
    converted = TikTokenConverter(
        vocab_file=str(Path(artefacts) / LLAMA4_RANKS), pattern=pattern, extra_special_tokens=specials
    ).converted()
    return PreTrainedTokenizerFast(
        tokenizer_object=converted,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot|>",
        pad_token="<|finetune_right_pad|>",
    )


def mistral_v3_tokenizer(artefacts: str | Path, legacy: bool = True) -> Any:
    """The real Mistral v3 SentencePiece tokenizer (32,768 pieces; WildGuard is a Mistral-7B-v0.3
    fine-tune) as a fast tokenizer, without the sentencepiece package: the .model protobuf is parsed with
    transformers' bundled schema and converted by `SpmConverter.build_tokenizer_from_spm_proto` (BPE,
    byte fallback, the model's normaliser spec, user-defined pieces kept whole). The 750 control pieces
    (`<s>`, `</s>`, `[INST]`, `[/INST]`, `[TOOL_CALLS]`, ...) become special added tokens, as transformers'
    LlamaConverter registers them: "[INST]" in text is id 3, not characters as in raw SentencePiece.
    Adds BOS (`<s>`, id 1) with add_special_tokens=True, like LlamaTokenizerFast(add_bos_token=True).

    `legacy` is the dummy-prefix rule after an added token (transformers' `legacy` flag): True (the
    converter's default) prefixes every chunk between added tokens with "▁", so "<s>Harmful" encodes
    like BOS + "Harmful"; False only the start of the text, so "<s>Harmful" gives "H", "arm", ... and
    "[INST] You" gives "▁You" instead of "▁", "▁You". WildGuard's own tokenizer config is not known."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    proto.ParseFromString((Path(artefacts) / MISTRAL_V3_MODEL).read_bytes())
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=legacy)
    control = [p.piece for p in proto.pieces if p.type == 3]  # CONTROL
    tok.add_special_tokens([AddedToken(text, special=True, normalized=False) for text in control])
    spec = proto.trainer_spec
    bos, eos, unk = spec.bos_piece, spec.eos_piece, spec.unk_piece
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, spec.bos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk)
