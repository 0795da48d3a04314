"""Corpus reading: formats, the bundled corpus converters, sentence splitting, bad input."""

from __future__ import annotations

import json
import os

import pytest

from corpus_helpers import bundled_files
from pipelines import corpus


def _documents(paths, **kwargs):
    skips = corpus.SkipLog()
    return list(corpus.iter_documents(paths, skips=skips, **kwargs)), skips


def test_bundled_corpus_is_48_articles_and_4_books():
    files = bundled_files()
    assert [corpus.detect_format(f) for f in files] == ["gutenberg"] * 4 + ["wikitext"]
    documents, skips = _documents(files)
    assert skips.counts == {}
    books, articles = documents[:4], documents[4:]
    assert len(articles) == 48  # 50 heading matches, two are formula lines
    assert articles[0].paragraphs[0].startswith("Robert Boulter is an English film")
    constant_k = next(a for a in articles if a.paragraphs[0].startswith("Constant k filters"))
    assert "= 1 henry and capacitance C =" in constant_k.paragraphs
    assert not any(p.startswith("= =") for a in articles for p in a.paragraphs)
    text = "\n".join(p for b in books for p in b.paragraphs)
    for boilerplate in ("*** START OF", "*** END OF", "Project Gutenberg License",
                        "Project Gutenberg EBook", "Produced by", "www.gutenberg.org"):
        assert boilerplate not in text
    assert books[0].paragraphs[0] == "PRIDE AND PREJUDICE"
    assert books[0].paragraphs[-1].endswith("had been the means of uniting them.")
    assert books[2].paragraphs[-1].endswith("only found another orphan.")
    assert "\r" not in text and "\ufeff" not in text


def _gutenberg_file(tmp_path, body: str, bom=True, end=True):
    lines = ["\ufeffThe Project Gutenberg EBook of Test" if bom else "Title", "",
             "*** START OF THIS PROJECT GUTENBERG EBOOK TEST ***", "",
             "Produced by A Volunteer", "", *body.split("\n")]
    if end:
        lines += ["", "End of the Project Gutenberg EBook of Test", "",
                  "*** END OF THIS PROJECT GUTENBERG EBOOK TEST ***", "licence text"]
    path = tmp_path / "book.txt"
    path.write_bytes("\r\n".join(lines).encode("utf-8"))
    return str(path)


def test_gutenberg_converter_strips_header_footer_and_joins_wrapped_lines(tmp_path):
    path = _gutenberg_file(tmp_path, "CHAPTER I.\n\nIt was a dark\nand stormy night.\n\n"
                                     "The end.")
    assert corpus.detect_format(path) == "gutenberg"
    (document,), skips = _documents(path)
    assert document.paragraphs == ["CHAPTER I.", "It was a dark and stormy night.", "The end."]
    assert skips.counts == {}


