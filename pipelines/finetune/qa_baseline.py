"""The trivial QA baseline of the acceptance check: the context's first sentence.

A sentence ends at ".", "!" or "?" (optionally followed by closing quotes or brackets)
when whitespace and then an upper-case letter, a digit or an opening quote follow; a
context without such a break is one sentence.

Example:
    >>> first_sentence("The Normans were in France. They gave their name to Normandy.")
    'The Normans were in France.'
    >>> first_sentence("No break here")
    'No break here'
"""

from __future__ import annotations

import re
from typing import Iterable

from pipelines.finetune.qa_data import QAExample

_SENTENCE_END = re.compile(r"""[.!?]["')\]]*(?=\s+["'(\[]?[A-Z0-9])""")


def first_sentence(context: str) -> str:
    """The first sentence of `context`, stripped."""
    text = context.strip()
    match = _SENTENCE_END.search(text)
    return text[:match.end()] if match else text


def first_sentence_predictions(examples: Iterable[QAExample]) -> dict[str, str]:
    """{qid: first sentence of its context}."""
    return {example.qid: first_sentence(example.context) for example in examples}
