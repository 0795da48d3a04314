"""`spanbert-tf prepare-pretraining`: text corpus -> packed, sharded TFRecord segments.

Pipeline (DESIGN.md section 3, "Input"):

1. documents stream from the input files (`pipelines.corpus`: plain text, JSONL,
   Project Gutenberg, WikiText; bad lines skipped and counted);
2. paragraphs are split into sentences (`corpus.split_sentences`) and tokenized with
   `SpanBertTokenizer`;
3. whole sentences of ONE document are packed greedily into segments of at most
   `max_seq_length - 2` tokens; a sentence longer than that is cut into pieces at word
   starts (at a word piece only if one word fills the whole window);
4. each segment becomes `[CLS] ... [SEP]` with word-start flags and is written as a
   record (`pipelines.pretraining_records`) through a seeded shuffle buffer,
   round-robin over `num_shards` files; with `heldout_fraction > 0`, whole documents
   (chosen by a hash of seed and document number) go to separate `heldout-*` shards
   for evaluation.

Memory is bounded: files are read line by line, work is cut into tasks of about
`task_chars` characters of text, at most 2 tasks per worker are in flight, and the
shuffle buffer holds `shuffle_buffer` records. Steps 2-3 run in `num_workers` processes (by default
all cores, but at most one per 64 MB of input, since each worker needs seconds to
import TensorFlow; a single worker runs in this process). Results are consumed in
submission order, so the output depends only on the inputs and the seed, not on the
number of workers. A `summary.json` beside the shards
records documents, sentences, segments, tokens, shards, skipped input with reasons,
time and throughput.

Example:
    >>> import os, tempfile
    >>> work = tempfile.mkdtemp()
    >>> vocab, text = os.path.join(work, "vocab.txt"), os.path.join(work, "corpus.txt")
    >>> with open(vocab, "w") as file:
    ...     _ = file.write("[PAD] [UNK] [CLS] [SEP] [MASK] the cat sat .".replace(" ", "\\n"))
    >>> with open(text, "w") as file:  # two documents
    ...     _ = file.write("The cat sat. The cat sat.\\n\\nThe cat.\\n")
    >>> summary = prepare_pretraining(text, os.path.join(work, "out"), vocab, lowercase=True,
    ...                               max_seq_length=8, progress=False)
    >>> summary.documents, summary.sentences, summary.segments, summary.tokens
    (2, 3, 3, 17)
    >>> [r["input_ids"].tolist() for r in read_pretraining_shards(
    ...     os.path.join(work, "out", "train-*")).as_numpy_iterator()][:2]
    [[2, 5, 6, 7, 8, 3], [2, 5, 6, 8, 3]]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import time
from typing import Iterator, Sequence

import numpy as np

from pipelines import corpus
from pipelines.pretraining_records import (
    SUMMARY_FILE, ShardWriter, read_pretraining_shards, serialize_segment)

__all__ = ["PretrainingDataSummary", "SegmentBuilder", "default_num_workers",
           "pack_document", "prepare_pretraining", "read_pretraining_shards", "register",
           "run", "split_at_word_starts"]

logger = logging.getLogger(__name__)

TOKENIZE_BATCH = 4096
BYTES_PER_WORKER = 64 << 20


@dataclasses.dataclass
class PretrainingDataSummary:
    """What `prepare_pretraining` wrote (also saved as summary.json)."""

    inputs: list[str]
    output_dir: str
    vocab_file: str
    vocab_size: int
    lowercase: bool
    max_seq_length: int
    seed: int
    documents: int = 0
    heldout_documents: int = 0
    sentences: int = 0
    long_sentences_split: int = 0
    segments: int = 0
    heldout_segments: int = 0
    tokens: int = 0
    text_tokens: int = 0
    shards: list = dataclasses.field(default_factory=list)
    heldout_shards: list = dataclasses.field(default_factory=list)
    skipped: dict = dataclasses.field(default_factory=dict)
    special_token_ids: dict = dataclasses.field(default_factory=dict)
    num_workers: int = 1
    seconds: float = 0.0
    tokens_per_second: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _TaskResult:
    """Segments of the documents of one task, in order, and counts."""

    records: list[tuple[int, bytes, int]]  # (document number, record, tokens)
    documents_with_text: list[int]
    sentences: int
    long_sentences_split: int
    text_tokens: int


def prepare_pretraining(
    inputs: str | Sequence[str],
    output_dir: str,
    vocab_file: str,
    *,
    lowercase: bool = False,
    max_seq_length: int = 512,
    num_shards: int = 8,
    heldout_fraction: float = 0.0,
    heldout_shards: int = 1,
    seed: int = 12345,
    input_format: str = "auto",
    text_field: str = "text",
    num_workers: int | None = None,
    shuffle_buffer: int = 10000,
    task_chars: int = 1 << 20,
    max_line_bytes: int = corpus.DEFAULT_MAX_LINE_BYTES,
    overwrite: bool = False,
    progress: bool = True,
) -> PretrainingDataSummary:
    """Tokenizes, packs and shards a corpus; returns the summary (see module docstring).

    Raises FileNotFoundError for a missing input or vocabulary, ValueError for bad
    arguments, existing shards in `output_dir` (unless `overwrite`) or a corpus that
    yields no segment.
    """
    from spanbert_tf.tokenizer import SpanBertTokenizer

    started = time.perf_counter()
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length must be >= 3 ([CLS] x [SEP]), got {max_seq_length}")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    files = corpus.expand_inputs(inputs)
    tokenizer = SpanBertTokenizer(vocab_file, lowercase=lowercase)  # Fails early on a bad vocab.
    _prepare_output_dir(output_dir, overwrite)
    total_bytes = sum(os.path.getsize(f) for f in files)
    num_workers = num_workers or default_num_workers(total_bytes)
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    summary = PretrainingDataSummary(
        inputs=files, output_dir=output_dir, vocab_file=os.path.abspath(vocab_file),
        vocab_size=tokenizer.vocab_size, lowercase=lowercase, max_seq_length=max_seq_length,
        seed=seed, special_token_ids=tokenizer.special_token_ids, num_workers=num_workers)
    skips = corpus.SkipLog()
    documents = corpus.iter_documents(files, input_format, text_field, skips, max_line_bytes)
    writers = {
        False: ShardWriter(output_dir, "train", num_shards, shuffle_buffer, seed),
        True: ShardWriter(output_dir, "heldout", heldout_shards, shuffle_buffer, seed + 1)
        if heldout_fraction > 0 else None,
    }
    heldout = functools.partial(_is_heldout, seed=seed, fraction=heldout_fraction)
    builder_args = (vocab_file, lowercase, max_seq_length)
    results = _run_tasks(_tasks(documents, task_chars), builder_args, num_workers, tokenizer)
    with _progress_bar(total_bytes, progress) as bar:
        for result, task_size in results:
            _collect(result, summary, writers, heldout)
            bar.update(min(task_size, total_bytes - bar.n))
            bar.set_postfix(segments=summary.segments + summary.heldout_segments,
                            tokens=summary.tokens, refresh=False)
        bar.update(total_bytes - bar.n)  # Markup and line ends are not document text.
    summary.shards = writers[False].close()
    if writers[True] is not None:
        summary.heldout_shards = writers[True].close()
    summary.skipped = skips.to_dict()
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.tokens_per_second = round(summary.text_tokens / max(summary.seconds, 1e-9), 1)
    with open(os.path.join(output_dir, SUMMARY_FILE), "w", encoding="utf-8") as file:
        json.dump(summary.to_dict(), file, indent=2)
    if not summary.segments:
        raise ValueError(f"no text to pretrain on in {files} (skipped: "
                         f"{json.dumps(skips.counts)})")
    return summary


def default_num_workers(total_bytes: int) -> int:
    """All cores, but one per `BYTES_PER_WORKER` (64 MB) of input: a worker process takes
    seconds to start (it imports TensorFlow), which a small corpus does not repay."""
    return max(1, min(os.cpu_count() or 1, total_bytes // BYTES_PER_WORKER))


def pack_document(sentences: Sequence[tuple[np.ndarray, np.ndarray]],
                  max_tokens: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Packs the (ids, word_starts) of one document's sentences into segments.

    Whole sentences are added while the segment stays within `max_tokens`; a sentence
    longer than `max_tokens` is cut into pieces (`split_at_word_starts`) that are packed
    the same way. Returns the segments (without [CLS]/[SEP]) and how many sentences
    were cut.
    """
    segments: list[tuple[np.ndarray, np.ndarray]] = []
    ids_parts: list[np.ndarray] = []
    starts_parts: list[np.ndarray] = []
    length = 0
    cut = 0
    for ids, starts in sentences:
        if len(ids) > max_tokens:
            pieces = split_at_word_starts(ids, starts, max_tokens)
            cut += 1
        else:
            pieces = [(ids, starts)] if len(ids) else []
        for piece_ids, piece_starts in pieces:
            if length and length + len(piece_ids) > max_tokens:
                segments.append((np.concatenate(ids_parts), np.concatenate(starts_parts)))
                ids_parts, starts_parts, length = [], [], 0
            ids_parts.append(piece_ids)
            starts_parts.append(piece_starts)
            length += len(piece_ids)
    if length:
        segments.append((np.concatenate(ids_parts), np.concatenate(starts_parts)))
    return segments, cut


