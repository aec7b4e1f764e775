from __future__ import annotations

from pathlib import Path

import pytest

from mailsift.training.corpus import (
    CorpusError,
    LabelledMessage,
    count_messages,
    open_source,
    read_labelled_folder,
    read_maildir,
    read_mbox,
    read_plain_folder,
    read_trec,
    source_labels,
)
from tests.corpora import SPAMASSASSIN, require


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def summary(messages: list[LabelledMessage]) -> list[tuple[str | None, bytes]]:
    return [(m.label, m.raw) for m in messages]


@pytest.fixture
def trec(tmp_path: Path) -> Path:
    root = tmp_path / "trec"
    write(root / "data/spam-1/001", b"Subject: one\n\nspam body\n")
    write(root / "data/ham-1/002", b"Subject: two\n\nham body\n")
    write(root / "data/spam-1/003", b"Subject: three\n\nmore spam\n")
    write(
        root / "full/index",
        b"SPAM ../data/spam-1/003\n\nham ../data/ham-1/002\nSpam ../data/spam-1/001\n",
    )
    return root


MBOX = (
    b"From alice@example.com Mon Jan  1 00:00:00 2024\n"
    b"Subject: first\n"
    b"\n"
    b">From the start, this line was escaped.\n"
    b">>From twice escaped.\n"
    b"\n"
    b"From bob@example.com Tue Jan  2 00:00:00 2024\n"
    b"Subject: second\n"
    b"\n"
    b"body\n"
    b"\n"
)


# --- TREC -------------------------------------------------------------------------------


def test_trec_keeps_index_order_and_case_insensitive_labels(trec: Path) -> None:
    messages = list(read_trec(trec))
    assert summary(messages) == [
        ("spam", b"Subject: three\n\nmore spam\n"),
        ("ham", b"Subject: two\n\nham body\n"),
        ("spam", b"Subject: one\n\nspam body\n"),
    ]
    assert messages[0].source == str(trec / "data/spam-1/003")


def test_trec_accepts_the_index_file_itself(trec: Path) -> None:
    assert [m.raw for m in read_trec(trec / "full/index")] == [m.raw for m in read_trec(trec)]


def test_trec_bad_line_names_file_and_line(trec: Path) -> None:
    (trec / "full/index").write_bytes(b"spam ../data/spam-1/001\nmaybe ../data/ham-1/002\n")
    with pytest.raises(CorpusError, match=r"full/index:2: expected"):
        list(read_trec(trec))


def test_trec_line_without_path_is_an_error(trec: Path) -> None:
    (trec / "full/index").write_bytes(b"ham\n")
    with pytest.raises(CorpusError, match=r"index:1"):
        list(read_trec(trec))


def test_trec_missing_message_names_index_line(trec: Path) -> None:
    (trec / "full/index").write_bytes(b"ham ../data/ham-1/404\n")
    with pytest.raises(CorpusError, match=r"404 \(listed at .*index:1\)"):
        list(read_trec(trec))


def test_trec_missing_or_wrong_path_fails_on_call(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no such file"):
        read_trec(tmp_path / "absent")
    with pytest.raises(CorpusError, match="not a TREC corpus"):
        read_trec(tmp_path)


# --- mbox -------------------------------------------------------------------------------


def test_mbox_splits_unescapes_and_drops_from_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "box.mbox", MBOX)
    messages = list(read_mbox(path, "spam"))
    assert summary(messages) == [
        (
            "spam",
            b"Subject: first\n\nFrom the start, this line was escaped.\n>From twice escaped.\n",
        ),
        ("spam", b"Subject: second\n\nbody\n"),
    ]
    assert [m.source for m in messages] == [f"{path}#1", f"{path}#2"]


def test_mbox_crlf_and_no_trailing_blank_line(tmp_path: Path) -> None:
    data = b"From a\r\nSubject: x\r\n\r\nbody\r\n\r\nFrom b\r\nSubject: y\r\n"
    path = write(tmp_path / "crlf.mbox", data)
    assert [m.raw for m in read_mbox(path)] == [
        b"Subject: x\r\n\r\nbody\r\n",
        b"Subject: y\r\n",
    ]
    assert {m.label for m in read_mbox(path)} == {None}


