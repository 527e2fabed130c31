"""`flask import` over real directories: files that are not mail are skipped, not failed, and
a message is recognised as the same whether it comes from an mbox, from a file that still
carries its mbox `From ` line, or through POST /import."""

from __future__ import annotations

import mailbox
import shutil
from pathlib import Path

import pytest

from improvmx_archive.mailio import MBOX_SEPARATOR, mbox_count
from tests.conftest import API_KEY

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "cpython"
# The two messages of CPython's email test corpus that start with an mbox `From ` line.
ENVELOPED = ("msg_25.txt", "msg_43.txt")

MESSAGE = (b"From: Ann <ann@example.org>\nTo: inbox@archive.test\nSubject: Quarterly figures\n"
           b"Date: Mon, 02 Mar 2020 09:00:00 +0000\nMessage-ID: <q1@example.org>\n\n"
           b"Figures attached.\n\nFrom here on, the notes.\nFrom the desk of Ann\n")


def _import(app, *paths):
    return app.test_cli_runner().invoke(args=["import", *map(str, paths)])


def _count(app) -> int:
    return app.extensions["archive"].emails.count_documents({})


def test_a_readme_beside_the_mail_is_skipped_not_failed(app, tmp_path):
    folder = tmp_path / "mail"
    folder.mkdir()
    (folder / "README.md").write_text("# Old mail\n\nExported from the old host in 2019.\n")
    (folder / "notes.txt").write_bytes(b"")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    shutil.copy(CORPUS / "msg_01.txt", folder / "one.eml")
    shutil.copy(CORPUS / "msg_02.txt", folder / "two.eml")
    result = _import(app, folder)
    assert result.exit_code == 0, result.output
    assert "stored 2, duplicate 0, failed 0, skipped 3 file(s) that are not mail" in result.output
    assert f"skipped {folder / 'README.md'}: not an RFC 5322 message" in result.output
    assert _count(app) == 2


def test_the_whole_cpython_corpus_directory_imports_without_a_failure(app):
    result = _import(app, CORPUS)
    assert result.exit_code == 0, result.output
    assert "failed 0" in result.output and f"skipped {CORPUS / 'README.md'}" in result.output


def test_an_eml_that_is_not_mail_is_still_a_failure(app, tmp_path):
    (tmp_path / "broken.eml").write_text("this was meant to be a message\n")
    result = _import(app, tmp_path / "broken.eml")
    assert result.exit_code == 1 and "failed 1" in result.output and "skipped" not in result.output


@pytest.mark.parametrize("first", ["mbox", "files"])
def test_enveloped_messages_from_an_mbox_and_as_files_are_stored_once(app, tmp_path, first):
    box = mailbox.mbox(tmp_path / "corpus.mbox")
    for name in ENVELOPED:
        box.add((CORPUS / name).read_bytes())
    box.flush()
    box.close()
    files = [CORPUS / name for name in ENVELOPED]
    order = [[tmp_path / "corpus.mbox"], files] if first == "mbox" else [files, [tmp_path / "corpus.mbox"]]
    assert _import(app, *order[0]).exit_code == 0
    again = _import(app, *order[1])
    assert again.exit_code == 0 and "stored 0, duplicate 2, failed 0" in again.output, again.output
    assert _count(app) == 2


def test_a_file_with_an_envelope_line_keeps_its_unquoted_from_lines(app, tmp_path):
    """A raw message saved with its `From ` line is one message, not split at body lines that
    start with "From"; the same message out of an mbox (quoted there) is the same message."""
    saved = tmp_path / "saved.eml"
    saved.write_bytes(b"From ann@example.org Mon Mar  2 09:00:00 2020\n" + MESSAGE)
    result = _import(app, saved)
    assert result.exit_code == 0 and "stored 1, duplicate 0, failed 0" in result.output, result.output
    stored = app.extensions["archive"].emails.find_one({})
    assert stored["text"].rstrip().endswith("From here on, the notes.\nFrom the desk of Ann")

    box = mailbox.mbox(tmp_path / "box.mbox")  # writes the body's From lines as >From
    box.add(mailbox.mboxMessage(MESSAGE))
    box.flush()
    box.close()
    assert b"\n>From here on" in (tmp_path / "box.mbox").read_bytes()
    again = _import(app, tmp_path / "box.mbox")
    assert "stored 0, duplicate 1, failed 0" in again.output, again.output


def test_post_import_of_an_enveloped_file_matches_the_mbox_import(app, client, tmp_path):
    box = mailbox.mbox(tmp_path / "one.mbox")
    box.add((CORPUS / "msg_25.txt").read_bytes())
    box.add((CORPUS / "msg_43.txt").read_bytes())
    box.flush()
    box.close()
    assert "stored 2" in _import(app, tmp_path / "one.mbox").output
    response = client.post("/import", data=(CORPUS / "msg_25.txt").read_bytes(),
                           headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "message/rfc822"})
    assert response.status_code == 200 and response.get_json()["duplicate"] is True


@pytest.mark.parametrize("line", [
    b"From MAILER-DAEMON Fri Apr 06 16:46:09 2001\n",
    b"From SRS0=aO/p=ON=bag.python.org=None@bounce2.pobox.com  Fri Nov 26 21:40:36 2004\n",
    b"From - Fri Mar 01 08:00:00 2019\r\n",
    b"From sender0@example.org Fri Mar  1 08:00:00 2019\n",
    b"From ann@example.org Fri Mar  1 08:00:00 PST 2019\n",
    b"From ann@example.org Fri Mar  1 08:00:00 2019 +0100\n",
    b"From ann@example.org Mar  1 08:00 2019\n",
])
def test_separator_lines_of_common_writers(line):
    assert MBOX_SEPARATOR.match(line)


@pytest.mark.parametrize("line", [b"From here on, the notes.\n", b"From the desk of Ann 2019\n", b"From: ann@x\n"])
def test_body_lines_are_not_separators(line):
    assert not MBOX_SEPARATOR.match(line)


def test_an_mbox_of_another_writer_splits_after_empty_lines(tmp_path):
    """A first line that is no asctime separator: any `From ` line after an empty line splits."""
    odd = tmp_path / "odd.mbox"
    odd.write_bytes(b"From ann@example.org someday\nSubject: a\n\nA\n\nFrom bob@example.org another day\n"
                    b"Subject: b\n\nB\nFrom the desk\n")
    assert mbox_count(odd) == 2
