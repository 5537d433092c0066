"""The sentiment model's input signals for one message, and the supervised head that reads them.

Shared by ``model.py`` (served by Triton) and by the calibration in ``bench/bench_support_quality.py``
(which fits the head on the dev split of the support evaluation set and writes ``head.npz``), so that what
is fitted is exactly what is served. Depends on numpy and vaderSentiment only: the model folder stays
self-contained for a GPU Triton.

Signals, per message (:data:`SIGNALS` names them). None grows with the message's length (a long polite
email is not more negative than its short form, a terse complaint not more neutral than a long one):

- courtesy formulae (greetings, sign-offs, a closing "thanks", "merci de ...") are taken out first:
  politeness, not feeling;
- VADER (the ``vaderSentiment`` package plus ``lexicon.tsv``'s additions) per sentence: the mean, the most
  negative and the most positive sentence; and the neg/pos proportions of the whole;
- irony: praise beside trouble ("Great job. Locked out again.", "Thanks a lot for charging me twice"), a
  praise exclamation opening a sentence of a message that reports trouble, "oh great"; ironic praise is kept
  from VADER and from the thanks cue and counted;
- cue counts a lexicon misses, in English, Spanish, German and French: time waited, repeated attempts or
  unanswered contacts, being unable to work, urgency, money taken wrongly or a security scare, damage on
  arrival, a demand for the money back, something that does not work said the short way ("won't open",
  "503", "rien reçu"), insistence ("??"), thanks and praise, and the plain-request phrasing ("I would
  like...", "How do I") that VADER reads as positive;
- the embedding signal, for what a lexicon misses and for any language: the message's MiniLM embedding
  (computed by ``minilm_embedding``) compared with prototype sentences of anger, of frustration (time
  waited, urgency, being unable to work), of thanks and of plain requests, in four languages.

The head is a multinomial logistic regression over the standardised signals: negative / neutral / positive
probabilities; SCORE = P(positive) - P(negative).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

__all__ = ["CLASSES", "CUES", "PROTOTYPES", "SIGNALS", "Head", "Signals"]

CLASSES = ("negative", "neutral", "positive")

# Prototypes describe feelings and situations, not topics, so a calm refund request is not "negative".
NEGATIVE = [
    "I am furious, this is completely unacceptable.",
    "This is the worst service I have ever had, I am so angry.",
    "I am very disappointed and frustrated with you.",
    "You keep ignoring me and I am fed up with this.",
    "I am really upset about how I have been treated.",
    "Estoy muy enfadado, esto es inaceptable.",
    "Ich bin sehr verärgert, das ist inakzeptabel.",
    "Je suis très mécontent, c'est inacceptable.",
]
FRUSTRATION = [
    "I have been waiting for weeks and it still has not arrived.",
    "This is the third time I am writing and nobody answers me.",
    "I cannot do my work because it keeps crashing.",
    "We are completely stuck and cannot work until this is fixed.",
    "It arrived broken and I want my money back.",
    "I need this solved today, it is urgent.",
    "I have spent hours on this and still cannot get it to work.",
    "I have tried several times and it still does not work.",
    "I wrote to you twice and nobody replied.",
    "This is costing me money and customers.",
    "Nothing works and we cannot process any orders.",
    "Someone took money from my card for something I never bought.",
    "You took my money and I want it back now.",
    "It keeps failing and nobody can tell me why.",
    "Llevo semanas esperando y nadie me da una respuesta.",
    "Ich warte seit Wochen und niemand antwortet mir.",
    "J'attends depuis des semaines et personne ne me répond.",
]
POSITIVE = [
    "Thank you so much, I am really happy with the service.",
    "Great job, everything works perfectly now.",
    "I love this product, you were very helpful.",
    "I appreciate your quick and kind support.",
    "Muchas gracias, la atención fue excelente.",
    "Vielen Dank, ich bin sehr zufrieden mit dem Service.",
    "Merci beaucoup, le service est excellent.",
    "Alles kam perfekt an, danke für den tollen Service.",
    "Todo perfecto, muchas gracias por la rapidez.",
    "Tout était parfait, merci beaucoup.",
]
NEUTRAL = [
    "I would like to update my shipping address.",
    "What are your opening hours?",
    "Please send me a copy of my invoice.",
    "How do I export my orders to a CSV file?",
    "Can I add another user to our team plan?",
    "Please cancel my subscription before it renews.",
    "How do I reset my password?",
    "Where can I create an API key?",
    "¿Cómo puedo cambiar mi dirección de envío?",
    "Wie kann ich meine Rechnung herunterladen?",
    "Comment puis-je modifier mon adresse ?",
]
PROTOTYPES = {"negative": NEGATIVE, "frustration": FRUSTRATION, "positive": POSITIVE, "neutral": NEUTRAL}

_NUMBER = (
    r"(?:\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|a couple of|several|many|"
    r"dos|tres|cuatro|cinco|seis|siete|ocho|nueve|diez|quince|varias|muchas|zwei|drei|vier|funf|sechs|sieben|acht|"
    r"neun|zehn|vierzehn|mehreren?|vielen|deux|trois|quatre|cinq|six|sept|huit|neuf|dix|quinze|plusieurs)"
)
# Each cue: a regular expression over the folded text (lower case, accents removed). Counted, capped at 3.
CUES: dict[str, str] = {
    "waited": (
        rf"\b{_NUMBER} (?:whole )?(?:days?|weeks?|months?|hours?|dias|semanas|meses|horas|tagen?|wochen|monaten?"
        r"|stunden?|jours|semaines|mois|heures)\b|\bfor ages\b|\bforever\b|\bstill (?:hasn'?t|haven'?t|not|no|"
        r"nothing|waiting|missing|broken|no sign|don'?t|doesn'?t|won'?t|can'?t|isn'?t)\b|\bnot (?:arrived|received) yet\b|\bllevo\b|\btodavia no\b|"
        r"\baun no\b|\bimmer noch\b|\bnoch (?:immer|keine?n?)\b|\bseit\b|\btoujours pas\b|\bdepuis\b|"
        r"\bsigo esperando\b|\bwarte\b|\bj'attends\b|\bwaiting\b|\besperando\b"
        r"|\bsince (?:monday|tuesday|wednesday|thursday|friday|saturday|sunday|last|yesterday|this morning|early)\b"
        r"|\bit'?s been\b|\bit has been\b|\b(?:cela|ca) fait\b|\bhace (?:ya )?(?:mas de )?\w+ (?:dias|semanas|meses|horas)\b"
        r"|\bwas (?:due|supposed to (?:arrive|come|be here))\b|\bnothing since\b"
    ),
    "repeated": (
        r"\bagain\b|\btwice\b|\b(?:three|four|five|several|many|multiple) times\b|\bevery (?:single )?time\b|"
        r"\bkeeps?\b|\bkept\b|\bthird time\b|\bnobody\b|\bno one\b|\bno (?:reply|answer|response)\b|"
        r"\bnever (?:arrives?|came|replied|answered|got)\b|\bcopy-paste\b|\bsame answer\b|\bignor\w*\b|"
        r"\b(?:second|third|fourth|fifth|sixth|2nd|3rd|4th|5th|umpteenth) (?:time|one)\b|\bonce again\b|"
        r"\bzum (?:zweiten|dritten|vierten|funften|wiederholten|x-ten) mal\b|\b(?:segunda|tercera|cuarta|quinta) vez\b|"
        r"\b(?:deuxieme|troisieme|quatrieme|cinquieme|enieme) fois\b|\bencore (?:une|un)\b|\bya van\b|"
        r"\bin a row\b|\byet another\b|\b[2-9] ?x\b|\b(?:zwei|drei) ?mal\b|\b(?:dos|tres) veces\b|\b(?:deux|trois) fois\b|\bseguid[oa]s\b|\bd'affilee\b|"
        r"\bhintereinander\b|\bnacheinander\b|\botra semana (?:mas )?sin\b|\bencore une semaine\b|"
        r"\botra vez\b|\bvarias veces\b|\bnadie\b|\bde nuevo\b|\bschon wieder\b|\bmehrmals\b|\bniemand\b|"
        r"\bwieder\b|\bkeine antwort\b|\bplusieurs fois\b|\bpersonne\b|\bencore une fois\b|\baucune reponse\b"
    ),
    "blocked": (
        r"\b(?:can'?t|cannot|can not|unable to|couldn'?t) (?:work|do (?:my|our|any)|get (?:any|anything)|"
        r"process|move forward|use|access|log ?in|sign ?in|get back|get into|complete|continue|finish)\b|"
        r"\bstuck\b|\blocked out\b|\bcosting (?:me|us)\b|\blosing (?:money|orders|customers|sales)\b|"
        r"\bwhole (?:afternoon|morning|day)\b|\bhours\b|\bno puedo\b|\bno podemos\b|\bkann nicht\b|"
        r"\bkonnen nicht\b|\bkann ich nicht\b|\bkonnen wir nicht\b|\bnicht arbeiten\b|\bne peux\b|"
        r"\bne pouvons\b|\bimpossible\b|\bunmoglich\b|\bimposible\b|\bnothing (?:loads|works)\b"
        r"|\b(?:very|extremely|painfully|really|so) slow\b|\btim(?:e|es|ing) out\b"
        r"|\b(?:haven'?t|hasn'?t|have not|not) (?:been able|managed) to\b|\bidle\b"
        r"|\b(?:is|its|it's|got|been|now|was|am) (?:locked|blocked)\b|\bcan'?t get (?:in|into|back|my|the|to)\b"
        r"|\b(?:kann|konnen|konnte|konnten)\b[^.!?]{0,40}\bnicht mehr\b"
        r"|\b(?:keine|keinen|keinerlei) (?:einzige )?(?:bestellung|arbeit)\w*\b|\bnon (?:plus )?(?:travailler|utiliser)\b|\bne (?:peux|pouvons) (?:plus|pas)\b"
    ),
    "urgent": (
        r"\burgent\w*\b|\bimmediately\b|\basap\b|\bright now\b|\btoday\b|\bat once\b|\bdringend\b|"
        r"\bsofort\b|\bimmediatement\b|\bde inmediato\b|\bya mismo\b|\bcuanto antes\b"
    ),
    "wronged": (
        r"\bnever (?:ordered|placed|bought|made|authori[sz]ed|signed up)\b|\bstill charged\b|\bstill took\b|"
        r"\bwithout (?:my )?(?:permission|consent|asking)\b|\bstolen\b|\bstole\b|\bhacked\b|\bcompromised\b|"
        r"\bfraud\w*\b|\bdispute\b|\bmy bank\b|\bscam\w*\b|\bnot acceptable\b|\bunacceptable\b|\bridiculous\b|"
        r"\bi cancelled\b|\bpromised\b|\bmisleading\b|\bsin (?:mi )?permiso\b|\bohne (?:meine )?zustimmung\b|"
        r"\bsans (?:mon )?accord\b|\bgehackt\b|\bpirate\b"
        r"|\bnever (?:asked|agreed|signed)\b|\bdidn'?t (?:ask|agree)\b|\b(?:this|that|it) (?:wasn'?t|was not) me\b"
        r"|\bhaven'?t (?:bought|ordered|made)\b|\bdidn'?t (?:make|buy|order|authori[sz]e)\b|\bque no hice\b|\bnicht bestellt\b|\bwithout (?:any )?(?:warning|reminder|notice|telling me)\b|\bsin avisar\b|\bohne vorwarnung\b|\bsans prevenir\b|\bnobody told me\b|\bneither of us\b"
    ),
    "money_back": (
        r"\bmoney back\b|\bwant (?:a|my) refund\b|\brefund (?:now|today|immediately)\b|\bdevuelvan el dinero\b|"
        r"\bmi dinero\b|\bmein geld\b|\bgeld zuruck\b|\bmon argent\b|\bremboursez-moi\b|\bje veux etre rembourse"
        r"|\b(?:i'?d like|i want|i would like|give me|i expect) (?:a |my )?(?:full )?refund\b|\brather have (?:my|the) money\b"
        r"|\bnot (?:a |another )(?:replacement|exchange|new one)\b|\bno (?:un|otr[oa]) (?:cambio|recambio)\b"
        r"|\bkeinen ersatz\b|\bpas (?:un|d'|de) ?(?:echange|remplacement)\b"
    ),
    "damaged": (
        r"\bbroken\b|\bcracked\b|\bdamaged\b|\bdefective\b|\bfaulty\b|\bsmashed\b|\bcrushed\b|\bdead\b|"
        r"\broto\b|\brota\b|\bdanad[oa]\b|\bdefectuos[oa]\b|\bkaputt\b|\bbeschadigt\b|\bdefekt\b|\bcasse\b|"
        r"\bcassee\b|\babime\b|\babimee\b|\bendommage\w*\b"
        r"|\bsnapped\b|\bshattered\b|\btorn\b|\bripped\b|\bdented\b|\bscratched\b|\bleak\w*\b|\brot[oa]s\b"
        r"|\bzerbrochen\b|\bgebrochen\b|\bzerkratzt\b|\bbrise\w*\b|\bfendue?s?\b|\braye\w*\b"
        r"|\bempty\b|\bnothing (?:came|arrived|inside|in (?:it|the box))\b|\bmissing\b|\bvacio\b|\bvide\b|\bfehlt\b"
        r"|\bmanque\b|\bfalta\b"
    ),
    "upset": (
        r"\bannoy\w*\b|\bupset\b|\bfrustrat\w*\b|\bdisappoint\w*\b|\bangry\b|\bfurious\b|\bfed up\b|"
        r"\bsick of\b|\btired of\b|\bworst\b|\bterrible\b|\bawful\b|\buseless\b|\bunacceptable\b|"
        r"\bmolest[oa]\b|\benfadad[oa]\b|\bharto\b|\bdecepcion\w*\b|\binaceptable\b|\bverargert\b|"
        r"\benttauscht\b|\bargerlich\b|\bfrustrierend\b|\bunzumutbar\b|\bdecu\b|\bdecue\b|\bpenible\b|"
        r"\bmecontent\w*\b|\benerve\w*\b|\binacceptable\b|\bagace\w*\b"
        r"|\bnot (?:happy|pleased|impressed)\b|\bno estoy (?:nada )?content[oa]\b|\bnicht zufrieden\b|\bpas content\w*\b|\bpas satisfait\w*\b|\bworried\b|\bconcerned\b|\bsorgen\b|\bpreocupad[oa]\b|\binquiet\w*\b"
    ),
    "thanks": (
        r"\bthanks?\b|\bthank you\b|\bgreat\b|\blove\b|\bhappy\b|\bwell done\b|\bamazing\b|\bexcellent\b|"
        r"\bwonderful\b|\bappreciate\w*\b|\bkind\b|\bfriendly\b|\bdelighted\b|\bcongrat\w*\b|\bgracias\b|"
        r"\bexcelente\b|\bgenial\b|\bencantad[oa]\b|\bdanke\b|\bzufrieden\b|\bsuper\b|\btoll\b|"
        r"\bausgezeichnet\b|\bmerci\b|\bravie?\b|\bparfait\w*\b|\bbravo\b|\bfelicit\w*\b|\bperfe[ck]t\w*\b|\bwunderbar\b|"
        r"\bbrilliant\b|\bsaved my\b|\bagradec\w*\b|\bremercie\w*\b|\bbedanken\b"
    ),
    "request": (
        r"\bi(?:'d| would) like\b|\bcould you\b|\bcan you\b|\bcan i\b|\bhow (?:do|can|much|long)\b|"
        r"\bwhere (?:do|can|is)\b|\bis there\b|\bdo you\b|\bplease\b|\bquisiera\b|\bme gustaria\b|"
        r"\bcomo puedo\b|\bpor favor\b|\bich mochte\b|\bwie kann\b|\bbitte\b|\bkonnen sie\b|"
        r"\bje voudrais\b|\bje souhaite\b|\bcomment\b|\bpouvez-vous\b|\bs'il vous plait\b|\bpl[sz]\b|\bsvp\b"
    ),
    # Something that does not work, phrased the short way ("app won't open", "link expired", "dashboard 503").
    "fault": (
        r"\b(?:won'?t|wont|doesn'?t|doesnt|does not|isn'?t|isnt|is not|didn'?t|didnt|not|never|nothing) "
        r"(?:work\w*|open\w*|load\w*|start\w*|arr?iv\w*|show\w* up|turn\w* on|come\w*|sync\w*|connect\w*)\b|"
        r"\bstopped (?:working|loading|syncing)\b|\bcrash\w*|\bfroze\b|\bfrozen\b|\bexpired\b|\berror\b|"
        r"\b50[234]\b|\bbroke\b|\bno funciona\w*\b|\bno (?:abre|carga|llega|llego)\b|"
        r"\bfunktioniert (?:nicht|nie)\b|\bgeht nicht\b|\bsturzt\b|\bfehler\b|\bmarche pas\b|"
        r"\bfonctionne pas\b|\bplante\b|\berreur\b|\bbug\w*\b|\breject\w*\b|"
        r"\b(?:not|never|haven'?t|hasn'?t|didn'?t) (?:been )?receiv\w*\b|\brien recu\b|\bpas recu\b|\bni rastro\b|"
        r"\bno (?:he |hemos )?recibido\b|\bnicht (?:angekommen|erhalten)\b|\bnichts (?:angekommen|erhalten)\b"
    ),
    # Insistence: "??", "?!", "!!".
    "insist": (r"\?{2,}|\?!|!\?|!{2,}"),
}
_GROUPS = tuple(PROTOTYPES)
SIGNALS = (
    "vader",
    "vader_neg",
    "vader_pos",
    "vader_min_sentence",
    "vader_max_sentence",
    *(f"cue_{name}" for name in CUES),
    "ironic",
    "exclamations",
    "shouting",
    "questions",
    *(f"like_{group}" for group in _GROUPS),
    *(f"over_neutral_{group}" for group in _GROUPS if group != "neutral"),
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")
# Praise words that, beside trouble in the same or the next sentence, are ironic ("Great, locked out again").
_PRAISE = re.compile(
    r"\b(?:great\w*|wonderful\w*|fantastic\w*|brilliant\w*|marvel+ous\w*|lovely|love[sd]?|perfect\w*|"
    r"amazing\w*|excellent|superb|thanks?|thank you|appreciated?|bravo|genial|super|toll|wunderbar|prima|"
    r"klasse|parfait|formidable|merveilleux|estupendo|perfecto|fenomenal|maravill\w*)\b"
)
_IRONIC_OPENER = re.compile(r"\boh,? (?:great|wonderful|fantastic|brilliant|perfect|lovely|joy|good|super)\b")
# A praise word opening a sentence as an exclamation ("Great, ...", "Na toll.", "Genial, ..."): ironic when the
# message reports trouble anywhere.
_PRAISE_EXCLAMATION = re.compile(
    r"^(?:oh|ah|na|just|really|how|que|wie|quel)?\s*(?:great|fantastic|wonderful|brilliant|perfect|lovely|amazing|"
    r"awesome|excellent|superb|marvell?ous|super|genial|estupendo|perfecto|fantastico|maravilloso|fenomenal|toll|"
    r"prima|klasse|wunderbar|perfekt|spitze|parfait|formidable|magnifique|bravo|merveilleux)"
    r"(?:\s+(?:news|job|service))?\s*[,.!:;-]+"
)
_RESOLVED = re.compile(
    r"\b(?:fixed|solved|sorted|resolved|works? (?:now|again|perfectly|fine|great)|working (?:now|again)|"
    r"replaced|replacement (?:arrived|came)|arrived (?:early|safely|perfectly)|funciona (?:ya|de nuevo|otra vez)|"
    r"ya funciona|geloest|gelost|funktioniert (?:jetzt|wieder)|resolu|fonctionne (?:a nouveau|de nouveau))\b"
)
_TROUBLE_CUES = (
    "waited",
    "repeated",
    "blocked",
    "wronged",
    "money_back",
    "damaged",
    "upset",
    "fault",
    "insist",
)
# Courtesy formulae (greetings, sign-offs, "merci de ..."): politeness, not feeling. Taken out before VADER and
# the cues read the message: a long polite email is not more positive or negative for them. (Not a signal of its
# own: the dev tickets' polite ones are mostly calm asks, and a head would learn "polite means neutral".)
_COURTESY = re.compile(
    r"\b(?:kind|best|warm|many) (?:regards|wishes)\b|\bregards\b|"
    r"\bi hope (?:this|my (?:email|message)) finds you well\b|\bno rush(?: at all)?\b|"
    r"\bhave a (?:nice|good|great|lovely) (?:day|weekend|evening)\b|\bgood (?:morning|afternoon|evening|day)\b|"
    r"\b(?:muchas )?gracias (?:de antemano|por adelantado)\b|\bun saludo\b|\bsaludos(?: cordiales)?\b|"
    r"\batentamente\b|\bbuen(?:os|as) (?:dias|tardes|noches)\b|\b(?:vielen )?dank(?:e)? im voraus\b|"
    r"\b(?:mit )?freundlichen? gru(?:ss|ß)en?\b|\b(?:viele|beste|liebe) gru(?:ss|ß)e\b|\bguten (?:tag|morgen|abend)\b|"
    r"\bje vous remercie (?:par avance|d'avance)\b|\bmerci de (?:bien vouloir )?(?:me |nous |m')?[a-z]+(?:er|ir|re)\b|"
    r"\b(?:bien )?cordialement\b|\bbonne (?:journee|soiree)\b"
)
# A sentence that only thanks ("Thanks.", "Merci beaucoup") in the sign-off closes a request: courtesy too.
_CLOSING_THANKS = re.compile(
    r"(?:thanks?|thank you|thx|ty|cheers|many thanks|(?:muchas )?gracias|danke|vielen dank|merci(?: beaucoup)?)"
    r"(?: (?:very much|so much|a lot|again))?[.!]*"
)
_COMPILED = {name: re.compile(pattern) for name, pattern in CUES.items()}


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.replace("\u2019", "'").lower())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


def _load_lexicon(path: Path) -> dict[str, float]:
    lexicon: dict[str, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            word, value = line.split("\t")
            lexicon[word.strip().lower()] = float(value)
    return lexicon


class Signals:
    """Computes :data:`SIGNALS` of messages; ``embed`` maps texts to unit MiniLM embeddings (n x 384)."""

    def __init__(self, folder: Path, embed: Callable[[list[str]], np.ndarray]) -> None:
        self.analyzer = SentimentIntensityAnalyzer()
        self.analyzer.lexicon.update(_load_lexicon(folder / "lexicon.tsv"))
        self.embed = embed
        self._prototypes: dict[str, np.ndarray] | None = None

    def lexical(self, text: str) -> list[float]:
        """VADER and cue signals of one message, none of which grows with its length: courtesy formulae are
        taken out first, sentences are scored one by one (mean, min, max), and praise beside trouble is read
        as irony (kept from VADER and from the thanks cue).
        """
        sentences = [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()][:24] or [text]
        # A sentence is a sign-off when it and every one after it are short once courtesy is taken out
        # ("Thanks.", "Kind regards, Agnes Moreau").
        short = [len(re.findall(r"[^\W\d_]+", _COURTESY.sub("", _fold(s)))) <= 3 for s in sentences]
        signing_off = [all(short[i:]) for i in range(len(sentences))]
        kept: list[str] = []
        signed = False  # after "Kind regards," the rest is a name
        for index, sentence in enumerate(sentences):
            folded = _fold(sentence)
            if signed or (index > 0 and signing_off[index] and _CLOSING_THANKS.fullmatch(folded)):
                continue
            stripped, found = _COURTESY.subn("", folded)
            signed = bool(found) and index > 0 and signing_off[index]
            rest = " ".join(re.sub(r"\b(?:and|y|und|et)\b|[,.!]", " ", stripped).split())
            if signed and (not rest or _CLOSING_THANKS.fullmatch(rest)):  # "Many thanks and have a good day."
                continue
            if found:
                # The rest of the sentence, if any, is read folded (case and accents matter little to VADER;
                # shouting is counted on the original text).
                if not re.search(r"[^\W_]", stripped):
                    continue
                sentence = stripped
            kept.append(sentence)
        kept = kept or [text]
        folded_kept = [_fold(s) for s in kept]
        trouble = [any(_COMPILED[name].search(f) for name in _TROUBLE_CUES) for f in folded_kept]
        ironic = 0
        plain: list[str] = []
        for index, (sentence, folded) in enumerate(zip(kept, folded_kept, strict=True)):
            nearby = trouble[index] or (index + 1 < len(kept) and trouble[index + 1])
            exclaimed = any(trouble) and _PRAISE_EXCLAMATION.match(folded)
            praised = _IRONIC_OPENER.search(folded) or exclaimed or (_PRAISE.search(folded) and nearby)
            if praised and not _RESOLVED.search(folded):
                ironic += 1
                sentence = _PRAISE.sub("", folded)
            plain.append(sentence)
        joined = " ".join(plain)
        whole = self.analyzer.polarity_scores(joined)
        compounds = [self.analyzer.polarity_scores(s)["compound"] for s in plain]
        folded = _fold(joined)
        cues = [float(min(3, len(pattern.findall(folded)))) for pattern in _COMPILED.values()]
        words = re.findall(r"[^\W\d_]{2,}", text)
        shouting = sum(w.isupper() for w in words if len(w) > 2)
        return [
            float(np.mean(compounds)),
            whole["neg"],
            whole["pos"],
            min(compounds),
            max(compounds),
            *cues,
            float(min(3, ironic)),
            float("!" in text),  # any: "!!!" is insistence (cue_insist), not three times the feeling
            float(min(3, shouting)),
            float("?" in text),
        ]

    def semantic(self, texts: list[str]) -> np.ndarray:
        """Per text, the closest prototype's cosine in each group, then each polar group's margin over the
        neutral one (embedded lazily: a Triton model cannot call another while loading).
        """
        if self._prototypes is None:
            embedded = self.embed([s for group in PROTOTYPES.values() for s in group])
            self._prototypes, start = {}, 0
            for name, group in PROTOTYPES.items():
                self._prototypes[name] = embedded[start : start + len(group)]
                start += len(group)
        vectors = self.embed(texts)
        like = np.stack([(vectors @ self._prototypes[g].T).max(axis=1) for g in _GROUPS], axis=1)
        neutral = like[:, _GROUPS.index("neutral")][:, None]
        polar = [i for i, g in enumerate(_GROUPS) if g != "neutral"]
        return np.concatenate([like, like[:, polar] - neutral], axis=1)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """One row of :data:`SIGNALS` per text (float32)."""
        if not texts:
            return np.zeros((0, len(SIGNALS)), dtype=np.float32)
        lexical = np.array([self.lexical(t) for t in texts], dtype=np.float64)
        return np.concatenate([lexical, self.semantic(list(texts))], axis=1).astype(np.float32)


class Head:
    """Multinomial logistic regression over standardised signals (weights in an ``.npz``)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> None:
        self.mean, self.scale, self.weights, self.bias = mean, scale, weights, bias

    @classmethod
    def load(cls, path: Path) -> Head:
        with np.load(path) as data:
            return cls(data["mean"], data["scale"], data["weights"], data["bias"])

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, scale=self.scale, weights=self.weights, bias=self.bias)

    def probabilities(self, signals: np.ndarray) -> np.ndarray:
        """(n, 3) probabilities of :data:`CLASSES`."""
        logits = ((signals - self.mean) / self.scale) @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float32)

    @classmethod
    def fit(
        cls,
        signals: np.ndarray,
        labels: np.ndarray,
        l2: float,
        weights: np.ndarray | None = None,
        steps: int = 1500,
    ) -> Head:
        """Fit on ``signals`` (n, d) and class indices ``labels`` (n,): L2-penalised cross-entropy by
        full-batch gradient descent with Adam (convex, deterministic). ``weights`` per sample (class balance).
        """
        x = np.asarray(signals, dtype=np.float64)
        mean = x.mean(axis=0)
        scale = x.std(axis=0) + 1e-6
        z = (x - mean) / scale
        n, d = z.shape
        y = np.zeros((n, len(CLASSES)))
        y[np.arange(n), labels] = 1.0
        w_sample = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        w_sample = w_sample / w_sample.sum()
        w = np.zeros((d, len(CLASSES)))
        b = np.zeros(len(CLASSES))
        m_w, v_w, m_b, v_b = (np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b))
        rate, beta1, beta2 = 0.05, 0.9, 0.999
        for step in range(1, steps + 1):
            logits = z @ w + b
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            error = (p - y) * w_sample[:, None]
            g_w = z.T @ error + l2 * w
            g_b = error.sum(axis=0)
            m_w = beta1 * m_w + (1 - beta1) * g_w
            v_w = beta2 * v_w + (1 - beta2) * g_w**2
            m_b = beta1 * m_b + (1 - beta1) * g_b
            v_b = beta2 * v_b + (1 - beta2) * g_b**2
            correction1, correction2 = 1 - beta1**step, 1 - beta2**step
            w -= rate * (m_w / correction1) / (np.sqrt(v_w / correction2) + 1e-8)
            b -= rate * (m_b / correction1) / (np.sqrt(v_b / correction2) + 1e-8)
        return cls(
            mean.astype(np.float32), scale.astype(np.float32), w.astype(np.float32), b.astype(np.float32)
        )
