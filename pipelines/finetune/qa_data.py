"""Reading extractive-QA data: SQuAD v1.1 / v2.0 JSON and MRQA JSONL.

Both formats become a list of `QAExample` (one per question) plus the gold answers in
the official SQuAD evaluation layout (`gold`: `[{"paragraphs": [{"qas": [{"id",
"answers": [{"text"}]}]}]}]`), which `pipelines.finetune.qa_metrics` scores.

Checks, so that bad data never fails later without a location:
- a file that is not valid JSON, or a record without a required field, raises
  `QADataError` naming the file and the place (`data[3].paragraphs[2].qas[5]`, or the
  JSONL line number);
- an answer whose text is not the context at its offset is skipped with a warning (the
  first few are logged with their location) and counted; a question left without an
  aligned answer is kept for prediction and evaluation but gets no training label;
- a paragraph with an empty context is skipped and counted (its questions too).
The counts are in `QAData.summary`.

SQuAD offsets (`answer_start`) and MRQA `char_spans` (inclusive ends) are Python `str`
indices into the context. MRQA's `detected_answers[].text` is normalised text, so a
span is accepted when it matches up to case and whitespace; the evaluation uses the
raw `answers` strings, as the MRQA evaluation script does.

Example:
    >>> import json, tempfile
    >>> squad = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{
    ...     "context": "Paris is the capital of France.",
    ...     "qas": [{"id": "q1", "question": "What is the capital of France?",
    ...              "answers": [{"text": "Paris", "answer_start": 0}]}]}]}]}
    >>> path = tempfile.mktemp(suffix=".json")
    >>> _ = open(path, "w").write(json.dumps(squad))
    >>> data = read_qa_file(path)
    >>> data.examples[0].answers[0], data.version_2
    (Answer(text='Paris', start=0), False)
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import logging
import os
from typing import Any, Iterator

logger = logging.getLogger(__name__)

# Misaligned answers logged one by one before only the count is reported.
MAX_LOGGED_WARNINGS = 5


class QADataError(ValueError):
    """Malformed QA data; the message names the file and the location."""


@dataclasses.dataclass(frozen=True)
class Answer:
    """An answer span: `context[start:start + len(text)] == text` (a `str` index)."""

    text: str
    start: int

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclasses.dataclass
class QAExample:
    """One question about one context.

    Attributes:
        qid: question id (unique in the file).
        question: question text.
        context: context text (shared by the questions of a paragraph).
        context_index: index of the context in the file (examples with the same index
            share the context object, so it is tokenized once).
        answers: answer spans aligned with the context (misaligned ones are dropped).
        is_impossible: SQuAD 2.0 "no answer in the context".
        gold_texts: every gold answer string, as the official evaluation reads them.
    """

    qid: str
    question: str
    context: str
    context_index: int
    answers: list[Answer]
    is_impossible: bool = False
    gold_texts: list[str] = dataclasses.field(default_factory=list)

    @property
    def trainable(self) -> bool:
        """True when the example has a training label (an answer, or no-answer)."""
        return self.is_impossible or bool(self.answers)


@dataclasses.dataclass
class QASummary:
    """Counts of what reading kept and skipped."""

    questions: int = 0
    contexts: int = 0
    impossible: int = 0
    misaligned_answers: int = 0
    unlabelled_questions: int = 0  # answerable but no aligned answer: not trained on
    empty_contexts: int = 0
    skipped_questions: int = 0  # questions of empty contexts

    def describe(self) -> str:
        parts = [f"{self.questions} questions on {self.contexts} contexts"]
        if self.impossible:
            parts.append(f"{self.impossible} without answer")
        if self.misaligned_answers:
            parts.append(f"{self.misaligned_answers} misaligned answers skipped "
                         f"({self.unlabelled_questions} questions left without a training "
                         f"label)")
        if self.empty_contexts:
            parts.append(f"{self.empty_contexts} empty contexts skipped with their "
                         f"{self.skipped_questions} questions")
        return ", ".join(parts)


@dataclasses.dataclass
class QAData:
    """The examples of one file, its gold answers (official layout) and reading counts."""

    path: str
    examples: list[QAExample]
    gold: list[dict[str, Any]]
    summary: QASummary
    version_2: bool
    format: str  # "squad" or "mrqa"

    @property
    def labelled(self) -> bool:
        """Every question has gold answers or is marked impossible (metrics possible)."""
        return all(e.gold_texts or e.is_impossible for e in self.examples)


def read_qa_file(path: str | os.PathLike, version_2: bool | None = None,
                 require_answers: bool = True) -> QAData:
    """Reads a SQuAD JSON (`.json`) or MRQA JSONL (`.jsonl`, `.jsonl.gz`) file.

    Args:
        path: the file.
        version_2: whether questions may have no answer. Default: inferred (SQuAD:
            "version" 2.x or any `is_impossible` question; MRQA: any `is_impossible`).
        require_answers: an answerable question without answers is an error (training
            and scoring need them); False reads unlabelled files for prediction only.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"QA data file not found: {path}")
    reader = _Reader(path, require_answers)
    if path.endswith((".jsonl", ".jsonl.gz")):
        reader.read_mrqa()
    else:
        reader.read_squad()
    if reader.summary.misaligned_answers > MAX_LOGGED_WARNINGS:
        logger.warning("%s: %d answers do not match the context at their offset and were "
                       "skipped", path, reader.summary.misaligned_answers)
    inferred = reader.declared_v2 or reader.summary.impossible > 0
    return QAData(path=path, examples=reader.examples, gold=reader.gold_articles(),
                  summary=reader.summary,
                  version_2=inferred if version_2 is None else bool(version_2),
                  format=reader.format)


