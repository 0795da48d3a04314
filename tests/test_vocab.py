"""build-vocab: layout, cased/uncased, CLI, errors; records the build time."""

from __future__ import annotations

import time

import pytest

from corpus_helpers import CASED_VOCAB_SIZE, bundled_cased_vocab, bundled_files
from pipelines.vocab import build_vocab, reserved_tokens
from spanbert_tf import cli
from spanbert_tf.tokenizer import SpanBertTokenizer, load_vocabulary

pytest.importorskip("tokenizers")


def test_bundled_cased_vocab_layout_and_build_time():
    path, seconds = bundled_cased_vocab()
    tokens = load_vocabulary(path)
    print(f"\ncased vocab of {len(tokens)} tokens built from the bundled corpus in "
          f"{seconds:.1f} s")
    assert len(tokens) == CASED_VOCAB_SIZE
    assert tokens[:105] == reserved_tokens(100)
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {"the", "The", "Holmes", "##s", "Elizabeth"} <= set(tokens)
    assert any(t[0].isupper() for t in tokens[105:])  # cased
    assert seconds < 60
    tokenizer = SpanBertTokenizer(path)
    assert tokenizer.pad_id == 0 and tokenizer.mask_id == 4
    assert tokenizer.token_to_id("[unused0]") == 5


def test_uncased_vocab_has_no_upper_case_or_accents(tmp_path):
    path = tmp_path / "vocab.txt"
    started = time.perf_counter()
    tokens = build_vocab(bundled_files()[-1], str(path), vocab_size=3000, lowercase=True,
                         num_unused=3, progress=False)
    print(f"\nuncased 3,000-token vocab from the WikiText file in "
          f"{time.perf_counter() - started:.1f} s")
    learned = tokens[8:]
    assert tokens[5:8] == ["[unused0]", "[unused1]", "[unused2]"]
    assert len(tokens) == 3000
    assert not [t for t in learned if t != t.lower()]
    assert "é" not in "".join(learned)  # accents stripped
    tokenizer = SpanBertTokenizer(path, lowercase=True)
    assert tokenizer.tokenize("The Battle").numpy().tolist() == tokenizer.tokenize(
        "the battle").numpy().tolist()


def test_small_corpus_gives_fewer_tokens_than_asked(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("a tiny corpus\nwith two lines\n", encoding="utf-8")
    tokens = build_vocab(str(corpus), str(tmp_path / "vocab.txt"), vocab_size=5000,
                         num_unused=0, progress=False)
    assert 5 < len(tokens) < 100 and tokens[:5] == reserved_tokens(0)


def test_cli_builds_a_vocabulary(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Span masking hides whole words.\nThe boundary tokens predict them.\n\n"
                      "A second document follows here.\n", encoding="utf-8")
    output = tmp_path / "out" / "vocab.txt"
    code = cli.main(["build-vocab", "--input", str(corpus), "--output", str(output),
                     "--vocab-size", "200", "--num-unused", "2", "--no-progress"])
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    tokens = output.read_text(encoding="utf-8").splitlines()
    assert tokens[:7] == reserved_tokens(2)


@pytest.mark.parametrize("argv, message", [
    (["--input", "/nonexistent/corpus.txt"], "input file not found: /nonexistent/corpus.txt"),
    (["--input", "/nonexistent/*.txt"], "matches no file"),
])
def test_cli_reports_missing_input(tmp_path, capsys, argv, message):
    code = cli.main(["build-vocab", *argv, "--output", str(tmp_path / "v.txt")])
    assert code == 1
    assert message in capsys.readouterr().err


def test_errors_for_bad_sizes_and_empty_corpus(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text\n", encoding="utf-8")
    with pytest.raises(ValueError, match="must exceed the 15 special"):
        build_vocab(str(corpus), str(tmp_path / "v.txt"), vocab_size=15, num_unused=10)
    with pytest.raises(ValueError, match="num_unused must be >= 0"):
        reserved_tokens(-1)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="no text to learn a vocabulary from"):
        build_vocab(str(empty), str(tmp_path / "v.txt"), vocab_size=1000, progress=False)


def test_training_is_deterministic(tmp_path):
    """The plain Hugging Face trainer gives a different vocabulary on every run
    (huggingface/tokenizers#1794); ours must not."""
    wiki = bundled_files()[-1]
    first = build_vocab(wiki, str(tmp_path / "a.txt"), vocab_size=3000, lowercase=True,
                        progress=False)
    second = build_vocab(wiki, str(tmp_path / "b.txt"), vocab_size=3000, lowercase=True,
                         progress=False)
    assert first == second
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()


def test_vocab_size_below_the_alphabet_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="vocab_size \\(200\\) is too small: .* alphabet"):
        build_vocab(bundled_files()[-1], str(tmp_path / "v.txt"), vocab_size=200,
                    progress=False)
