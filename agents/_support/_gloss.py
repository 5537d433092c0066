"""An English gloss for tickets in Spanish, German or French, so the English embedding model can read them.

The MiniLM encoder the agents embed with was trained on English: "Hace tres semanas que hice el pedido y
sigue sin llegar" lands near nothing in particular, and retrieval then finds no confident match. Before a
non-English text is embedded it is followed by the English sense of the support words it contains, taken
from a fixed glossary (``gloss.yaml``): "... (weeks order still not arrived)". English text is left as it is,
so nothing changes for it. This is word-for-word lookup, not translation; it carries the topic, which is
what triage, retrieval and the review's topic checks compare.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml

from agentmesh.agents._support._keywords import PhraseMatcher, fold
from agentmesh.agents._support._spelling import repair_typos

__all__ = ["GLOSS_FILE", "Glossary", "for_embedding", "for_matching", "language_of"]

GLOSS_FILE = Path(__file__).with_name("gloss.yaml")

# Function words that tell the language of a ticket (folded). A text is glossed when it has more of one of
# the other languages' than of English's: a Spanish ticket quoting an English product name is still Spanish.
_STOPWORDS = {
    "en": frozenset(
        "the and i my is to of it for with have has not was this you what can please would could be are we "
        "our your".split()  # not "a", "me", "in", "an", "on": words of the other languages too
    ),
    "es": frozenset(
        "el la los las que de y en por para con mi mis una un no es lo me se del al pero como hace esta "
        "este ya hola puedo podrian sigue nuestro nuestra mas cuanto su sus muy tengo quiero desde ayer hoy "
        "nada todo tambien porque donde cuando hay estoy tiene".split()
    ),
    "de": frozenset(
        "der die das und ich nicht ist mit mein meine wir sie es ein eine zu auf fur von den dem bei seit "
        "kann habe hallo bitte noch unser unsere wie was wo warum heute auch nur schon aber oder kein keine "
        "vor mich mir".split()
    ),
    "fr": frozenset(
        "le la les et je ne pas est mon ma mes un une des du pour avec que qui sur depuis vous nous il "
        "bonjour j'ai c'est ce cette mais ou tres plus bien toujours rien votre vos notre nos au aux".split()
    ),
}
_WORD = re.compile(r"[\w'-]+")


class Glossary:
    """Foreign phrases (folded, ``*`` = any word ending) and their English sense."""

    def __init__(self, senses: dict[str, str]) -> None:
        self._exact = {p: s for p, s in senses.items() if "*" not in p}
        self._stems = [(re.compile(re.escape(p).replace(r"\*", r"\w*")), s) for p, s in senses.items() if "*" in p]
        self._phrases = PhraseMatcher(senses)  # longest phrase first, whole words, folded text

    @classmethod
    def load(cls, path: Path = GLOSS_FILE) -> Glossary:
        """The shipped glossary: every language's phrases in one table (the same word means the same)."""
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        senses: dict[str, str] = {}
        for table in raw.values():
            for phrase, sense in (table or {}).items():
                key = fold(str(phrase))
                if key and key not in senses:
                    senses[key] = " ".join(str(sense).split())
        return cls(senses)

    def gloss(self, text: str, *, foreign_only: bool = False) -> str:
        """The English senses of the glossary phrases in ``text``, in order, each once; with ``foreign_only``,
        only those of phrases that are not English words themselves ("app" -> "app" is left out)."""
        senses: list[str] = []
        for found in self._phrases.find(text):
            sense = self._exact.get(found)
            if sense is None:
                sense = next((s for stem, s in self._stems if stem.fullmatch(found)), "")
            if sense and not (foreign_only and fold(sense).split()[0] == found.split()[0]):
                senses.append(sense)
        return " ".join(dict.fromkeys(senses))


def language_of(text: str) -> str:
    """"en", "es", "de" or "fr" by function words; "" when the text has none (a subject line, a few words)."""
    words = _WORD.findall(fold(text))
    counts = {language: sum(w in stopwords for w in words) for language, stopwords in _STOPWORDS.items()}
    best = max(("es", "de", "fr"), key=lambda language: counts[language])
    if counts[best] > counts["en"]:
        return best
    return "en" if counts["en"] else ""


@functools.cache
def _shipped() -> Glossary:
    return Glossary.load()


def for_embedding(text: str) -> str:
    """``text`` as the English embedding model should read it: non-English text followed by its English
    gloss in parentheses; English text unchanged but for misspelt support words (``_spelling``). A text too short
    to tell ("Bestellung", "Refund") is glossed only with senses that are not the word itself, so an English
    subject line stays as it is."""
    if not text.strip():
        return text
    language = language_of(text)
    if language in ("en", ""):
        text = repair_typos(text)
    if language == "en":
        return text
    gloss = _shipped().gloss(text, foreign_only=not language)
    return f"{text} ({gloss})" if gloss else text


def for_matching(text: str) -> str:
    """``text`` as keyword and cue lists should read it: English (or too short to tell) with its misspelt
    support words repaired (``_spelling``: "traking" is "tracking"); other languages unchanged."""
    return repair_typos(text) if language_of(text) in ("en", "") else text
