"""Entity phrases of a caption: the words that get a crop (MUMU) or a segment (UNIMO-G) in the prompt.

Method "parser" (the real profiles'): the noun chunks of a spaCy English pipeline, each cut to its head noun and
the compound nouns right before it ("a red brick lighthouse" -> "brick lighthouse", "a vintage typewriter" ->
"typewriter"): any object a caption names, not only listed ones. Adjectives stay out as with the vocabulary.
Chunks headed by a pronoun or by a layout / photo word ("front", "background", "photo") are skipped.
spaCy is imported only by this method, so the tiny profile does not load it.

Method "vocabulary" (tiny profile, tests): longest match of known object phrases
(mumu/resources/entities.txt, or `EntitiesConfig.vocabulary`) against the caption's words —
case-insensitive, on word boundaries, the last word optionally plural ("dogs", "boxes", "cherries"),
left to right without overlaps, at most `max_entities`, in caption order, one per distinct phrase.
Determiners and adjectives stay out because only nouns are in the list ("a red car" → "car").

Why not "vlm" (asking the captioner to list the objects): the crop must be inserted *at the entity's
words in the caption*, so an entity is only usable if it is a span of the caption — a free-form list
from a VLM needs matching back to the caption anyway, which is this matcher. It would also need a
second prompt outside the captioner contract (`caption(images)`), cost one more VLM pass per image,
and be non-deterministic across model versions, while the vocabulary method is offline, exact and
reproducible. Config validation rejects method "vlm" with that explanation.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from mumu.config.data import EntitiesConfig
from mumu.data.work import Entity
from mumu.errors import UserError

BUNDLED_VOCABULARY = Path(__file__).resolve().parent.parent / "resources" / "entities.txt"
_WORD = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")


def _words(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(text)]


def _singulars(word: str) -> list[str]:
    """The word itself, then its possible singulars (only used for a phrase's last word)."""
    out = [word]
    if word.endswith("ies") and len(word) > 4:
        out.append(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        out.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        out.append(word[:-1])
    return out


def same_phrase(a: str, b: str) -> bool:
    """Equal up to case and the plural of the last word ("Hot Dogs" ~ "hot dog", "buses" ~ "bus")."""
    wa, wb = [w for _, _, w in _words(a)], [w for _, _, w in _words(b)]
    if not wa or len(wa) != len(wb) or wa[:-1] != wb[:-1]:
        return False
    return bool(set(_singulars(wa[-1])) & set(_singulars(wb[-1])))


class Vocabulary:
    """A set of phrases stored as word tuples, matched longest-first."""

    def __init__(self, phrases: list[str]):
        self.phrases = {tuple(w for _, _, w in _words(p)) for p in phrases}
        self.phrases.discard(())
        self.longest = max((len(p) for p in self.phrases), default=0)

    @classmethod
    def from_file(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"entity vocabulary {path} not found")
        lines = path.read_text(encoding="utf-8").splitlines()
        return cls([ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")])

    def _match_at(self, words: list[tuple[int, int, str]], i: int) -> tuple[int, tuple[str, ...]] | None:
        for n in range(min(self.longest, len(words) - i), 0, -1):
            head = tuple(w for _, _, w in words[i : i + n - 1])
            for last in _singulars(words[i + n - 1][2]):
                if head + (last,) in self.phrases:
                    return n, head + (last,)
        return None

    def find(self, caption: str, max_entities: int) -> list[Entity]:
        words = _words(caption)
        found: list[Entity] = []
        seen: set[tuple[str, ...]] = set()
        i = 0
        while i < len(words) and len(found) < max_entities:
            hit = self._match_at(words, i)
            if hit is None:
                i += 1
                continue
            n, canonical = hit
            start, end = words[i][0], words[i + n - 1][1]
            # One entity per distinct phrase: a detector cannot tell two "dog"s in a caption apart.
            if canonical not in seen:
                seen.add(canonical)
                found.append(Entity(phrase=caption[start:end], span=(start, end)))
            i += n
        return found


@functools.lru_cache(maxsize=8)
def load_vocabulary(path: str | None) -> Vocabulary:
    return Vocabulary.from_file(path or BUNDLED_VOCABULARY)


# Nouns that name a place in the frame or the picture itself, not an object Grounding DINO can box.
NOT_OBJECTS = frozenset({
    "front", "back", "side", "top", "bottom", "middle", "center", "centre", "left", "right", "background",
    "foreground", "distance", "photo", "photograph", "picture", "image", "view", "shot", "close", "up", "pair",
    "group", "lot", "day", "night",
})


@functools.lru_cache(maxsize=2)
def load_parser(pipeline: str):
    """A spaCy pipeline with what noun chunks need (tagger, parser); loaded once per process."""
    try:
        import spacy  # optional: only the 'parser' entities method needs it
    except ImportError:
        raise UserError("entities method 'parser' needs spaCy (pip install -e . installs it)") from None
    try:
        return spacy.load(pipeline, exclude=["ner", "lemmatizer"])
    except OSError:
        raise UserError(f"spaCy pipeline {pipeline!r} is not installed (data.entities.spacy_pipeline)") from None


def parser_entities(caption: str, pipeline: str, max_entities: int) -> list[Entity]:
    """Head noun + its compound nouns of each noun chunk, in caption order, one per distinct phrase."""
    found: list[Entity] = []
    for chunk in load_parser(pipeline)(caption).noun_chunks:
        root = chunk.root
        if root.pos_ not in {"NOUN", "PROPN"} or root.lower_ in NOT_OBJECTS:
            continue
        first = root
        # Compound nouns right before the head, chained ("tennis ball court"): each modifies a word of the span.
        while first.i > chunk.start and (prev := first.doc[first.i - 1]).dep_ == "compound" \
                and first.i <= prev.head.i <= root.i:
            first = prev
        start, end = first.idx, root.idx + len(root.text)
        phrase = caption[start:end]
        if not any(same_phrase(phrase, e.phrase) for e in found):
            found.append(Entity(phrase=phrase, span=(start, end)))
        if len(found) == max_entities:
            break
    return found


def find_entities(caption: str, cfg: EntitiesConfig) -> list[Entity]:
    """Entity phrases of `caption` with their character spans, in caption order."""
    if cfg.method == "parser":
        return parser_entities(caption, cfg.spacy_pipeline, cfg.max_entities)
    return load_vocabulary(cfg.vocabulary).find(caption, cfg.max_entities)
