"""A hadolint-independent check of our Dockerfiles' own rules (runs where hadolint is not installed).

Rules: every FROM names a pinned tag (directly or through an ARG default), never `latest`; versions
are build arguments; the final stage switches to a numeric non-root USER; ENTRYPOINT/CMD/HEALTHCHECK
use the exec (JSON) form; pip installs use --no-cache-dir; the scorer image has a HEALTHCHECK.
Usage: python deploy/tools/dockerfile_lint.py [--require-healthcheck] Dockerfile [...]
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

_ARG = re.compile(r"^ARG\s+(\w+)(?:=(\S+))?", re.I)
_VAR = re.compile(r"\$\{?(\w+)\}?")


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with continuation lines joined."""

    keyword: str
    args: str
    line: int


def parse(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions (comments and blank lines dropped)."""
    out: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buf = ""
    return out


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, else None."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return [str(x) for x in value] if isinstance(value, list) else None


def commands(instructions: list[Instruction]) -> list[list[str]]:
    """Command lines the final image runs: ENTRYPOINT + CMD, and the HEALTHCHECK command."""
    final = _final_stage(instructions)
    entry: list[str] = []
    cmd: list[str] = []
    out: list[list[str]] = []
    for ins in final:
        if ins.keyword == "ENTRYPOINT":
            entry = exec_form(ins.args) or []
        elif ins.keyword == "CMD":
            cmd = exec_form(ins.args) or []
        elif ins.keyword == "HEALTHCHECK" and " CMD " in f" {ins.args} ":
            out.append(exec_form(ins.args.split("CMD", 1)[1].strip()) or [])
    if entry or cmd:
        out.insert(0, entry + cmd)
    return out


def _final_stage(instructions: list[Instruction]) -> list[Instruction]:
    idx = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[idx:]


def _resolve(image: str, args: dict[str, str | None]) -> str:
    return _VAR.sub(lambda m: args.get(m.group(1)) or m.group(0), image)


def check(text: str, require_healthcheck: bool = False) -> list[str]:
    """Violations of our rules, one message per problem (empty: clean)."""
    instructions = parse(text)
    problems: list[str] = []
    args: dict[str, str | None] = {}
    stages: set[str] = set()
    for ins in instructions:
        if ins.keyword == "ARG":
            m = _ARG.match(f"ARG {ins.args}")
            if m:
                args.setdefault(m.group(1), m.group(2))
        if ins.keyword == "FROM":
            parts = ins.args.split()
            image = _resolve(parts[0], args)
            if len(parts) >= 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
            if image in stages:
                continue
            last = image.rsplit("/", 1)[-1]
            if "$" in image:
                problems.append(f"line {ins.line}: FROM {parts[0]} uses a build argument without a default")
            elif "@sha256:" not in image and ":" not in last:
                problems.append(f"line {ins.line}: FROM {image} is not pinned to a tag")
            elif last.endswith(":latest"):
                problems.append(f"line {ins.line}: FROM {image} uses 'latest'")
        if ins.keyword in ("ENTRYPOINT", "CMD") and exec_form(ins.args) is None:
            problems.append(f"line {ins.line}: {ins.keyword} must use the exec (JSON array) form")
        pip = ins.keyword == "RUN" and re.search(r"pip\s+install", ins.args)
        if pip and "--no-cache-dir" not in ins.args:
            problems.append(f"line {ins.line}: pip install without --no-cache-dir")
        if ins.keyword in ("RUN", "ENV", "LABEL") and re.search(r":latest\b", ins.args):
            problems.append(f"line {ins.line}: refers to a 'latest' tag")
    if not any(k.endswith("VERSION") or k == "BASE_IMAGE" for k in args):
        problems.append("no version build arguments (ARG ..._VERSION / BASE_IMAGE)")
    final = _final_stage(instructions)
    users = [ins for ins in final if ins.keyword == "USER"]
    if not users:
        problems.append("the final stage never switches to a non-root USER")
    else:
        user = _resolve(users[-1].args.split(":")[0], args)
        if not user.isdigit() or int(user) == 0:
            problems.append(f"line {users[-1].line}: USER {user} must be a numeric non-root uid")
    health = [ins for ins in final if ins.keyword == "HEALTHCHECK"]
    if require_healthcheck and (not health or health[-1].args.upper().startswith("NONE")):
        problems.append("the image has no HEALTHCHECK")
    for ins in health:
        cmd = ins.args.split("CMD", 1)
        if len(cmd) == 2 and exec_form(cmd[1].strip()) is None:
            problems.append(f"line {ins.line}: HEALTHCHECK CMD must use the exec (JSON array) form")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Check the STAR Dockerfiles' own rules.")
    ap.add_argument("files", nargs="+", help="Dockerfiles to check")
    ap.add_argument("--require-healthcheck", action="store_true", help="fail when there is no HEALTHCHECK")
    args = ap.parse_args(argv)
    bad = 0
    for f in args.files:
        for p in check(Path(f).read_text(), args.require_healthcheck):
            print(f"{f}: {p}")
            bad = 1
    return bad


if __name__ == "__main__":
    raise SystemExit(main())
