"""Entities of real captions: the spaCy noun-chunk parser against the bundled vocabulary on holdout-like captions."""

from pathlib import Path

import pytest

from mumu.config import load_profile
from mumu.config.data import EntitiesConfig
from mumu.data.entities import find_entities
from mumu.errors import UserError

CAPTIONS = [line.strip() for line in (Path(__file__).parent / "data" / "holdout_captions.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
PARSER = EntitiesConfig(method="parser", max_entities=3)
VOCABULARY = EntitiesConfig(method="vocabulary", max_entities=3)


def phrases(caption: str, cfg: EntitiesConfig) -> list[str]:
    return [e.phrase for e in find_entities(caption, cfg)]


def test_parser_entities_are_spans_of_the_caption_in_order():
    for caption in CAPTIONS:
        entities = find_entities(caption, PARSER)
        assert 1 <= len(entities) <= 3, caption
        for e in entities:
            assert caption[e.span[0]:e.span[1]] == e.phrase and e.phrase.strip() == e.phrase
        starts = [e.span[0] for e in entities]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_parser_finds_objects_outside_the_vocabulary():
    # Head noun + compound nouns; adjectives ("vintage", "red") stay out as with the vocabulary.
    assert phrases(CAPTIONS[0], PARSER) == ["typewriter", "desk", "stack"]
    assert phrases(CAPTIONS[1], PARSER) == ["corgi", "beach", "sunset"]
    assert phrases(CAPTIONS[2], PARSER) == ["cyclists", "brick lighthouse"]  # "on a cloudy day": not an object
    assert phrases("A barista pours latte art into a coffee cup.", PARSER) == ["barista", "latte art", "coffee cup"]
    # Layout and photo words are not objects; pronouns are not entities.
    assert phrases("A red fire hydrant stands in front of a graffiti-covered wall.", PARSER) == ["fire hydrant", "wall"]
    assert phrases("The photo shows a laptop and a notebook on a table.", PARSER) == ["laptop", "notebook", "table"]
    assert phrases("It sleeps next to them.", PARSER) == []
    # One entity per distinct phrase, up to the plural: a detector cannot tell two of them apart.
    assert phrases("A dog chases two dogs and a cat.", PARSER) == ["dog", "cat"]
    assert phrases(CAPTIONS[19], EntitiesConfig(method="parser", max_entities=6)) == [
        "laptop", "notebook", "glasses", "table"]  # "The photo shows ... a pair of glasses"


def test_parser_covers_more_of_real_captions_than_the_vocabulary():
    parser = {c: phrases(c, PARSER) for c in CAPTIONS}
    vocabulary = {c: phrases(c, VOCABULARY) for c in CAPTIONS}
    assert "corgi" not in sum(vocabulary.values(), []) and "typewriter" not in sum(vocabulary.values(), [])
    found_p, found_v = sum(map(len, parser.values())), sum(map(len, vocabulary.values()))
    assert all(parser.values()) and found_p > found_v
    assert sum(1 for v in vocabulary.values() if not v) >= 3  # captions the vocabulary leaves without any crop


def test_real_profiles_use_the_parser_and_errors_are_one_line():
    assert load_profile("mumu-sdxl").data.entities.method == "parser"
    assert load_profile("unimo-g").data.entities.method == "parser"
    assert load_profile("tiny").data.entities.method == "vocabulary"
    with pytest.raises(UserError, match="spaCy pipeline 'no_such_pipeline' is not installed"):
        find_entities("a dog", EntitiesConfig(method="parser", spacy_pipeline="no_such_pipeline"))
