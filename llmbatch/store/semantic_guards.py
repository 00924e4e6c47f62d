"""The semantic cache's guards: cheap checks on the words that change an answer (issue 15).

An embedding scores "turn on the light" and "turn off the light" above any usable threshold, and
"the invoice of March 3" next to "the invoice of March 4". So beyond the similarity, two prompts
must agree on the tokens that carry the answer:

- ``numbers``: numbers, dates and amounts (digits with their separators, number words, months,
  weekdays, currency signs);
- ``polarity``: negation and polarity words (not, never, without; on/off, increase/decrease, ...);
- ``entities``: names and capitalised entities (a capitalised word that does not merely open a
  sentence with a common word, acronyms);
- ``quoted``: quoted strings, inline and fenced code, and code-like tokens (snake_case, dotted
  names, calls, paths, URLs);
- ``order``: the meaning-carrying words both prompts share (names, units, numbers and every other
  word that is not a function word) come in the same order. Sets cannot see a swap: "convert Celsius
  to Fahrenheit" and "convert Fahrenheit to Celsius", "Did Germany invade Poland?" and "Did Poland
  invade Germany?", "a list to a tuple" and "a tuple to a list" have the same names, units and
  words, at a similarity of 0.99 and more (a reviewer's report, 2026-12-03).

The first four are pure functions from a text to a set of tokens, and two prompts pass them when
each gives both the same set; ``order`` compares the two texts (:func:`same_order`). A guard that
refuses costs a paid call; one that lets a wrong pair through serves a wrong answer, so each errs
towards refusing: ``order`` also refuses a rewording that moves words ("In Python, how do I ..." for
"How do I ... in Python?"), which costs a paid call. Nothing here imports anything from outside the
standard library.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable

__all__ = [
    "GUARDS",
    "disagreements",
    "entities",
    "meaning_words",
    "numbers",
    "polarity",
    "quoted",
    "same_order",
    "signature",
    "swapped",
]

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
    "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18",
    "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60",
    "seventy": "70", "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000",
    "million": "1000000", "billion": "1000000000", "trillion": "1000000000000", "dozen": "12",
    "half": "1/2", "quarter": "1/4", "once": "1x", "twice": "2x", "thrice": "3x",
    "first": "1st", "second": "2nd", "third": "3rd", "fourth": "4th", "fifth": "5th", "sixth": "6th",
    "seventh": "7th", "eighth": "8th", "ninth": "9th", "tenth": "10th", "last": "last",
    "single": "1", "double": "2x", "triple": "3x", "pair": "2", "couple": "2",
}  # fmt: skip
_MONTHS = {
    "january": "m1", "jan": "m1", "february": "m2", "feb": "m2", "march": "m3", "mar": "m3", "april": "m4",
    "apr": "m4", "may": "m5", "june": "m6", "jun": "m6", "july": "m7", "jul": "m7", "august": "m8",
    "aug": "m8", "september": "m9", "sep": "m9", "sept": "m9", "october": "m10", "oct": "m10",
    "november": "m11", "nov": "m11", "december": "m12", "dec": "m12",
}  # fmt: skip
_DAYS = {
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "today", "tomorrow",
    "yesterday", "weekend", "weekday", "morning", "evening", "night", "noon", "midnight",
}  # fmt: skip
# Units a number is counted in: "two days" is not "two years".
_UNITS = {
    "second", "seconds", "minute", "minutes", "hour", "hours", "day", "days", "week", "weeks", "month",
    "months", "year", "years", "decade", "decades", "century", "centuries", "ms", "sec", "min", "hr", "hrs",
    "mm", "cm", "km", "metre", "metres", "meter", "meters", "mile", "miles", "inch", "inches", "foot",
    "feet", "yard", "yards", "gram", "grams", "kg", "kilogram", "kilograms", "pound", "ounce", "ounces",
    "lb", "lbs", "oz", "litre", "litres", "liter", "liters", "ml", "gallon", "gallons", "celsius",
    "fahrenheit", "kelvin", "degree", "degrees", "byte", "bytes", "kb", "mb", "gb", "tb", "words",
    "word", "sentences", "sentence", "paragraphs", "paragraph", "pages", "page", "items", "times",
}  # fmt: skip
_CURRENCY = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "₹": "inr"}
_CURRENCY_WORDS = {
    "usd", "eur", "gbp", "jpy", "dollar", "dollars", "euro", "euros", "pound", "pounds", "yen", "cent",
    "cents", "percent", "%", "bitcoin", "btc",
}  # fmt: skip

# Negation marks one set; each polarity pair its own words (either side present counts).
_NEGATION = {
    "not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor", "without", "cannot",
    "lack", "lacks", "unless", "except", "excluding", "avoid", "fail", "fails", "false", "deny",
}  # fmt: skip
_POLAR = {
    "on", "off", "true", "yes", "enable", "enabled", "disable", "disabled", "increase", "decrease",
    "increases", "decreases", "more", "less", "fewer", "before", "after", "up", "down", "open", "close",
    "add", "remove", "include", "exclude", "min", "max", "minimum", "maximum", "positive", "negative",
    "pros", "cons", "advantages", "disadvantages", "benefits", "drawbacks", "risks", "best", "worst",
    "better", "worse", "highest", "lowest", "largest", "smallest", "biggest", "longest", "shortest",
    "fastest", "slowest", "most", "least", "buy", "sell", "start", "stop", "allow", "block", "accept",
    "reject", "above", "below", "over", "under", "left", "right", "input", "output", "import", "export",
    "upload", "download", "encrypt", "decrypt", "encode", "decode", "push", "pull", "win", "lose",
    "gain", "loss", "rise", "fall", "hot", "cold", "old", "new", "oldest", "newest", "early", "late",
    "earliest", "latest", "north", "south", "east", "west", "inside", "outside", "legal", "illegal",
    "safe", "unsafe", "healthy", "unhealthy", "similar", "different", "same", "opposite", "synonym",
    "antonym", "cause", "effect", "agree", "disagree", "like", "dislike", "love", "hate", "always",
    "sometimes", "rarely", "often", "all", "any", "every", "each", "only", "both", "either",
    "singular", "plural", "past", "future", "present", "mean", "median", "sum", "average", "total",
    "formal", "informal", "short", "long", "brief", "detailed", "simple", "complex", "easy", "hard",
    "high", "low", "large", "small", "big", "strong", "weak", "light", "dark", "fast", "slow",
    # comparatives: "louder than expected" is not "quieter than expected"
    "louder", "quieter", "higher", "lower", "bigger", "smaller", "larger", "cheaper", "pricier", "longer",
    "shorter", "faster", "slower", "heavier", "lighter", "older", "newer", "younger", "warmer", "cooler",
    "hotter", "colder", "easier", "harder", "stronger", "weaker", "earlier", "later", "wider", "narrower",
    "thicker", "thinner", "softer", "safer", "riskier", "greater", "loud", "quiet", "cheap",
    "expensive", "soft", "wide", "narrow", "thick", "thin", "heavy", "wet", "dry", "full", "empty",
    # colours: "the blue jacket" is not "the red jacket"
    "red", "blue", "green", "yellow", "black", "white", "grey", "gray", "orange", "purple", "pink",
    "brown", "silver", "gold",
    # directions of an order or a movement: "in ascending order" is not "in descending order"
    # (a reviewer's report, 2026-12-03, at a similarity of 0.97)
    "ascending", "descending", "ascend", "descend", "asc", "desc", "increasing", "decreasing",
    "increased", "decreased", "forward", "forwards", "backward", "backwards", "upward", "upwards",
    "downward", "downwards", "reverse", "reversed", "clockwise", "counterclockwise", "anticlockwise",
    # how much is asked for, beside "brief" and "detailed": "to a child in detail" (the same report, 0.985)
    "detail", "details", "in-depth",
    # judgements: "Is coffee good for your health?" is not "... bad ..." (a second review, 2026-12-03)
    "good", "bad", "wrong", "correct", "incorrect", "false", "pro", "con",
}  # fmt: skip
_CONTRACTION = re.compile(r"n't\b", re.IGNORECASE)
# Typographic quotes read as plain ones, so that each pattern below needs only ASCII.
_PLAIN_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})

# Capitalised words that open a sentence (or a request) without naming anything.
_OPENERS = {
    "a", "an", "the", "what", "whats", "what's", "which", "who", "whom", "whose", "when", "where", "why",
    "how", "is", "are", "was", "were", "do", "does", "did", "can", "could", "would", "should", "will",
    "shall", "may", "might", "must", "please", "kindly", "tell", "explain", "describe", "define",
    "give", "list", "name", "show", "write", "summarise", "summarize", "summary", "translate",
    "classify", "extract", "rewrite", "compare", "calculate", "compute", "find", "provide", "generate",
    "create", "make", "help", "i", "i'm", "im", "i'd", "we", "you", "my", "our", "your", "it", "its",
    "this", "that", "these", "those", "there", "here", "in", "on", "at", "for", "from", "to", "of",
    "with", "by", "as", "if", "and", "or", "but", "so", "then", "now", "also", "just", "quick",
    "quickly", "briefly", "simply", "hey", "hi", "hello", "ok", "okay", "question", "answer", "task",
    "text", "document", "ticket", "review", "email", "message", "context", "instructions", "input",
    "output", "note", "return", "respond", "reply", "answer:", "q", "a:", "label", "sentiment",
    "category", "let's", "lets", "let", "using", "use", "based", "according", "considering",
    "suppose", "assume", "imagine", "some", "any", "all", "each", "every", "one", "many", "much",
    "very", "really", "meaning", "purpose", "difference", "between", "about", "regarding", "concerning",
    "thanks", "thank", "regards", "best", "dear", "cheers", "sincerely", "kind", "warm", "yours",
}  # fmt: skip

# Words that carry no meaning of their own for the order guard: where they stand in a rewording
# ("How can I ..." for "How do I ...") says nothing about what is asked. Prepositions are here too:
# the words on either side of "to" or "than" carry a swap, and negations and polarity words have
# their own guard. The prepositions of a direction (_DIRECTIONS) are noted on the word they govern.
_FUNCTION_WORDS = {
    "a", "an", "the", "what", "whats", "which", "who", "whom", "whose", "when", "where", "why", "how",
    "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "done", "have", "has",
    "had", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "i", "me", "my",
    "we", "us", "our", "you", "your", "he", "him", "his", "she", "her", "it", "its", "they", "them",
    "their", "this", "that", "these", "those", "there", "here", "of", "to", "in", "into", "on", "onto",
    "at", "for", "from", "with", "by", "as", "about", "than", "then", "and", "or", "but", "so", "if",
    "please", "kindly", "tell", "explain", "describe", "give", "show", "let", "lets", "just", "also",
    "some", "any", "very", "really", "actually", "ever", "following", "way",
    # adverbs that stand anywhere in a request: "Briefly explain X" is "Explain X briefly". Not
    # "simply": "explain X simply / technically" asks for two answers (a review, 0.931)
    "briefly", "quickly", "concisely", "now",
}  # fmt: skip
_DIRECTIONS = {"to": "to", "into": "to", "onto": "to", "towards": "to", "toward": "to", "from": "from"}
_NUMBER_PATTERN = r"(?<![A-Za-z])\d[\d,]*(?:[.:/-]\d+)*(?:st|nd|rd|th|k|m|bn|x)?(?![A-Za-z])"
_WORD = re.compile(r"[A-Za-z][A-Za-z'&-]*")
_NUMBER = re.compile(_NUMBER_PATTERN, re.IGNORECASE)
# The order guard's tokens: numbers as the numbers guard reads them, and words with an apostrophe kept
# whole ("France's", "isn't").
_TOKEN = re.compile(_NUMBER_PATTERN + r"|[A-Za-z]+(?:'[A-Za-z]+)?", re.IGNORECASE)
_QUOTED = re.compile(
    r"```(.*?)```|`([^`\n]+)`|\"([^\"\n]+)\"|(?:(?<=\s)|^)'([^'\n]+)'(?=[\s.,;:!?)]|$)",
    re.DOTALL,
)
_CODEISH = re.compile(
    r"[A-Za-z_][\w]*(?:\(\S*?\)|(?:\.[A-Za-z_]\w*)+|_\w+)"  # calls, dotted names, snake_case
    r"|[a-z]+[A-Z]\w*"  # camelCase
    r"|(?:https?://|www\.)\S+|(?:~|\.{1,2})?/[\w.-]+(?:/[\w.-]+)+|\S+@\S+\.\w+"  # URLs, paths, emails
    r"|[<>=!]=|[-+*/^%]=?(?=\s*\d)"  # comparison and arithmetic operators before a number
)
_SENTENCE_END = re.compile(r"[.!?:;\n]\s*$")


def numbers(text: str) -> frozenset[str]:
    """Numbers, dates and amounts, normalised so that a reformatted value still agrees
    ("1,000" and "1000", "ten" and "10") and a changed one does not."""
    text = text.translate(_PLAIN_QUOTES)
    found: set[str] = set()
    for match in _NUMBER.finditer(text):
        token = match.group(0).lower().replace(",", "")
        found.add(token)
    for sign, name in _CURRENCY.items():
        if sign in text:
            found.add(name)
    for word in _WORD.findall(text):
        lower = word.lower().strip("'")
        if lower in _NUMBER_WORDS:
            found.add(_NUMBER_WORDS[lower])
        elif lower in _MONTHS and (lower != "may" or word[0].isupper()):
            found.add(_MONTHS[lower])
        elif lower in _DAYS or lower in _CURRENCY_WORDS or lower in _UNITS:
            found.add(lower.removesuffix("s") if lower in _UNITS and len(lower) > 3 else lower)
    if "%" in text:
        found.add("percent")
    return frozenset(found)


def polarity(text: str) -> frozenset[str]:
    """Negation and polarity words: "not" for every negation (so that "isn't" and "is not" agree),
    and each polarity word as it is ("on" is not "off")."""
    text = text.translate(_PLAIN_QUOTES)
    found: set[str] = set()
    # Negations are counted, not only noticed: "not as shown ... do not run small" is not "not as shown".
    negations = len(_CONTRACTION.findall(text))
    for word in _WORD.findall(text):
        lower = word.lower().strip("'")
        if lower in _NEGATION:
            negations += 1
        elif lower in _POLAR or (lower.startswith(("un", "in", "im", "il", "ir")) and lower[2:] in _POLAR):
            found.add(lower)
    if negations:
        found.add("not" if negations == 1 else f"not*{negations}")
    return frozenset(found)


def entities(text: str) -> frozenset[str]:
    """Names and capitalised entities, lowercased: a capitalised word anywhere but at the start of a
    sentence, an opening word that is not a common one ("Paris is ..."), and acronyms."""
    text = text.translate(_PLAIN_QUOTES)
    found: set[str] = set()
    start = 0
    for match in _WORD.finditer(text):
        word = match.group(0).strip("'-")
        if not word:
            continue
        opens = _SENTENCE_END.search(text[start : match.start()]) is not None or not text[: match.start()].strip()
        start = match.end()
        if not word[0].isupper():
            continue
        lower = word.lower()
        if opens and _CONTRACTION.sub("", lower).rstrip("'") in _OPENERS | {"ca", "wo"}:
            continue
        if lower in _MONTHS or lower in _DAYS:  # a date: the numbers guard has it
            continue
        found.add(lower)
    return frozenset(found)


def quoted(text: str) -> frozenset[str]:
    """Quoted strings, inline and fenced code, and code-like tokens, whitespace normalised."""
    text = text.translate(_PLAIN_QUOTES)
    found: set[str] = set()
    for match in _QUOTED.finditer(text):
        inner = next(group for group in match.groups() if group is not None)
        found.add("q:" + " ".join(inner.split()))
    for match in _CODEISH.finditer(text):
        found.add("c:" + match.group(0))
    return frozenset(found)


def meaning_words(text: str) -> list[str]:
    """The words of ``text`` that carry its meaning, in order and repeated as often as they are:
    lowercased, function words left out, a possessive "'s" and a plural "s" taken off ("France's" is
    "france", "pounds" is "pound"), number words and numbers as the numbers guard reads them ("five"
    is "5", "1,000" is "1000")."""
    return [word for word, _ in _directed_words(text)]


def _directed_words(text: str) -> list[tuple[str, str | None]]:
    """:func:`meaning_words`, each with the direction a preposition gives it ("to", "from") or None."""
    text = text.translate(_PLAIN_QUOTES)
    words: list[tuple[str, str | None]] = []
    direction: str | None = None  # given to the next meaning word: "from my laptop"
    for match in _TOKEN.finditer(text):
        token = match.group(0).lower()
        if token[0].isdigit():
            words.append((token.replace(",", ""), direction))
            direction = None
            continue
        if token.endswith("n't"):  # a negation: the polarity guard counts it
            continue
        token = token.removesuffix("'s").split("'")[0]
        if token in _DIRECTIONS:
            direction = _DIRECTIONS[token]
            continue
        if token in _FUNCTION_WORDS:
            continue
        if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
            token = token[:-1]
        words.append((_NUMBER_WORDS.get(token, token), direction))
        direction = None
    return words


def same_order(a: str, b: str) -> bool:
    """Whether the meaning-carrying words both texts use come in the same order, each as often, and
    none goes "to" in one and "from" in the other.

    Only the shared words are compared: words one text has and the other lacks are the embedding's
    to weigh (and the other guards'). A shared word used a different number of times also refuses, so
    that a swap cannot hide behind a repetition ("Celsius ... convert Celsius to Fahrenheit"). The
    directions catch a swap that keeps the order: "copy the files to my laptop from the server" is
    "from my laptop to the server" reversed. A direction only one text gives is let be: "How to
    convert ..." puts a "to" before "convert" that "How do I convert ..." lacks.
    """
    first, second = _directed_words(a), _directed_words(b)
    shared = {word for word, _ in first} & {word for word, _ in second}
    first = [pair for pair in first if pair[0] in shared]
    second = [pair for pair in second if pair[0] in shared]
    return len(first) == len(second) and all(
        word == other and (way == other_way or way is None or other_way is None)
        for (word, way), (other, other_way) in zip(first, second, strict=True)
    )


#: Meaning words two prompts share from which a swapped word is no longer weighed by the model: a
#: template filled with the same document (measured: "... would like us to repair / refund the
#: kettle" scores 0.914 with 8 shared words and 0.977 with 30; "email address" / "phone number" in
#: the same extraction template 0.959), while short questions that swap their subject score well
#: under the threshold (0.70-0.82 for "repair / refund", "boiling / freezing", "haiku / limerick").
SUBSTITUTION_MIN_SHARED = 5


def substitution(a: str, b: str) -> bool:
    """Whether one text swaps, adds or drops meaning words of the other while sharing many: one has a
    meaning word the other lacks, and they share at least :data:`SUBSTITUTION_MIN_SHARED`.

    In a long prompt one changed word is a small part of the embedding, so two prompts that ask
    for different things ("repair" / "refund", "email address" / "phone number" in one filled
    template) score far above any usable threshold and no word list can name every such word; so do
    a clause added to one ("... and refund the shipping cost", a second review). A short question's
    rewording shares few words, and the model weighs it ("What is RAG?" / "Can you explain RAG?"). A
    rewording of a long template's instruction is refused too: a miss, where the alternative is a
    wrong answer. Layout, case, punctuation and function words never count."""
    first, second = Counter(meaning_words(a)), Counter(meaning_words(b))
    return bool(first - second or second - first) and sum((first & second).values()) >= SUBSTITUTION_MIN_SHARED


def swapped(a: str, b: str) -> bool:
    """Whether the two texts are one frame with one place filled differently: their meaning words
    agree before and after one run of them, which both fill, with different words, and the frame
    is no shorter than the longer filling.

    A short question that swaps one word keeps most of its embedding, and the model weighs the swap
    too little: "... heart attack in men / women" (0.909), "vegan / vegetarian lasagna" (0.943),
    "beginner / advanced workout plan" (0.927), "explain photosynthesis simply / technically"
    (0.931), "time / space complexity of quicksort" (0.904), all served until a review found them.
    A word added or dropped is not a swap ("What is RAG?" / "Can you explain RAG?" adds "explain"):
    the model weighs those. A rewording that swaps one word for its synonym ("explain" /
    "describe") is refused too: a miss, where the alternative is a wrong answer."""
    first, second = meaning_words(a), meaning_words(b)
    if first == second:
        return False
    start = 0
    while start < min(len(first), len(second)) and first[start] == second[start]:
        start += 1
    end = 0
    while end < min(len(first), len(second)) - start and first[-1 - end] == second[-1 - end]:
        end += 1
    frame = start + end
    filled = max(len(first), len(second)) - frame  # the longer of the two fillings
    # Both fill the place (a word only added is not a swap), and the frame is at least as long as
    # what fills it: "Best way to learn Python?" / "How should I go about learning Python?" share
    # only "python" and reword the rest, which the model weighs.
    return len(first) > frame and len(second) > frame and frame >= filled


#: Each guard by the name a refusal reports.
GUARDS: dict[str, Callable[[str], frozenset[str]]] = {
    "numbers": numbers,
    "polarity": polarity,
    "entities": entities,
    "quoted": quoted,
}


def disagreements(a: str, b: str) -> list[str]:
    """The guards on which two prompts disagree (empty: they may share an answer)."""
    found = [name for name, guard in GUARDS.items() if guard(a) != guard(b)]
    if not same_order(a, b):
        found.append("order")
    if substitution(a, b):
        found.append("substitution")
    if swapped(a, b):
        found.append("swap")
    return found


def signature(text: str) -> str:
    """A digest of everything the set guards (:data:`GUARDS`) see in ``text``: two prompts the guards
    let through have the same signature. The converse does not hold (the order of the words is not in
    it, and a digest may collide), so a match is still checked with :func:`disagreements`. Filed with
    each stored prompt, it lets a lookup skip embedding a question no stored prompt of its scope could
    pass (a template filled with other numbers, names or quotes).

    A word added to a guard's list changes the signature of the prompts that use it, and the rows
    filed before keep the old one: such a stored prompt is no longer a candidate (a miss, never a
    wrong hit) until it is stored again."""
    parts = "\x1e".join(f"{name}:" + "\x1f".join(sorted(guard(text))) for name, guard in GUARDS.items())
    return hashlib.sha256(parts.encode()).hexdigest()[:16]