def test_mbox_empty_file_has_no_messages(tmp_path: Path) -> None:
    assert list(read_mbox(write(tmp_path / "empty.mbox", b""))) == []


def test_mbox_text_before_first_from_line_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.mbox", b"\nSubject: orphan\n" + MBOX)
    with pytest.raises(CorpusError, match=r"bad\.mbox:2: text before"):
        list(read_mbox(path))


def test_mbox_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no such file"):
        read_mbox(tmp_path / "absent.mbox")


# --- Maildir ----------------------------------------------------------------------------


def test_maildir_reads_cur_and_new_sorted_by_name(tmp_path: Path) -> None:
    box = tmp_path / "Maildir"
    write(box / "new/1700000002.b.host", b"second")
    write(box / "cur/1700000003.c.host:2,S", b"third")
    write(box / "cur/1700000001.a.host:2,S", b"first")
    write(box / "cur/.hidden", b"skipped")
    write(box / "tmp/1700000000.x.host", b"in delivery, skipped")
    messages = list(read_maildir(box, "ham"))
    assert summary(messages) == [("ham", b"first"), ("ham", b"second"), ("ham", b"third")]
    assert messages[1].source == str(box / "new/1700000002.b.host")


def test_maildir_without_cur_or_new_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not a Maildir"):
        read_maildir(tmp_path)


# --- labelled folder --------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    write(root / "spam/b.eml", b"spam b")
    write(root / "spam/a.eml", b"spam a")
    write(root / "ham/z.eml", b"ham z")
    write(root / "ham/sub/y.eml", b"ham sub y")
    write(root / "ham/.DS_Store", b"hidden")
    write(root / "ham/.git/objects", b"hidden dir")
    return root


def test_folder_reads_ham_then_spam_recursively_sorted(folder: Path) -> None:
    assert summary(list(read_labelled_folder(folder))) == [
        ("ham", b"ham sub y"),
        ("ham", b"ham z"),
        ("spam", b"spam a"),
        ("spam", b"spam b"),
    ]


def test_folder_unreadable_file_raises(folder: Path) -> None:
    (folder / "spam/broken.eml").symlink_to(folder / "nowhere")
    with pytest.raises(CorpusError, match=r"cannot read message .*broken\.eml"):
        list(read_labelled_folder(folder))


def test_folder_without_ham_or_spam_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not a labelled folder"):
        read_labelled_folder(tmp_path)


# --- a plain folder of message files --------------------------------------------------------


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    root = tmp_path / "Junk"
    write(root / "10", b"Subject: ten\n\nx\n")
    write(root / "2", b"Subject: two\n\nx\n")
    write(root / "1.eml", b"Subject: one\n\nx\n")
    write(root / ".mh_sequences", b"unseen: 1-10\n")
    write(root / ".git/objects", b"hidden dir")
    write(root / "sub/3", b"Subject: in a subfolder, not read\n\nx\n")
    return root


def test_plain_folder_reads_the_files_directly_inside_in_natural_order(plain: Path) -> None:
    messages = list(open_source(f"spam:{plain}"))
    assert [(m.label, m.source) for m in messages] == [
        ("spam", str(plain / "1.eml")),
        ("spam", str(plain / "2")),
        ("spam", str(plain / "10")),
    ]
    assert count_messages(f"spam:{plain}") == 3
    assert source_labels(f"spam:{plain}") == {"spam"}
    assert [m.label for m in read_plain_folder(plain)] == [None] * 3
    assert source_labels(str(plain)) == frozenset()


def test_plain_folder_reads_an_mbox_inside_as_an_mbox(plain: Path) -> None:
    write(plain / "old.mbox", MBOX)
    messages = list(open_source(f"ham:{plain}"))
    mbox = plain / "old.mbox"
    assert [m.source for m in messages][-2:] == [f"{mbox}#1", f"{mbox}#2"]
    assert len(messages) == 5
    assert count_messages(str(plain)) is None  # an mbox is counted only by reading it


def test_other_layouts_win_over_a_plain_folder(tmp_path: Path, folder: Path) -> None:
    write(folder / "stray.eml", b"beside ham/ and spam/")
    assert [m.label for m in open_source(str(folder))] == ["ham", "ham", "spam", "spam"]
    box = tmp_path / "Maildir"
    write(box / "new/1", b"msg")
    write(box / "dovecot-uidlist", b"3 V1 N2\n")
    assert summary(list(open_source(f"ham:{box}"))) == [("ham", b"msg")]


