"""Reading pretraining text: files -> documents -> paragraphs -> sentences.

Formats (`input_format`, or "auto" to detect per file):

- "text": our plain-text format. One sentence or paragraph per line, a blank line between
  documents. UTF-8, optional BOM, LF or CRLF line ends.
- "jsonl": one JSON object per line; the string under `text_field` is one document, its
  lines are paragraphs.
- "gutenberg": a Project Gutenberg e-book. Only the text between the `*** START OF` and
  `*** END OF` marker lines is kept (licence and header are dropped, and so are a
  leading "Produced by ..." and a trailing "End of the Project Gutenberg ..."
  paragraph); hard-wrapped lines are joined into paragraphs at blank lines; the book is
  one document.
- "wikitext": WikiText raw. An article starts at a heading line ` = Title = `
  (`^ = [^=].* = $`); section headings (` = = Section = = `) are dropped. Two formula
  lines inside "Constant k filter" match the heading pattern too (` = 1 henry and
  capacitance C = `): a match continues the current article when the line before it
  does not end a sentence and the line after it starts with a digit or a lower-case
  letter.

"auto" picks jsonl for `.jsonl`/`.json` files, gutenberg when a `*** START OF` line
appears in the first 300 lines, wikitext when the first non-empty line is an article
heading, else text.

Bad input never stops a run silently or mid-corpus without saying where: a missing
file or a glob that matches nothing raises FileNotFoundError naming it before any work;
empty files, undecodable (non-UTF-8 or NUL-containing, i.e. binary) lines, over-long
lines, bad JSON and records without the text field are skipped, counted per reason in
`SkipLog` and logged with file and line.

Memory stays bounded: lines longer than `max_line_bytes` are skipped while being read
in pieces, and a document is cut into consecutive documents every
`max_document_chars` characters ("document_cut" in the skip log; nothing is lost).
`write_plain_text(iter_documents(files))` converts any of these formats (for example
the bundled Gutenberg and WikiText files) to the plain-text format.

Sentence splitting (`split_sentences`) is rule based and needs no downloads: a sentence
ends at `.`, `!`, `?` or `…` (plus closing quotes/brackets) followed by white space and
then an upper-case or caseless letter or an opening quote/bracket, unless the word
before the period is a common abbreviation (Mr., Dr., St., e.g., ...), a single letter
(an initial) or contains an inner period (U.S.); CJK sentence ends (。！？) always split.
Packing only needs sentence boundaries as break points, so a missed boundary costs
little and a false one splits no word.

Example:
    >>> split_sentences("Mr. Darcy arrived. It rained! Was it 3 p.m. already? Yes.")
    ['Mr. Darcy arrived.', 'It rained!', 'Was it 3 p.m. already?', 'Yes.']
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

logger = logging.getLogger(__name__)

FORMATS = ("auto", "text", "jsonl", "gutenberg", "wikitext")
BUNDLED_CORPUS_DIR = Path(__file__).resolve().parent.parent / "data" / "corpus"
DEFAULT_MAX_LINE_BYTES = 1 << 20
DEFAULT_MAX_DOCUMENT_CHARS = 16 << 20

WIKITEXT_ARTICLE = re.compile(r"^ = [^=].* = $")
WIKITEXT_SECTION = re.compile(r"^ (= )+[^=].* (= )+$")
GUTENBERG_START = re.compile(r"^\*\*\* ?START OF")
GUTENBERG_END = re.compile(r"^\*\*\* ?END OF")
GUTENBERG_PRODUCED_BY = re.compile(r"^(Produced by|E-text prepared by|Transcribed by)", re.I)
GUTENBERG_END_NOTE = re.compile(r"^End of (the )?Project Gutenberg", re.I)
_BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass
class Document:
    """One document: where it starts (`source`, "file:line") and its paragraphs."""

    source: str
    paragraphs: list[str]

    @property
    def num_chars(self) -> int:
        return sum(map(len, self.paragraphs))


class SkipLog:
    """Counts skipped input per reason, keeps the first few places, logs warnings."""

    MAX_EXAMPLES = 5

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def skip(self, reason: str, where: str) -> None:
        count = self.counts.get(reason, 0) + 1
        self.counts[reason] = count
        if count <= self.MAX_EXAMPLES:
            self.examples.setdefault(reason, []).append(where)
            logger.warning("skipped %s: %s", where, reason.replace("_", " "))
        elif count == self.MAX_EXAMPLES + 1:
            logger.warning("more input skipped for %s; the summary has the counts", reason)

    def merge(self, other: "SkipLog") -> None:
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
            room = self.MAX_EXAMPLES - len(self.examples.get(reason, []))
            self.examples.setdefault(reason, []).extend(other.examples.get(reason, [])[:room])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {reason: {"count": self.counts[reason], "examples": self.examples.get(reason, [])}
                for reason in sorted(self.counts)}


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Files named by paths, directories (all files below, sorted) or glob patterns.

    Raises FileNotFoundError naming any input that does not exist or matches nothing.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[str] = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            files.extend(_files_under(item))
        elif os.path.isfile(item):
            files.append(item)
        elif glob.has_magic(item):
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(f"input pattern matches no file: {item}")
            files.extend(matches)
        else:
            raise FileNotFoundError(f"input file not found: {item}")
    if not files:
        raise FileNotFoundError(f"no input files in {list(map(os.fspath, inputs))}")
    return files


def _files_under(directory: str) -> list[str]:
    """Regular files below a directory, recursively, sorted, hidden ones left out."""
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith("."))
    return sorted(found)


def bundled_corpus_files() -> list[str]:
    """The corpus shipped in data/corpus (WikiText articles and Gutenberg books)."""
    return expand_inputs(str(BUNDLED_CORPUS_DIR / "**" / "*.txt"))


def detect_format(path: str) -> str:
    """Guesses the format of one file (see the module docstring)."""
    if path.endswith((".jsonl", ".json")):
        return "jsonl"
    first_text_line = None
    with open(path, "rb") as file:
        for _ in range(300):
            raw = file.readline(DEFAULT_MAX_LINE_BYTES)
            if not raw:
                break
            line = raw.removeprefix(_BOM).decode("utf-8", "replace").rstrip("\r\n")
            if GUTENBERG_START.match(line):
                return "gutenberg"
            if first_text_line is None and line.strip():
                first_text_line = line
    if first_text_line is not None and WIKITEXT_ARTICLE.match(first_text_line):
        return "wikitext"
    return "text"


def read_lines(path: str, skips: SkipLog,
               max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """Yields (line number, text without line end) of the decodable lines of a file.

    Memory stays bounded by `max_line_bytes`: a longer line is read in pieces, skipped
    and counted. Lines with invalid UTF-8 or NUL bytes (binary data) are skipped and
    counted. A leading BOM and CR of CRLF line ends are removed.
    """
    any_text = False
    skipped_lines = 0
    with open(path, "rb") as file:
        line_number = 0
        while True:
            raw = file.readline(max_line_bytes + 1)
            if not raw:
                break
            line_number += 1
            reason = None
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):
                    raw = file.readline(max_line_bytes)
                reason = "line_too_long"
            else:
                if line_number == 1:
                    raw = raw.removeprefix(_BOM)
                raw = raw.rstrip(b"\r\n")
                if b"\x00" in raw:
                    reason = "binary_data"
                else:
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        reason = "invalid_utf8"
            if reason:
                skips.skip(reason, f"{path}:{line_number}")
                skipped_lines += 1
                continue
            any_text = any_text or bool(line.strip())
            yield line_number, line
    if not any_text and not skipped_lines:
        skips.skip("empty_file", path)


def iter_documents(
    inputs: str | Sequence[str],
    input_format: str = "auto",
    text_field: str = "text",
    skips: SkipLog | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_document_chars: int = DEFAULT_MAX_DOCUMENT_CHARS,
) -> Iterator[Document]:
    """Streams the documents of all inputs, in order.

    Readers produce paragraphs and document ends as a stream; a document is cut into
    consecutive documents once it reaches `max_document_chars` (a "document_cut" entry
    in `skips`, nothing is dropped), so memory stays bounded even for a huge file
    without blank lines or headings.
    """
    if input_format not in FORMATS:
        raise ValueError(f"input_format must be one of {FORMATS}, got {input_format!r}")
    skips = skips if skips is not None else SkipLog()
    for path in expand_inputs(inputs):
        file_format = detect_format(path) if input_format == "auto" else input_format
        kwargs = {"text_field": text_field} if file_format == "jsonl" else {}
        lines = read_lines(path, skips, max_line_bytes)
        events = _READERS[file_format](path, lines, skips, **kwargs)
        yield from _assemble(path, events, max_document_chars, skips)


# Readers turn numbered lines into a stream of (line number, paragraph) events, with
# (line number, None) at the end of each document.
Events = Iterator[tuple[int, "str | None"]]


def text_paragraphs(path: str, lines: Iterable[tuple[int, str]], skips: SkipLog) -> Events:
    """Our plain-text format: a line is a paragraph, a blank line ends a document."""
    for line_number, line in lines:
        line = line.strip()
        yield line_number, (line or None)


def jsonl_paragraphs(path: str, lines: Iterable[tuple[int, str]], skips: SkipLog,
                     text_field: str = "text") -> Events:
    """One JSON object per line; its `text_field` string is a document."""
    for line_number, line in lines:
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skips.skip("invalid_json", where)
            continue
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            skips.skip(f"no_string_field_{text_field}", where)
            continue
        paragraphs = [p.strip() for p in text.splitlines() if p.strip()]
        if not paragraphs:
            skips.skip("empty_document", where)
            continue
        for paragraph in paragraphs:
            yield line_number, paragraph
        yield line_number, None


def gutenberg_paragraphs(path: str, lines: Iterable[tuple[int, str]], skips: SkipLog) -> Events:
    """A Project Gutenberg book between its START/END markers, as one document."""
    inside = found_end = False
    held: tuple[int, str] | None = None  # One paragraph of look-ahead for the end note.
    current: list[str] = []
    start = count = 0
    for line_number, line in _with_end(lines):
        if not inside:
            if line is not None and GUTENBERG_START.match(line):
                inside = True
            continue
        ends_book = line is None or bool(GUTENBERG_END.match(line))
        if line is not None and line.strip() and not ends_book:
            start = start if current else line_number
            current.append(line.strip())
            continue
        if current:
            paragraph = " ".join(current)
            current = []
            if not (count == 0 and GUTENBERG_PRODUCED_BY.match(paragraph)):
                if held is not None:
                    yield held
                held = (start, paragraph)
                count += 1
        if ends_book:
            found_end = line is not None
            break
    if not inside:
        raise ValueError(f"{path}: no '*** START OF' line; not a Project Gutenberg file "
                         "(use input format 'text')")
    if not found_end:
        skips.skip("gutenberg_end_marker_missing", path)
    if held is not None and not GUTENBERG_END_NOTE.match(held[1]):
        yield held
    yield 0, None


def wikitext_paragraphs(path: str, lines: Iterable[tuple[int, str]], skips: SkipLog) -> Events:
    """WikiText raw: articles split at ` = Title = ` lines, section headings dropped."""
    previous = ""
    pending_heading: tuple[int, str] | None = None
    for line_number, line in _with_end(lines):
        if pending_heading is not None:
            heading_line, heading = pending_heading
            pending_heading = None
            if line is not None and _is_formula_continuation(previous, line):
                yield heading_line, heading.strip()
            else:
                yield heading_line, None
        if line is None:
            break
        if WIKITEXT_ARTICLE.match(line):
            pending_heading = (line_number, line)
        elif line.strip() and not WIKITEXT_SECTION.match(line):
            yield line_number, line.strip()
            previous = line
    yield 0, None


def _with_end(lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, "str | None"]]:
    yield from lines
    yield 0, None


def _is_formula_continuation(previous: str, following: str) -> bool:
    """A heading-like line inside running text: the text before it does not end a
    sentence and the text after it continues in lower case or with a number."""
    before, after = previous.rstrip(), following.lstrip()
    ends_sentence = not before or before[-1] in ".!?\"')]:;”’"
    continues = bool(after) and (after[0].isdigit() or after[0].islower())
    return not ends_sentence and continues


_READERS = {
    "text": text_paragraphs,
    "jsonl": jsonl_paragraphs,
    "gutenberg": gutenberg_paragraphs,
    "wikitext": wikitext_paragraphs,
}


def _assemble(path: str, events: Events, max_bytes: int, skips: SkipLog) -> Iterator[Document]:
    """Documents from paragraph events, cut into pieces of at most `max_bytes`."""
    paragraphs: list[str] = []
    size = start = 0
    was_cut = False
    for line_number, paragraph in events:
        if paragraph is None:
            if paragraphs:
                yield Document(f"{path}:{start}", paragraphs)
            paragraphs, size, was_cut = [], 0, False
            continue
        if paragraphs and size + len(paragraph) > max_bytes:
            if not was_cut:
                skips.skip("document_cut", f"{path}:{start}")
                was_cut = True
            yield Document(f"{path}:{start}", paragraphs)
            paragraphs, size = [], 0
        if not paragraphs:
            start = line_number
        paragraphs.append(paragraph)
        size += len(paragraph)
    if paragraphs:
        yield Document(f"{path}:{start}", paragraphs)


def write_plain_text(documents: Iterable[Document], path: str | os.PathLike) -> int:
    """Writes documents in our plain-text format (one paragraph per line, blank line
    between documents, LF, UTF-8 without BOM); returns the number of documents."""
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as file:
        for document in documents:
            if count:
                file.write("\n")
            file.write("".join(p.replace("\n", " ") + "\n" for p in document.paragraphs))
            count += 1
    return count


# Abbreviations after which a period does not end a sentence (lower-cased, no period).
ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt messrs mme mlle rev hon gov sen rep gen col capt lt sgt maj
cmdr adm fr vs etc e.g i.e cf al approx ca no nos vol vols fig figs p pp ch op ed eds inc
ltd co corp bros dept est jan feb mar apr jun jul aug sep sept oct nov dec
""".split())
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]}»]*\s+")
_CJK_SENTENCE_END = re.compile(r"[。！？]+[」』”’)）]*")
_OPENERS = "\"'“‘([{«¿¡"


