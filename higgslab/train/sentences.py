"""Varied English sentences for the synthetic corpus, generated offline from templates and word lists.

    make_sentences(3000, seed=0)   # 3000 distinct sentences, the same list for the same seed

Templates cover statements, questions, exclamations, numbers and lists, from three words to about twenty,
so that clip duration varies with text length (what the LM must learn to track).
"""

from __future__ import annotations

import random

from higgslab.errors import HiggsLabError

WORDS = {
    "name": "Anna Ben Clara David Emma Felix Grace Henry Iris Jack Kate Leo Maria Noah Olivia Peter Rosa Sam "
    "Tom Vera".split(),
    "person": "teacher doctor farmer pilot baker painter student driver singer writer neighbour captain "
    "gardener engineer nurse child grandmother fisherman".split(),
    "animal": "cat dog horse bird fox rabbit owl duck goat mouse bear wolf".split(),
    "thing": "book letter key lamp chair table cup window door bicycle clock map basket coat box "
    "umbrella camera guitar ticket kettle".split(),
    "place": "garden kitchen station market library harbour forest village museum river school "
    "bakery hospital park bridge office beach hill".split(),
    "adjective": "old new small large red blue green quiet noisy bright dark warm cold heavy empty "
    "strange lovely broken famous tiny".split(),
    "verb_past": "found opened carried painted cleaned dropped bought borrowed fixed sold lost "
    "watched washed moved hid".split(),
    "verb_ing": "reading singing walking cooking writing waiting sleeping running laughing working "
    "drawing swimming".split(),
    "time": [
        "this morning",
        "yesterday",
        "at noon",
        "on Monday",
        "last winter",
        "after dinner",
        "before sunrise",
        "tonight",
        "in the evening",
        "on Friday",
        "next week",
        "every day",
    ],
    "weather": "raining snowing sunny windy cloudy foggy".split(),
    "feeling": "happy tired surprised worried calm excited hungry proud".split(),
    "adverb": "slowly quickly carefully quietly happily suddenly gently loudly".split(),
    "number": [str(n) for n in (2, 3, 4, 5, 7, 9, 10, 12, 15, 20, 24, 30, 42, 50, 99, 100)],
}

TEMPLATES = [
    "{name} {verb_past} the {thing}.",
    "The {animal} is {verb_ing}.",
    "Where is the {thing}?",
    "It is {weather} today.",
    "{name} was {feeling}.",
    "The {person} {verb_past} a {adjective} {thing} {time}.",
    "{name} and {name} went to the {place} {time}.",
    "Have you seen the {adjective} {animal} near the {place}?",
    "Why did the {person} leave the {thing} in the {place}?",
    "What a {adjective} {thing}!",
    "Please put the {thing} on the {adjective} table.",
    "The {adjective} {animal} was {verb_ing} {adverb} by the {place}.",
    "There are {number} {animal}s and {number} {thing}s in the {place}.",
    "{name} {verb_past} {number} {thing}s for the {person}.",
    "I think the {person} is {verb_ing} in the {place}.",
    "When it was {weather}, {name} stayed at the {place} and {verb_past} the {thing}.",
    "The {person} said that the {thing} was too {adjective} to carry.",
    "{time}, the {person} {verb_past} a {thing}, a {thing} and a {adjective} {thing}.",
    "Do not forget the {thing}, because we are going to the {place} {time}.",
    "Although the {place} was {adjective}, {name} felt {feeling} and kept {verb_ing}.",
    "The {adjective} {person} {adverb} {verb_past} the {thing} while the {animal} was {verb_ing} "
    "near the {place}.",
    "{name} asked the {person} whether the {adjective} {thing} from the {place} could be {verb_past} "
    "before {time}.",
    "If it is {weather} {time}, we will stay in the {place}, and {name} will keep {verb_ing} until "
    "the {person} comes home.",
    "It took {number} minutes to walk from the {place} to the {place}.",
    "Is the {thing} {adjective} or {adjective}?",
    "Wow, the {animal} {verb_past} my {thing}!",
]


def fill(template: str, rng: random.Random) -> str:
    """Replace each `{slot}` with a word drawn from `WORDS[slot]`; capitalise the first letter."""
    parts = template.split("{")
    out = [parts[0]]
    for part in parts[1:]:
        slot, rest = part.split("}", 1)
        out.append(rng.choice(WORDS[slot]) + rest)
    text = "".join(out)
    return text[0].upper() + text[1:]


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` distinct sentences, deterministic by `seed` (templates drawn uniformly, then slots)."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    for _ in range(100 * n):
        if len(seen) == n:
            return list(seen)
        seen.setdefault(fill(rng.choice(TEMPLATES), rng))
    raise HiggsLabError(f"could not draw {n} distinct sentences from the templates (got {len(seen)})")
