"""prepare-pretraining: packing, the bundled corpus at 512, determinism, bad input, shards."""

from __future__ import annotations

import json
import os
import struct
import time

import numpy as np
import pytest
import tensorflow as tf

from corpus_helpers import bundled_cased_vocab, bundled_files
from pipelines import corpus
from pipelines.prepare_pretraining import (
    pack_document, prepare_pretraining, split_at_word_starts)
from pipelines.pretraining_records import (
    read_pretraining_shards, serialize_segment, validate_shards)
from spanbert_tf import cli
from spanbert_tf.tokenizer import SpanBertTokenizer


def _sentence(length: int, first: int = 10, starts=None):
    ids = np.arange(first, first + length, dtype=np.int32)
    flags = np.ones(length, np.int32) if starts is None else np.asarray(starts, np.int32)
    return ids, flags


def test_whole_sentences_are_packed_up_to_the_limit():
    sentences = [_sentence(n, 100 * i) for i, n in enumerate([3, 4, 2, 5, 8, 1])]
    segments, cut = pack_document(sentences, max_tokens=8)
    assert [len(ids) for ids, _ in segments] == [7, 7, 8, 1]
    assert cut == 0
    assert segments[0][0].tolist() == [0, 1, 2, 100, 101, 102, 103]
    assert pack_document([], 8) == ([], 0)
    assert pack_document([_sentence(0)], 8) == ([], 0)


def test_long_sentence_is_cut_at_the_last_word_start_that_fits():
    #        positions: 0  1  2  3  4  5  6  7  8  9 10 11
    starts = np.array([1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0])
    ids, flags = _sentence(12, starts=starts)
    pieces = split_at_word_starts(ids, flags, max_tokens=7)
    assert [p[0].tolist() for p in pieces] == [
        [10, 11, 12, 13, 14], [15, 16, 17, 18, 19, 20, 21]]
    segments, cut = pack_document([_sentence(2, 50), (ids, flags), _sentence(1, 90)], 7)
    assert cut == 1
    # The pieces are packed like sentences: the first one fits after [50, 51].
    assert [s[0].tolist() for s in segments] == [
        [50, 51, 10, 11, 12, 13, 14], [15, 16, 17, 18, 19, 20, 21], [90]]


def test_a_word_longer_than_the_window_is_cut_inside_the_word():
    ids, flags = _sentence(10, starts=[1] + [0] * 9)
    pieces = split_at_word_starts(ids, flags, max_tokens=4)
    assert [len(p[0]) for p in pieces] == [4, 4, 2]


@pytest.fixture(scope="module")
def bundled_at_512(tmp_path_factory):
    vocab, _ = bundled_cased_vocab()
    output = str(tmp_path_factory.mktemp("pretraining_512"))
    started = time.perf_counter()
    summary = prepare_pretraining(bundled_files(), output, vocab, max_seq_length=512,
                                  num_shards=4, num_workers=1, progress=False)
    return summary, time.perf_counter() - started


def test_bundled_corpus_at_512(bundled_at_512):
    summary, seconds = bundled_at_512
    vocab, _ = bundled_cased_vocab()
    tokenizer = SpanBertTokenizer(vocab)
    print(f"\nprepare-pretraining, bundled corpus, 512: {summary.documents} documents, "
          f"{summary.sentences} sentences, {summary.segments} segments, {summary.tokens} "
          f"tokens in {seconds:.1f} s wall ({summary.seconds:.1f} s inside, "
          f"{summary.tokens_per_second:,.0f} text tokens/s)")
    documents = list(corpus.iter_documents(bundled_files()))
    sentences = [s for d in documents for p in d.paragraphs for s in corpus.split_sentences(p)]
    assert summary.documents == 52 and summary.sentences == len(sentences)
    sentence_tokens = int(tf.reduce_sum(tokenizer.tokenize(sentences).row_lengths()))
    assert summary.text_tokens == sentence_tokens  # nothing lost, nothing added
    assert summary.tokens == summary.text_tokens + 2 * summary.segments
    assert summary.skipped == {} and len(summary.shards) == 4

    records = list(read_pretraining_shards(os.path.join(summary.output_dir, "train-*"),
                                           validate="full").as_numpy_iterator())
    assert len(records) == summary.segments == sum(s["segments"] for s in summary.shards)
    lengths = np.array([len(r["input_ids"]) for r in records])
    assert lengths.max() <= 512 and lengths.sum() == summary.tokens
    assert lengths.mean() > 470 and np.mean(lengths >= 400) > 0.95  # packing fills segments
    flags = tokenizer.word_start_flags()
    for record in records:
        ids, starts = record["input_ids"], record["word_starts"]
        assert ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id
        assert not np.isin(ids[1:-1], [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id]).any()
        assert starts[0] == 0 and starts[-1] == 0
        assert (starts[1:-1] == flags[ids[1:-1]]).all()
    with open(os.path.join(summary.output_dir, "summary.json"), encoding="utf-8") as file:
        saved = json.load(file)
    assert saved["segments"] == summary.segments and saved["skipped"] == {}
    assert saved["special_token_ids"]["[CLS]"] == tokenizer.cls_id


