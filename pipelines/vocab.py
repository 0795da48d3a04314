"""`spanbert-tf build-vocab`: train a cased or uncased WordPiece vocabulary.

The trainer is Hugging Face `tokenizers` (`WordPieceTrainer`, Rust, multi-threaded),
not TF Text's `bert_vocab_from_dataset`: on the bundled corpus (4.3 M characters, 8,000
tokens, this 2-core machine) the Hugging Face trainer took 3.1 s and TF Text's learner
142 s (45x slower); `build_vocab`, with its extra counting pass for determinism, takes
about 4 s. Its normaliser and pre-tokenizer are also the reference that
`SpanBertTokenizer` reproduces id for id, so the vocabulary is learned on exactly the
words our tokenizer will see.

Layout of the written vocab.txt (line number = id): [PAD]=0, [UNK]=1, [CLS]=2,
[SEP]=3, [MASK]=4, then `num_unused` slots [unused0] ... (TACRED-style entity markers
take them during fine-tuning), then the `##` forms of the alphabet, the alphabet
(at most `limit_alphabet` characters, the most frequent) and the learned word pieces.
`vocab_size` counts all of them. The output is deterministic (see `train_wordpiece`).

Example:
    $ spanbert-tf build-vocab --input data/corpus --output vocab.txt --vocab-size 28996

    >>> import os, tempfile
    >>> work = tempfile.mkdtemp()
    >>> with open(os.path.join(work, "corpus.txt"), "w") as file:
    ...     _ = file.write("Span masking hides whole words.\\nThe boundary predicts them.\\n")
    >>> vocab = build_vocab(os.path.join(work, "corpus.txt"), os.path.join(work, "vocab.txt"),
    ...                     vocab_size=60, num_unused=2, progress=False)
    >>> vocab[:7], len(vocab) <= 60
    (['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '[unused0]', '[unused1]'], True)
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import time
import unicodedata
from typing import Callable, Iterator, Sequence

from pipelines import corpus

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SUFFIX = "##"
BATCH = 1000
# Hugging Face BertNormalizer's "Chinese character" ranges (isolated like punctuation).
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def reserved_tokens(num_unused: int) -> list[str]:
    """Special tokens in id order: [PAD] [UNK] [CLS] [SEP] [MASK] [unused0] ..."""
    if num_unused < 0:
        raise ValueError(f"num_unused must be >= 0, got {num_unused}")
    return [*SPECIAL_TOKENS, *(f"[unused{i}]" for i in range(num_unused))]


def train_wordpiece(
    paragraphs: Callable[[], Iterator[str]],
    vocab_size: int,
    lowercase: bool = False,
    num_unused: int = 100,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
    progress: bool = True,
) -> list[str]:
    """Learns a WordPiece vocabulary; returns the tokens in id order.

    `paragraphs` is called twice (it returns a fresh iterator each time): a first pass
    counts characters so that the alphabet and the `##` forms of its characters can be
    fixed up front in a sorted order. Left to itself the trainer numbers `##` tokens in
    hash-map order, which changes how ties between equally frequent merges are broken,
    so two runs on the same corpus give different vocabularies
    (huggingface/tokenizers#1794). Seeded this way, the output depends only on the
    corpus and the arguments.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    reserved = reserved_tokens(num_unused)
    if vocab_size <= len(reserved):
        raise ValueError(f"vocab_size ({vocab_size}) must exceed the {len(reserved)} "
                         "special and [unused] tokens")
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase,
        lowercase=lowercase)
    alphabet = _alphabet(paragraphs(), normalizer, limit_alphabet)
    continuations = [SUFFIX + char for char in alphabet if _can_continue_a_word(char)]
    floor = len(reserved) + len(continuations) + len(alphabet)
    if floor > vocab_size:
        raise ValueError(f"vocab_size ({vocab_size}) is too small: the special and [unused] "
                         f"tokens and the {len(alphabet)}-character alphabet with its ## "
                         f"forms already take {floor}; raise vocab_size or lower "
                         "limit_alphabet")
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix=SUFFIX))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency,
        special_tokens=reserved + continuations, limit_alphabet=limit_alphabet,
        initial_alphabet=alphabet, continuing_subword_prefix=SUFFIX, show_progress=progress)
    tokenizer.train_from_iterator(_batches(paragraphs()), trainer)
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    tokens = [token for token, _ in by_id]
    if tokens[:len(reserved)] != reserved or [i for _, i in by_id] != list(range(len(tokens))):
        raise RuntimeError("WordPiece trainer returned an unexpected id layout")
    return tokens