def test_a_folder_without_message_files_is_unrecognised(tmp_path: Path) -> None:
    write(tmp_path / "only/sub/1", b"x")
    write(tmp_path / "only/.hidden", b"x")
    with pytest.raises(CorpusError, match="unrecognised corpus directory"):
        open_source(f"ham:{tmp_path / 'only'}")
    with pytest.raises(CorpusError, match="no message files"):
        read_plain_folder(tmp_path / "only")


def test_source_labels(trec: Path, folder: Path, tmp_path: Path) -> None:
    assert source_labels(str(trec)) == {"ham", "spam"}
    assert source_labels(f"ham:{trec}") == {"ham", "spam"}  # a TREC index keeps its own
    assert source_labels(str(folder)) == {"ham", "spam"}
    write(tmp_path / "only-spam/spam/1", b"x")
    assert source_labels(str(tmp_path / "only-spam")) == {"spam"}
    assert source_labels(f"spam:{write(tmp_path / 'x.mbox', MBOX)}") == {"spam"}


# --- open_source and count_messages -------------------------------------------------------


def test_open_source_detects_trec_dir_and_index_keeping_own_labels(trec: Path) -> None:
    expected = ["spam", "ham", "spam"]
    assert [m.label for m in open_source(str(trec))] == expected
    assert [m.label for m in open_source(f"ham:{trec / 'full/index'}")] == expected


def test_open_source_detects_folder(folder: Path) -> None:
    assert [m.label for m in open_source(f"spam:{folder}")] == ["ham", "ham", "spam", "spam"]


def test_open_source_detects_maildir_with_prefix_label(tmp_path: Path) -> None:
    write(tmp_path / "box/new/1", b"msg")
    assert summary(list(open_source(f"spam:{tmp_path / 'box'}"))) == [("spam", b"msg")]


def test_open_source_detects_mbox(tmp_path: Path) -> None:
    path = write(tmp_path / "junk", MBOX)
    messages = list(open_source(f"spam:{path}"))
    assert [(m.label, m.source) for m in messages] == [("spam", f"{path}#1"), ("spam", f"{path}#2")]


def test_open_source_single_file_uses_label_argument(tmp_path: Path) -> None:
    path = write(tmp_path / "one.eml", b"Subject: hi\n\nbody\n")
    assert list(open_source(str(path), "ham")) == [
        LabelledMessage("ham", b"Subject: hi\n\nbody\n", str(path))
    ]
    assert [m.label for m in open_source(str(path))] == [None]


def test_open_source_conflicting_labels(tmp_path: Path) -> None:
    path = write(tmp_path / "one.eml", b"x")
    with pytest.raises(CorpusError, match="prefix says 'ham'"):
        open_source(f"ham:{path}", "spam")


def test_open_source_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no such file"):
        open_source(str(tmp_path / "absent"))
    with pytest.raises(CorpusError, match="no such file"):
        open_source(f"spam:{tmp_path / 'absent'}")
    (tmp_path / "other").mkdir()
    with pytest.raises(CorpusError, match="unrecognised corpus directory"):
        open_source(str(tmp_path / "other"))


def test_count_messages(trec: Path, folder: Path, tmp_path: Path) -> None:
    write(tmp_path / "box/cur/1", b"a")
    write(tmp_path / "box/new/2", b"b")
    assert count_messages(str(trec)) == 3
    assert count_messages(f"spam:{trec / 'full/index'}") == 3
    assert count_messages(str(folder)) == 4
    assert count_messages(str(tmp_path / "box")) == 2
    assert count_messages(str(write(tmp_path / "x.mbox", MBOX))) is None
    assert count_messages(str(write(tmp_path / "x.eml", b"x"))) == 1
    with pytest.raises(CorpusError):
        count_messages(str(tmp_path / "absent"))


@pytest.mark.corpus
def test_spamassassin_corpus() -> None:
    require(SPAMASSASSIN)
    labels = [m.label for m in read_trec(SPAMASSASSIN)]
    assert len(labels) == 6046
    assert labels.count("spam") == 1896
    assert count_messages(str(SPAMASSASSIN)) == 6046