def _marked_corpus(tmp_path, num_documents=24, sentences_per_document=12):
    """Documents whose sentences all carry the document's marker word."""
    path = tmp_path / "marked.txt"
    with open(path, "w", encoding="utf-8") as file:
        for d in range(num_documents):
            for s in range(sentences_per_document):
                file.write(f"Marker{chr(65 + d % 26)}{chr(65 + d // 26)} says the "
                           f"sentence number {s} of this document. ")
                if s % 3 == 2:
                    file.write("\n")
            file.write("\n\n")
    return str(path)


def _segments(output_dir, prefix="train"):
    dataset = read_pretraining_shards(os.path.join(output_dir, f"{prefix}-*"))
    return [r["input_ids"].tolist() for r in dataset.as_numpy_iterator()]


def _markers(tokenizer, ids):
    text = tokenizer.detokenize([ids]).numpy()[0].decode()
    return {w for w in text.split() if w.startswith("Marker")}


def test_segments_never_mix_documents_and_heldout_documents_are_separate(tmp_path):
    vocab, _ = bundled_cased_vocab()
    tokenizer = SpanBertTokenizer(vocab)
    output = str(tmp_path / "out")
    summary = prepare_pretraining(_marked_corpus(tmp_path), output, vocab, max_seq_length=64,
                                  num_shards=3, heldout_fraction=0.25, num_workers=1,
                                  progress=False)
    train = [_markers(tokenizer, ids) for ids in _segments(output)]
    heldout = [_markers(tokenizer, ids) for ids in _segments(output, "heldout")]
    assert all(len(m) == 1 for m in train + heldout)
    train_docs, heldout_docs = set.union(*train), set.union(*heldout)
    assert not train_docs & heldout_docs
    assert len(train_docs) + len(heldout_docs) == 24
    assert (summary.documents, summary.heldout_documents) == (len(train_docs), len(heldout_docs))
    assert 2 <= len(heldout_docs) <= 12
    assert summary.heldout_segments == len(heldout) and summary.segments == len(train)


def _shard_bytes(output_dir):
    return {name: open(os.path.join(output_dir, name), "rb").read()
            for name in sorted(os.listdir(output_dir)) if name.endswith(".tfrecord")}


def test_output_is_deterministic_for_a_seed_and_independent_of_workers(tmp_path):
    vocab, _ = bundled_cased_vocab()
    corpus_file = _marked_corpus(tmp_path, num_documents=40)
    runs = {}
    for name, seed, workers in [("a", 7, 1), ("b", 7, 1), ("c", 7, 2), ("d", 8, 1)]:
        output = str(tmp_path / name)
        summary = prepare_pretraining(corpus_file, output, vocab, max_seq_length=48,
                                      num_shards=2, seed=seed, num_workers=workers,
                                      task_chars=2048, shuffle_buffer=50, progress=False)
        assert summary.num_workers == workers
        runs[name] = _shard_bytes(output)
    assert runs["a"] == runs["b"] == runs["c"]
    assert runs["a"] != runs["d"]
    assert sorted(map(tuple, _segments(tmp_path / "a"))) == sorted(
        map(tuple, _segments(tmp_path / "d")))  # a different shuffle of the same segments


def test_bad_input_is_skipped_counted_and_reported(tmp_path):
    vocab, _ = bundled_cased_vocab()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a_empty.txt").write_bytes(b"")
    (inputs / "b_blank_lines.txt").write_bytes(b"\n\n   \n\r\n")
    (inputs / "c_binary.txt").write_bytes(bytes(range(256)) * 20)
    (inputs / "d_mixed.txt").write_bytes(
        b"A good sentence about whales.\n\xc3\x28 invalid utf-8 here\n\nAnother document.\n")
    (inputs / "e_huge_line.txt").write_bytes(b"word " * (2 << 20) + b"\nShort tail line.\n")
    summary = prepare_pretraining(str(inputs), str(tmp_path / "out"), vocab,
                                  max_seq_length=128, num_workers=1, progress=False)
    skipped = summary.skipped
    assert skipped["empty_file"]["count"] == 2
    assert skipped["empty_file"]["examples"] == [str(inputs / "a_empty.txt"),
                                                 str(inputs / "b_blank_lines.txt")]
    assert skipped["line_too_long"] == {"count": 1,
                                        "examples": [f"{inputs / 'e_huge_line.txt'}:1"]}
    assert f"{inputs / 'd_mixed.txt'}:2" in skipped["invalid_utf8"]["examples"]
    assert skipped["binary_data"]["examples"][0].startswith(str(inputs / "c_binary.txt"))
    assert summary.documents == 3  # the two of d_mixed.txt and the tail of e_huge_line.txt
    with open(tmp_path / "out" / "summary.json", encoding="utf-8") as file:
        assert json.load(file)["skipped"] == skipped