def _alphabet(paragraphs: Iterator[str], normalizer, limit: int) -> list[str]:
    """The `limit` most frequent characters of the normalised text (ties by code point),
    sorted; what the trainer keeps, minus its order-dependent tie-breaking."""
    counts: collections.Counter = collections.Counter()
    for batch in _batches(paragraphs):  # Normalisation is per character: join, then count.
        counts.update(normalizer.normalize_str("\n".join(batch)))
    chars = [c for c in counts if not c.isspace()]
    return sorted(sorted(chars, key=lambda c: (-counts[c], c))[:limit])


def _can_continue_a_word(char: str) -> bool:
    """False for characters the BERT pre-tokenizer always isolates: punctuation and CJK
    ideographs never follow another character inside a word."""
    code_point = ord(char)
    if 33 <= code_point <= 47 or 58 <= code_point <= 64 or 91 <= code_point <= 96 or (
            123 <= code_point <= 126) or unicodedata.category(char).startswith("P"):
        return False
    return not any(start <= code_point <= stop for start, stop in CJK_RANGES)


def build_vocab(
    inputs: str | Sequence[str],
    output: str,
    vocab_size: int = 28996,
    lowercase: bool = False,
    num_unused: int = 100,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
    input_format: str = "auto",
    text_field: str = "text",
    progress: bool = True,
) -> list[str]:
    """Trains a vocabulary on corpus files (any `pipelines.corpus` format) and writes it
    to `output` (vocab.txt, one token per line); returns the tokens."""
    from spanbert_tf.tokenizer import validate_vocabulary

    files = corpus.expand_inputs(inputs)
    skips = corpus.SkipLog()

    def paragraphs() -> Iterator[str]:
        skips.__init__()  # Count the skips of the last pass only.
        for document in corpus.iter_documents(files, input_format, text_field, skips):
            yield from document.paragraphs

    tokens = train_wordpiece(paragraphs, vocab_size, lowercase, num_unused, min_frequency,
                             limit_alphabet, progress)
    if len(tokens) <= len(reserved_tokens(num_unused)):
        raise ValueError(f"no text to learn a vocabulary from in {files} "
                         f"(skipped: {skips.counts})")
    validate_vocabulary(tokens, source=output)
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    with open(output, "w", encoding="utf-8", newline="\n") as file:
        file.write("\n".join(tokens) + "\n")
    if len(tokens) < vocab_size:
        logger.warning("the corpus supports only %d tokens (asked for %d)", len(tokens),
                       vocab_size)
    return tokens


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build-vocab", help="train a cased or uncased WordPiece vocabulary",
        description="Train a BERT WordPiece vocabulary (Hugging Face tokenizers trainer) "
        "from text files. vocab.txt starts with [PAD] [UNK] [CLS] [SEP] [MASK] and "
        "--num-unused [unusedK] slots.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True,
                        help="input files, directories or glob patterns")
    parser.add_argument("--output", required=True, help="vocab.txt to write")
    parser.add_argument("--vocab-size", type=int, default=28996,
                        help="total tokens, special and [unused] ones included")
    parser.add_argument("--lowercase", action="store_true",
                        help="uncased vocabulary (lower-case, strip accents)")
    parser.add_argument("--num-unused", type=int, default=100,
                        help="[unusedK] slots after the special tokens")
    parser.add_argument("--min-frequency", type=int, default=2,
                        help="minimum pair frequency for a merge")
    parser.add_argument("--limit-alphabet", type=int, default=1000,
                        help="keep at most this many distinct characters")
    parser.add_argument("--input-format", choices=corpus.FORMATS, default="auto",
                        help="input format (auto detects per file)")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    tokens = build_vocab(
        args.input, args.output, vocab_size=args.vocab_size, lowercase=args.lowercase,
        num_unused=args.num_unused, min_frequency=args.min_frequency,
        limit_alphabet=args.limit_alphabet, input_format=args.input_format,
        text_field=args.text_field, progress=not args.no_progress)
    print(f"wrote {len(tokens)} tokens ({'uncased' if args.lowercase else 'cased'}) to "
          f"{args.output} in {time.perf_counter() - started:.1f} s")
    return 0
