"""Tensor-name rule tables: one table per on-disk format, read in both directions (no hand-written inverse).

A rule is a pair of templates `(on disk, ours)`; "ours" are the parameter names of higgslab's modules.
`{name}` in a template stands for one dotted component, `{name*}` for one or more. A key is renamed by the
first rule whose source side matches it whole (tried in table order, in either direction), and kept as is
when none does:

    rules = [("quantizer.vq.layers.{q}._codebook.embed", "quantizer.layers.{q}.codebook"),
             ("audio_codebook_embeddings.{rest*}", "embed_audio.{rest*}")]
    to_ours("quantizer.vq.layers.3._codebook.embed", rules)  # "quantizer.layers.3.codebook"
    to_disk("quantizer.layers.3.codebook", rules)            # "quantizer.vq.layers.3._codebook.embed"
"""

from __future__ import annotations

import functools
import re

Rules = list[tuple[str, str]]  # [(on-disk template, our template)], first match wins
FIELD = re.compile(r"\{(\w+)(\*?)\}")


@functools.cache
def pattern(template: str) -> re.Pattern:
    """`a.{q}.b.{rest*}` -> a regex with named groups: `{q}` one dotted component, `{rest*}` one or more."""
    parts, pos = [], 0
    for m in FIELD.finditer(template):
        parts += [re.escape(template[pos : m.start()]), f"(?P<{m[1]}>{'.+' if m[2] else '[^.]+'})"]
        pos = m.end()
    return re.compile("".join(parts) + re.escape(template[pos:]))


def rename(key: str, rules: Rules, source: int) -> str:
    """`key` matched against side `source` of each rule (0 on disk, 1 ours), rewritten by the other side."""
    for rule in rules:
        if m := pattern(rule[source]).fullmatch(key):
            return FIELD.sub(lambda f: m[f[1]], rule[1 - source])
    return key


def to_ours(key: str, rules: Rules) -> str:
    """On-disk tensor name -> ours."""
    return rename(key, rules, 0)


def to_disk(key: str, rules: Rules) -> str:
    """Our tensor name -> the on-disk one."""
    return rename(key, rules, 1)
