"""The first check on any model directory a user names: it exists and holds a Hugging Face model."""

from __future__ import annotations

from pathlib import Path

from star_contract.errors import ConfigError


def require_model_dir(path: str | Path, flag: str, adapter_ok: bool = False) -> Path:
    """`path` as a Path, or a ConfigError naming `flag` when it is not a model directory.

    With `adapter_ok`, a peft adapter directory (adapter_config.json) counts as well.
    """
    where = Path(path)
    if not where.is_dir():
        raise ConfigError(f"{flag} {path} does not exist")
    if (where / "config.json").is_file() or (adapter_ok and (where / "adapter_config.json").is_file()):
        return where
    wanted = "config.json (or adapter_config.json)" if adapter_ok else "config.json"
    raise ConfigError(
        f"{flag} {path} is not a Hugging Face model directory: it has no {wanted}; name the directory "
        "that holds the config, the weights and the tokenizer files"
    )
