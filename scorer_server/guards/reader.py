"""Where a guard's verdict is read, and how the probabilities read there become P(safe).

Most guards write their verdict first (after a fixed forced text). Some write other fields before it:
NemoGuard's JSON gives the user's verdict before the response's, WildGuard answers three lines. The
verdict then depends on what the guard wrote in those fields, so each cut is read at several prompts,
the nodes of a small tree: the root is the cut's prompt (with the forced text), and a node for every
choice of values of the earlier fields so far (`prompt + value_1 + then_1 + ... + value_i + then_i`).
Each node reads the first tokens of the next field's values, and the leaves the verdict classes. All
nodes of a cut are tails of the same row, so they cost extra tails, not extra forwards.

An earlier field takes the value the guard finds most likely among its allowed words (what its own
greedy decoding writes there: `argmax`, the default), or all of them weighted by their probabilities
(`marginal`). A guard without earlier fields has one node, the cut's prompt.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from scorer_server.guards.verdict import classes_p_safe


@dataclass(frozen=True)
class VerdictReader:
    """A guard's reading tree (see the module docstring)."""

    field_values: tuple[tuple[str, ...], ...] = ()
    """Per earlier field, the words the guard may write there."""
    field_then: tuple[str, ...] = ()
    """Per earlier field, the text after its value, up to the next field or the verdict."""
    field_ids: tuple[tuple[int, ...], ...] = ()
    """Per earlier field, its values' first tokens (in context)."""
    class_ids: tuple[int, ...] = ()
    safe: tuple[bool, ...] = ()
    mode: str = "argmax"

    def paths(self) -> Iterator[tuple[int, ...]]:
        """The nodes, breadth first: () and then every tuple of value indices of the first fields."""
        level: list[tuple[int, ...]] = [()]
        while level:
            yield from level
            depth = len(level[0])
            if depth == len(self.field_values):
                return
            level = [(*p, v) for p in level for v in range(len(self.field_values[depth]))]

    @property
    def nodes(self) -> int:
        n, width = 1, 1
        for values in self.field_values:
            width *= len(values)
            n += width
        return n

    def texts(self, prompt: str) -> list[str]:
        """Each node's prompt text, given the cut's (`prompt`, forced text included)."""
        out = []
        for path in self.paths():
            text = prompt
            for field, value in enumerate(path):
                text += self.field_values[field][value] + self.field_then[field]
            out.append(text)
        return out

    def ids(self) -> list[tuple[int, ...]]:
        """Per node, the token ids whose logits it reads."""
        return [
            self.field_ids[len(p)] if len(p) < len(self.field_ids) else self.class_ids for p in self.paths()
        ]

    def prompt_ids(self) -> tuple[int, ...]:
        """The token ids a prompt's verdict is read from at the first node: the first earlier field's
        values when the guard writes one (NemoGuard's user verdict, WildGuard's harmful request: the
        prompt's own verdict), else the verdict classes."""
        return self.field_ids[0] if self.field_ids else self.class_ids

    def prompt_p_safe(self, logits: Sequence[float], temperature: float = 1.0) -> float:
        """P(safe) of a judged prompt from the first node's logits over `prompt_ids()`: a field's first
        value is its safe answer (EarlierField), the classes count as safe as the preset says."""
        if self.field_ids:
            safe = (True,) + (False,) * (len(self.field_ids[0]) - 1)
            return classes_p_safe(logits, safe, temperature)
        return classes_p_safe(logits, self.safe, temperature)

    def p_safe(
        self, logits: Sequence[Sequence[float]], temperature: float = 1.0, safe: tuple[bool, ...] = ()
    ) -> float:
        """P(safe) from each node's logits over its `ids()` (node order). Earlier fields are read at
        temperature 1 (the guard's own choice); the verdict at `temperature`."""
        index = {p: k for k, p in enumerate(self.paths())}
        safe = safe or self.safe
        if self.mode == "marginal":
            return self._marginal((), index, logits, temperature, safe)
        path: tuple[int, ...] = ()
        while len(path) < len(self.field_values):
            row = logits[index[path]]
            path += (max(range(len(row)), key=row.__getitem__),)
        return classes_p_safe(logits[index[path]], safe, temperature)

    def _marginal(
        self,
        path: tuple[int, ...],
        index: dict[tuple[int, ...], int],
        logits: Sequence[Sequence[float]],
        temperature: float,
        safe: tuple[bool, ...],
    ) -> float:
        row = logits[index[path]]
        if len(path) == len(self.field_values):
            return classes_p_safe(row, safe, temperature)
        top = max(row)
        weights = [math.exp(x - top) for x in row]
        total = sum(weights)
        return sum(
            w / total * self._marginal((*path, v), index, logits, temperature, safe)
            for v, w in enumerate(weights)
        )