def test_gutenberg_without_markers(tmp_path):
    path = _gutenberg_file(tmp_path, "Some text.", end=False)
    (document,), skips = _documents(path)
    assert document.paragraphs == ["Some text."]
    assert skips.counts == {"gutenberg_end_marker_missing": 1}
    plain = tmp_path / "plain.txt"
    plain.write_text("no markers here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"plain.txt: no '\*\*\* START OF' line"):
        _documents(str(plain), input_format="gutenberg")


def test_wikitext_articles_and_formula_lines(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text(
        " = First = \n Intro of first .\n = = Section = = \n Body text ends here .\n"
        " The cut @-@ off frequency is ωc \n = 1 rad / s and k = \n 1 Ω . More .\n"
        " = Second = \n Second article .\n", encoding="utf-8")
    assert corpus.detect_format(str(path)) == "wikitext"
    documents, _ = _documents(str(path))
    assert [d.paragraphs for d in documents] == [
        ["Intro of first .", "Body text ends here .", "The cut @-@ off frequency is ωc",
         "= 1 rad / s and k =", "1 Ω . More ."],
        ["Second article ."]]


def test_plain_text_and_converter_round_trip(tmp_path):
    books = bundled_files()[:1]
    documents, _ = _documents(books)
    converted = tmp_path / "converted.txt"
    assert corpus.write_plain_text(documents, converted) == 1
    again, _ = _documents(str(converted), input_format="text")
    assert [d.paragraphs for d in again] == [d.paragraphs for d in documents]
    text = tmp_path / "docs.txt"
    text.write_bytes(b"\xef\xbb\xbfFirst doc line one.\r\nLine two.\r\n\r\n  \r\n"
                     b"Second doc.\r\n\r\n\r\n")
    documents, skips = _documents(str(text))
    assert [d.paragraphs for d in documents] == [["First doc line one.", "Line two."],
                                                 ["Second doc."]]
    assert documents[1].source.endswith("docs.txt:5") and skips.counts == {}


def test_jsonl_with_a_custom_field_and_bad_records(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [json.dumps({"body": "Para one.\n\nPara two."}), "{not json",
            json.dumps({"other": "x"}), json.dumps(["a list"]), json.dumps({"body": "  "}),
            "", json.dumps({"body": "Last."})]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    documents, skips = _documents(str(path), text_field="body")
    assert [d.paragraphs for d in documents] == [["Para one.", "Para two."], ["Last."]]
    assert skips.counts == {"invalid_json": 1, "no_string_field_body": 2, "empty_document": 1}
    assert skips.examples["invalid_json"] == [f"{path}:2"]


def test_bad_lines_are_skipped_counted_and_located(tmp_path, caplog):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"good line\n\xff\xfe\xfd bad utf8\nbinary\x00\x01junk\n"
                     + b"x" * 5000 + b"\nlast good line\n")
    documents, skips = _documents(str(path), max_line_bytes=1000)
    assert [d.paragraphs for d in documents] == [["good line", "last good line"]]
    assert skips.counts == {"invalid_utf8": 1, "binary_data": 1, "line_too_long": 1}
    assert skips.examples == {"invalid_utf8": [f"{path}:2"], "binary_data": [f"{path}:3"],
                              "line_too_long": [f"{path}:4"]}
    assert f"skipped {path}:2: invalid utf8" in caplog.text


def test_empty_files_and_missing_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.txt"
    blank.write_bytes(b"\n \n\r\n")
    documents, skips = _documents([str(empty), str(blank)])
    assert documents == [] and skips.counts == {"empty_file": 2}
    with pytest.raises(FileNotFoundError, match="input file not found: .*missing.txt"):
        _documents(str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        corpus.expand_inputs(str(tmp_path / "*.jsonl"))
    with pytest.raises(ValueError, match="input_format must be one of"):
        _documents(str(empty), input_format="xml")


def test_huge_documents_are_cut_not_dropped(tmp_path):
    path = tmp_path / "one_document.txt"
    path.write_text("".join(f"Sentence number {i}.\n" for i in range(1000)), encoding="utf-8")
    documents, skips = _documents(str(path), max_document_chars=2000)
    assert len(documents) > 5 and all(d.num_chars <= 2000 for d in documents)
    assert sum(len(d.paragraphs) for d in documents) == 1000
    assert skips.counts == {"document_cut": 1}


@pytest.mark.parametrize("text, expected", [
    ("Mr. Darcy arrived. It rained! Was it 3 p.m. already? Yes.",
     ["Mr. Darcy arrived.", "It rained!", "Was it 3 p.m. already?", "Yes."]),
    ("“Come here,” said he. “No!” she cried. Then silence.",
     ["“Come here,” said he.", "“No!” she cried.", "Then silence."]),
    ("The U.S. Army and J. R. R. Tolkien met Dr. Watson in St. Louis. He left.",
     ["The U.S. Army and J. R. R. Tolkien met Dr. Watson in St. Louis.", "He left."]),
    ("Boulter , who starred . The film was released in 2000 . 1999 was earlier .",
     ["Boulter , who starred .", "The film was released in 2000 . 1999 was earlier ."]),
    ("It cost 3.50 dollars. e.g. this one. Fig. 3 shows (see below). (Next) one.",
     ["It cost 3.50 dollars. e.g. this one.", "Fig. 3 shows (see below).", "(Next) one."]),
    ("日本語です。次の文！最後", ["日本語です。", "次の文！", "最後"]),
    ("Trailing space.   ", ["Trailing space."]),
    ("", []),
])
def test_split_sentences(text, expected):
    assert corpus.split_sentences(text) == expected


def test_sentence_split_of_the_bundled_corpus_keeps_every_character():
    documents, _ = _documents(bundled_files())
    paragraphs = [p for d in documents for p in d.paragraphs]
    sentences = [corpus.split_sentences(p) for p in paragraphs]
    assert all("".join(s).replace(" ", "") == p.replace(" ", "")
               for s, p in zip(sentences, paragraphs))
    count = sum(map(len, sentences))
    assert 30000 < count < 45000, count


def test_bundled_files_match_the_hashes_in_sources_md():
    import hashlib
    import re

    sources = (corpus.BUNDLED_CORPUS_DIR.parent / "SOURCES.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (corpus/\S+) \| [\d,]+ \|.*SHA-256 `([0-9a-f]{64})`", sources,
                      re.MULTILINE)
    assert len(rows) == 5
    assert sorted(str(corpus.BUNDLED_CORPUS_DIR.parent / name) for name, _ in rows) == sorted(
        bundled_files())
    for name, digest in rows:
        data = (corpus.BUNDLED_CORPUS_DIR.parent / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name
    assert sum(os.path.getsize(f) for f in bundled_files()) < 5_000_000