def split_at_word_starts(ids: np.ndarray, starts: np.ndarray,
                         max_tokens: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cuts a token sequence into pieces of at most `max_tokens`, each cut placed at the
    last word start that fits (mid-word only when no word starts inside the window)."""
    pieces = []
    begin = 0
    while len(ids) - begin > max_tokens:
        word_starts = np.flatnonzero(starts[begin + 1:begin + max_tokens + 1])
        end = begin + 1 + int(word_starts[-1]) if len(word_starts) else begin + max_tokens
        pieces.append((ids[begin:end], starts[begin:end]))
        begin = end
    pieces.append((ids[begin:], starts[begin:]))
    return pieces


class SegmentBuilder:
    """Sentences -> token ids -> packed, serialized segments (runs in each worker)."""

    def __init__(self, vocab_file: str, lowercase: bool, max_seq_length: int,
                 tokenizer=None):
        from spanbert_tf.tokenizer import SpanBertTokenizer

        self.tokenizer = tokenizer or SpanBertTokenizer(vocab_file, lowercase=lowercase)
        self.max_tokens = max_seq_length - 2
        self.word_start_flags = self.tokenizer.word_start_flags()
        self.cls, self.sep = self.tokenizer.cls_id, self.tokenizer.sep_id

    def __call__(self, task: list[tuple[int, corpus.Document]]) -> _TaskResult:
        try:
            return self._build(task)
        except Exception as error:  # Say which documents, then re-raise in the parent.
            first, last = task[0][1].source, task[-1][1].source
            raise RuntimeError(f"failed on documents {first} .. {last}: "
                               f"{type(error).__name__}: {error}") from error

    def _build(self, task: list[tuple[int, corpus.Document]]) -> _TaskResult:
        sentences = [[s for p in doc.paragraphs for s in corpus.split_sentences(p)]
                     for _, doc in task]
        token_ids = self._tokenize([s for doc in sentences for s in doc])
        records: list[tuple[int, bytes, int]] = []
        with_text: list[int] = []
        cut = text_tokens = position = 0
        for (number, _), doc_sentences in zip(task, sentences):
            doc_ids = token_ids[position:position + len(doc_sentences)]
            position += len(doc_sentences)
            pairs = [(ids, self.word_start_flags[ids]) for ids in doc_ids]
            segments, doc_cut = pack_document(pairs, self.max_tokens)
            cut += doc_cut
            if segments:
                with_text.append(number)
            for ids, starts in segments:
                text_tokens += len(ids)
                full_ids = [self.cls, *ids.tolist(), self.sep]
                full_starts = [0, *starts.tolist(), 0]
                records.append((number, serialize_segment(full_ids, full_starts), len(full_ids)))
        return _TaskResult(records, with_text, sum(map(len, sentences)), cut, text_tokens)

    def _tokenize(self, sentences: list[str]) -> list[np.ndarray]:
        import tensorflow as tf

        out: list[np.ndarray] = []
        for begin in range(0, len(sentences), TOKENIZE_BATCH):
            ragged = self.tokenizer.tokenize(tf.constant(sentences[begin:begin + TOKENIZE_BATCH]))
            flat, splits = ragged.flat_values.numpy(), ragged.row_splits.numpy()
            out.extend(np.split(flat, splits[1:-1]))
        return out


_WORKER_BUILDER: SegmentBuilder | None = None


def _init_worker(vocab_file: str, lowercase: bool, max_seq_length: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    global _WORKER_BUILDER
    _WORKER_BUILDER = SegmentBuilder(vocab_file, lowercase, max_seq_length)


def _run_in_worker(task: list[tuple[int, corpus.Document]]) -> _TaskResult:
    return _WORKER_BUILDER(task)


def _tasks(documents: Iterator[corpus.Document],
           task_chars: int) -> Iterator[tuple[list[tuple[int, corpus.Document]], int]]:
    """Groups numbered documents into tasks of about `task_chars` characters."""
    task: list[tuple[int, corpus.Document]] = []
    size = 0
    for number, document in enumerate(documents):
        task.append((number, document))
        size += document.num_chars
        if size >= task_chars:
            yield task, size
            task, size = [], 0
    if task:
        yield task, size


def _run_tasks(tasks, builder_args, num_workers: int,
               tokenizer=None) -> Iterator[tuple[_TaskResult, int]]:
    """Runs tasks in order, in this process (reusing `tokenizer`) or in a pool with a
    bounded window."""
    if num_workers == 1:
        builder = SegmentBuilder(*builder_args, tokenizer=tokenizer)
        for task, size in tasks:
            yield builder(task), size
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    context = multiprocessing.get_context("spawn")  # TF in the parent makes fork unsafe.
    with context.Pool(num_workers, initializer=_init_worker, initargs=builder_args) as pool:
        pending: collections.deque = collections.deque()
        for task, size in tasks:
            pending.append((pool.apply_async(_run_in_worker, (task,)), size))
            if len(pending) >= 2 * num_workers:
                result, done_size = pending.popleft()
                yield result.get(), done_size
        while pending:
            result, done_size = pending.popleft()
            yield result.get(), done_size


def _collect(result: _TaskResult, summary: PretrainingDataSummary, writers, heldout) -> None:
    summary.sentences += result.sentences
    summary.long_sentences_split += result.long_sentences_split
    summary.text_tokens += result.text_tokens
    for number in result.documents_with_text:
        if heldout(number):
            summary.heldout_documents += 1
        else:
            summary.documents += 1
    for number, record, num_tokens in result.records:
        is_heldout = heldout(number)
        writers[is_heldout].write(record, num_tokens)
        summary.tokens += num_tokens
        if is_heldout:
            summary.heldout_segments += 1
        else:
            summary.segments += 1


def _is_heldout(document_number: int, seed: int, fraction: float) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}:{document_number}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < fraction


def _prepare_output_dir(output_dir: str, overwrite: bool) -> None:
    os.makedirs(output_dir, exist_ok=True)
    old = sorted(n for n in os.listdir(output_dir)
                 if n.endswith(".tfrecord") and n.startswith(("train-", "heldout-")))
    if os.path.exists(os.path.join(output_dir, SUMMARY_FILE)):
        old.append(SUMMARY_FILE)
    if old and not overwrite:
        raise ValueError(f"{output_dir} already holds pretraining data ({old[0]}, ...); "
                         "pass --overwrite to replace it")
    for name in old:
        os.remove(os.path.join(output_dir, name))


class _NoBar:
    n = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.n += n

    def set_postfix(self, **kwargs):
        pass


def _progress_bar(total_bytes: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare-pretraining",
                smoothing=0.1)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare-pretraining",
        help="tokenize, pack and shard a text corpus into pretraining TFRecords",
        description=__doc__.split("\n\n")[0] + " Segments are packed from whole "
        "sentences of one document; records hold input_ids and word_starts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True,
                        help="input files, directories or glob patterns")
    parser.add_argument("--output-dir", required=True, help="directory for shards + summary.json")
    parser.add_argument("--vocab", required=True, help="WordPiece vocab.txt")
    parser.add_argument("--lowercase", action="store_true",
                        help="uncased tokenization (SpanBERT is cased)")
    parser.add_argument("--max-seq-length", type=int, default=512,
                        help="segment length including [CLS] and [SEP]")
    parser.add_argument("--num-shards", type=int, default=8, help="training shard files")
    parser.add_argument("--heldout-fraction", type=float, default=0.0,
                        help="fraction of documents written to heldout-* shards")
    parser.add_argument("--heldout-shards", type=int, default=1, help="held-out shard files")
    parser.add_argument("--seed", type=int, default=12345,
                        help="seed of the shuffle buffer and the held-out choice")
    parser.add_argument("--input-format", choices=corpus.FORMATS, default="auto",
                        help="input format (auto detects per file)")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="tokenizing processes (default: all cores, at most one per "
                        "64 MB of input)")
    parser.add_argument("--shuffle-buffer", type=int, default=10000,
                        help="records in the shuffle buffer (1 = keep corpus order)")
    parser.add_argument("--max-line-bytes", type=int, default=corpus.DEFAULT_MAX_LINE_BYTES,
                        help="longer input lines are skipped and counted")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace shards and summary already in --output-dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    summary = prepare_pretraining(
        args.input, args.output_dir, args.vocab, lowercase=args.lowercase,
        max_seq_length=args.max_seq_length, num_shards=args.num_shards,
        heldout_fraction=args.heldout_fraction, heldout_shards=args.heldout_shards,
        seed=args.seed, input_format=args.input_format, text_field=args.text_field,
        num_workers=args.num_workers, shuffle_buffer=args.shuffle_buffer,
        max_line_bytes=args.max_line_bytes, overwrite=args.overwrite,
        progress=not args.no_progress)
    skipped = sum(v["count"] for v in summary.skipped.values())
    print(f"{summary.documents} documents, {summary.sentences} sentences -> "
          f"{summary.segments} segments, {summary.tokens} tokens in "
          f"{len(summary.shards)} shards ({summary.heldout_segments} held-out segments); "
          f"{skipped} input items skipped; {summary.seconds:.1f} s, "
          f"{summary.tokens_per_second:,.0f} tokens/s -> "
          f"{os.path.join(summary.output_dir, SUMMARY_FILE)}")
    return 0