def split_sentences(paragraph: str) -> list[str]:
    """Splits a paragraph into sentences with the rules in the module docstring."""
    sentences = []
    start = 0
    for match in _SENTENCE_END.finditer(paragraph):
        end = match.end()
        if end >= len(paragraph):
            break
        if _starts_sentence(paragraph[end:]) and not _is_abbreviation(paragraph, match.start()):
            sentences.append(paragraph[start:end].strip())
            start = end
    sentences.append(paragraph[start:].strip())
    return [piece for s in sentences for piece in _split_cjk(s) if piece]


def _starts_sentence(text: str) -> bool:
    text = text.lstrip(_OPENERS)
    return bool(text) and text[0].isalpha() and not text[0].islower()


def _is_abbreviation(text: str, period: int) -> bool:
    if text[period] != ".":
        return False
    word = text[:period].rsplit(maxsplit=1)[-1] if text[:period].strip() else ""
    word = word.lstrip(_OPENERS)
    if not word:
        return False  # WikiText style "word . Next": the period stands alone.
    return (word.lower() in ABBREVIATIONS or (len(word) == 1 and word.isalpha())
            or "." in word)


def _split_cjk(sentence: str) -> list[str]:
    pieces, start = [], 0
    for match in _CJK_SENTENCE_END.finditer(sentence):
        pieces.append(sentence[start:match.end()].strip())
        start = match.end()
    pieces.append(sentence[start:].strip())
    return pieces