class _Reader:
    """Accumulates examples, gold answers and counts while walking one file."""

    def __init__(self, path: str, require_answers: bool = True):
        self.path = path
        self.require_answers = require_answers
        self.examples: list[QAExample] = []
        self.summary = QASummary()
        self.declared_v2 = False
        self.format = "squad"
        self._gold_qas: list[dict[str, Any]] = []

    def error(self, where: str, message: str) -> QADataError:
        return QADataError(f"{self.path}: {where}: {message}")

    def field(self, record: Any, name: str, where: str, kind: type | tuple):
        if not isinstance(record, dict):
            raise self.error(where, f"expected a JSON object, got {type(record).__name__}")
        if name not in record:
            raise self.error(where, f"missing field {name!r}")
        value = record[name]
        # JSON true/false are Python ints too; never accept them as numbers.
        if not isinstance(value, kind) or isinstance(value, bool):
            names = "/".join(k.__name__ for k in _as_tuple(kind))
            raise self.error(where, f"field {name!r} should be {names}, got "
                                    f"{type(value).__name__}")
        return value

    def warn_misaligned(self, where: str, text: str, found: str) -> None:
        self.summary.misaligned_answers += 1
        if self.summary.misaligned_answers <= MAX_LOGGED_WARNINGS:
            logger.warning("%s: %s: answer %r does not match the context there (%r); "
                           "skipped", self.path, where, text, found)

    # SQuAD ---------------------------------------------------------------------
    def read_squad(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as file:
                document = json.load(file)
        except json.JSONDecodeError as error:
            raise QADataError(f"{self.path}: not valid JSON: line {error.lineno} column "
                              f"{error.colno}: {error.msg}") from None
        except UnicodeDecodeError as error:
            raise QADataError(f"{self.path}: not UTF-8 text ({error})") from None
        version = str(document.get("version", "")) if isinstance(document, dict) else ""
        self.declared_v2 = version.lstrip("v").startswith("2")
        articles = self.field(document, "data", "top level", list)
        for a, article in enumerate(articles):
            paragraphs = self.field(article, "paragraphs", f"data[{a}]", list)
            for p, paragraph in enumerate(paragraphs):
                where = f"data[{a}].paragraphs[{p}]"
                context = self.field(paragraph, "context", where, str)
                qas = self.field(paragraph, "qas", where, list)
                self.add_context(context, [
                    self.squad_question(qa, context, f"{where}.qas[{q}]")
                    for q, qa in enumerate(qas)])

    def squad_question(self, qa: Any, context: str, where: str) -> dict[str, Any]:
        qid = str(self.field(qa, "id", where, (str, int)))
        question = self.field(qa, "question", where, str)
        impossible = bool(qa.get("is_impossible", False))
        answers = [] if impossible else (
            self.field(qa, "answers", where, list) if self.require_answers or "answers" in qa
            else [])
        aligned, gold = [], []
        for n, answer in enumerate(answers):
            answer_where = f"{where}.answers[{n}]"
            text = self.field(answer, "text", answer_where, str)
            start = self.field(answer, "answer_start", answer_where, int)
            gold.append(text)
            found = context[start:start + len(text)] if start >= 0 else ""
            if start < 0 or found != text:
                self.warn_misaligned(answer_where, text, found)
            else:
                aligned.append(Answer(text, start))
        if not impossible and not answers and self.require_answers:
            raise self.error(where, "an answerable question needs at least one answer "
                                    "(or \"is_impossible\": true)")
        return {"qid": qid, "question": question, "answers": aligned,
                "is_impossible": impossible, "gold": gold}

    # MRQA ----------------------------------------------------------------------
    def read_mrqa(self) -> None:
        self.format = "mrqa"
        for line_number, record in self.jsonl_records():
            where = f"line {line_number}"
            if "header" in record and "context" not in record:
                continue
            context = self.field(record, "context", where, str)
            qas = self.field(record, "qas", where, list)
            self.add_context(context, [
                self.mrqa_question(qa, context, f"{where}: qas[{q}]")
                for q, qa in enumerate(qas)])

    def jsonl_records(self) -> Iterator[tuple[int, Any]]:
        opener = gzip.open if self.path.endswith(".gz") else open
        try:
            with opener(self.path, "rt", encoding="utf-8") as file:
                for line_number, line in enumerate(file, 1):
                    if not line.strip():
                        continue
                    try:
                        yield line_number, json.loads(line)
                    except json.JSONDecodeError as error:
                        raise QADataError(f"{self.path}: line {line_number}: not valid "
                                          f"JSON: column {error.colno}: {error.msg}") from None
        except UnicodeDecodeError as error:
            raise QADataError(f"{self.path}: not UTF-8 text ({error})") from None

    def mrqa_question(self, qa: Any, context: str, where: str) -> dict[str, Any]:
        qid = str(self.field(qa, "qid", where, (str, int)))
        question = self.field(qa, "question", where, str)
        impossible = bool(qa.get("is_impossible", False))
        labelled = not impossible and (self.require_answers or "answers" in qa)
        gold = [str(text) for text in self.field(qa, "answers", where, list)] if labelled else []
        aligned = []
        detected = (self.field(qa, "detected_answers", where, list)
                    if labelled and (self.require_answers or "detected_answers" in qa) else [])
        for n, answer in enumerate(detected):
            answer_where = f"{where}.detected_answers[{n}]"
            text = self.field(answer, "text", answer_where, str)
            spans = self.field(answer, "char_spans", answer_where, list)
            for s, span in enumerate(spans):
                if (not isinstance(span, list) or len(span) != 2
                        or not all(isinstance(v, int) for v in span)):
                    raise self.error(f"{answer_where}.char_spans[{s}]",
                                     f"expected [start, end] integers, got {span!r}")
                start, end = span
                found = context[start:end + 1] if 0 <= start <= end else ""
                if _loose(found) != _loose(text):
                    self.warn_misaligned(f"{answer_where}.char_spans[{s}]", text, found)
                else:
                    aligned.append(Answer(found, start))
        if not impossible and not gold and self.require_answers:
            raise self.error(where, "an answerable question needs at least one entry in "
                                    "'answers'")
        return {"qid": qid, "question": question, "answers": aligned,
                "is_impossible": impossible, "gold": gold}

    # Shared --------------------------------------------------------------------
    def add_context(self, context: str, questions: list[dict[str, Any]]) -> None:
        if not context.strip():
            self.summary.empty_contexts += 1
            self.summary.skipped_questions += len(questions)
            return
        context_index = self.summary.contexts
        self.summary.contexts += 1
        for q in questions:
            example = QAExample(qid=q["qid"], question=q["question"], context=context,
                                context_index=context_index, answers=q["answers"],
                                is_impossible=q["is_impossible"], gold_texts=q["gold"])
            self.summary.questions += 1
            self.summary.impossible += example.is_impossible
            self.summary.unlabelled_questions += not example.trainable
            self.examples.append(example)
            self._gold_qas.append({"id": example.qid,
                                   "answers": [{"text": t} for t in example.gold_texts]})

    def gold_articles(self) -> list[dict[str, Any]]:
        counts = collections.Counter(qa["id"] for qa in self._gold_qas)
        duplicates = sorted(qid for qid, count in counts.items() if count > 1)[:5]
        if duplicates:
            raise QADataError(f"{self.path}: question ids are not unique: {duplicates}")
        return [{"paragraphs": [{"qas": self._gold_qas}]}]


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _loose(text: str) -> str:
    return " ".join(text.lower().split())