def test_missing_vocab_missing_input_and_no_text(tmp_path):
    vocab, _ = bundled_cased_vocab()
    text = tmp_path / "t.txt"
    text.write_text("Some text.\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="vocabulary file not found: .*no_vocab.txt"):
        prepare_pretraining(str(text), str(tmp_path / "o1"), str(tmp_path / "no_vocab.txt"))
    with pytest.raises(FileNotFoundError, match="input file not found: .*nothing.txt"):
        prepare_pretraining(str(tmp_path / "nothing.txt"), str(tmp_path / "o2"), vocab)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="no text to pretrain on .*empty_file"):
        prepare_pretraining(str(empty), str(tmp_path / "o3"), vocab, progress=False)


def test_existing_output_needs_overwrite(tmp_path):
    vocab, _ = bundled_cased_vocab()
    text = tmp_path / "t.txt"
    text.write_text("Some text here.\n", encoding="utf-8")
    output = str(tmp_path / "out")
    prepare_pretraining(str(text), output, vocab, num_shards=3, progress=False)
    with pytest.raises(ValueError, match="already holds pretraining data.*--overwrite"):
        prepare_pretraining(str(text), output, vocab, progress=False)
    prepare_pretraining(str(text), output, vocab, num_shards=1, overwrite=True, progress=False)
    assert sorted(os.listdir(output)) == ["summary.json", "train-00000-of-00001.tfrecord"]


def test_cli_prepare_pretraining(tmp_path, capsys):
    vocab, _ = bundled_cased_vocab()
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"content": f"Document {i}. It has two sentences."})
                              for i in range(5)) + "\n", encoding="utf-8")
    output = tmp_path / "out"
    code = cli.main(["prepare-pretraining", "--input", str(data), "--output-dir", str(output),
                     "--vocab", vocab, "--max-seq-length", "32", "--num-shards", "2",
                     "--text-field", "content", "--no-progress"])
    assert code == 0
    assert "5 documents, 10 sentences -> 5 segments" in capsys.readouterr().out
    code = cli.main(["prepare-pretraining", "--input", str(data), "--output-dir", str(output),
                     "--vocab", str(tmp_path / "missing_vocab.txt")])
    assert code == 1
    assert "vocabulary file not found" in capsys.readouterr().err


def _write_shard(path, count=20):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(count):
            writer.write(serialize_segment([2] + [7] * i + [3], [0] + [1] * i + [0]))
    return path.read_bytes()


def test_reader_names_a_truncated_or_corrupt_shard(tmp_path):
    good = _write_shard(tmp_path / "train-00000-of-00002.tfrecord")
    assert validate_shards([str(tmp_path / "train-00000-of-00002.tfrecord")]) == {
        str(tmp_path / "train-00000-of-00002.tfrecord"): 20}
    broken = tmp_path / "train-00001-of-00002.tfrecord"
    pattern = str(tmp_path / "train-*.tfrecord")

    broken.write_bytes(good[:len(good) // 2])  # TensorFlow alone reads this silently
    with pytest.raises(ValueError, match=f"{broken}: record .* truncated"):
        read_pretraining_shards(pattern)

    offset = 0
    for _ in range(5):  # Walk to the header of record 5.
        offset += 12 + struct.unpack("<Q", good[offset:offset + 8])[0] + 4
    garbled_header = bytearray(good)
    garbled_header[offset + 1] ^= 0x40
    broken.write_bytes(bytes(garbled_header))
    with pytest.raises(ValueError, match=f"{broken}: record 5 at byte {offset}: corrupt header"):
        read_pretraining_shards(pattern)

    garbled_payload = bytearray(good)
    garbled_payload[30] ^= 0xFF  # inside the first record's payload
    broken.write_bytes(bytes(garbled_payload))
    read_pretraining_shards(pattern)  # framing intact: the header check passes
    with pytest.raises(ValueError, match=f"{broken}: record 0 is corrupt"):
        read_pretraining_shards(pattern, validate="full")

    with pytest.raises(FileNotFoundError, match="no pretraining shard matches"):
        read_pretraining_shards(str(tmp_path / "nothing-*"))


def test_reader_checks_counts_against_the_summary(tmp_path):
    vocab, _ = bundled_cased_vocab()
    text = tmp_path / "t.txt"
    text.write_text("One sentence.\n\nAnother document.\n\nA third one.\n", encoding="utf-8")
    output = tmp_path / "out"
    prepare_pretraining(str(text), str(output), vocab, num_shards=2, progress=False)
    assert len(list(read_pretraining_shards(str(output / "train-*")))) == 3
    _write_shard(output / "train-00000-of-00002.tfrecord", count=1)
    with pytest.raises(ValueError, match="holds 1 records but summary.json lists 2"):
        read_pretraining_shards(str(output / "train-*"))


def test_reader_splits_files_across_input_pipelines(tmp_path):
    for shard in range(4):
        _write_shard(tmp_path / f"train-{shard:05d}-of-00004.tfrecord", count=shard + 1)
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline)
        dataset = read_pretraining_shards(str(tmp_path / "train-*"), input_context=context)
        seen.append(sum(1 for _ in dataset))
    assert seen == [1 + 3, 2 + 4]
    batch = next(iter(read_pretraining_shards(str(tmp_path / "train-*"), shuffle_files=True,
                                              seed=1, num_parallel_reads=2)))
    assert batch["input_ids"].dtype == tf.int32 and batch["word_starts"].dtype == tf.int32
