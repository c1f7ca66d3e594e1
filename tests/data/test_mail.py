import pytest

from tiergate.data.items import decode_bytes, make_item
from tiergate.data.mail import html_to_text, looks_like_mail, parse_mail

MULTIPART = (
    "From: Alice <alice@example.com>\nTo: bob@example.org\nSubject: =?utf-8?q?caf=C3=A9_offer?=\n"
    "MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"XX\"\n\n--XX\n"
    "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\naGVsbG8gd29ybGQ=\n--XX\n"
    "Content-Type: text/html\n\n<html><head><style>p{}</style></head><body><p>Click <a href=\"http://x.example/win\">"
    "here</a>&amp; win</p><script>evil()</script></body></html>\n--XX--\n"
)


def test_multipart_fields_are_decoded():
    f = parse_mail(MULTIPART)
    assert f["subject"] == "café offer"
    assert f["from"] == "Alice <alice@example.com>"
    assert f["to"] == "bob@example.org"
    assert "hello world" in f["body"]  # base64 part decoded
    assert "Click" in f["body"] and "& win" in f["body"]  # HTML reduced to text, entities decoded
    assert "http://x.example/win" in f["body"]  # link targets kept as evidence
    assert "evil" not in f["body"] and "p{}" not in f["body"]  # scripts and styles dropped
    assert f["header:mime-version"] == "1.0"


def test_item_fields_and_model_text():
    it = make_item(MULTIPART, meta={"source": "test"})
    assert it.is_mail
    assert it.get("subject") == "café offer"
    assert it.get("header:MIME-Version") == "1.0"  # header names are case-insensitive
    assert it.get("meta:source") == "test"
    assert it.get("header:missing") == ""
    assert it.model_text.startswith("From: Alice") and "hello world" in it.model_text


def test_plain_text_is_not_mail():
    text = "python3-requests\nHTTP library for Python: elegant and simple"
    assert not looks_like_mail(text)
    it = make_item(text)
    assert not it.is_mail and it.get("body") == text and it.model_text == text


def test_mbox_from_line_is_mail():
    assert looks_like_mail("From someone@example.com  Tue Aug  6 11:52:20 2002\nSubject: x\n\nbody")


def test_broken_input_never_raises():
    for bad in ["", "Subject:", "Content-Type: multipart/mixed; boundary=\"\n\n--", "<html><<<>>", "\x00\xff" * 10,
                "Subject: x\nContent-Type: text/plain; charset=no-such-charset\nContent-Transfer-Encoding: base64\n\n!!!"]:
        it = make_item(bad)
        assert isinstance(it.model_text, str)
    assert html_to_text("<p>a<b>b</p") .startswith("a")


def test_size_cap_and_byte_decoding():
    assert len(make_item("x" * 1000, max_chars=100).text) == 100
    assert decode_bytes("é".encode()) == "é"
    assert decode_bytes(b"\xe9t\xe9") == "été"  # not UTF-8: Latin-1, every byte kept


def test_the_string_parser_agrees_with_the_email_package_on_the_corpus(spam_ds):
    """parse_mail reads single-part ASCII text/plain mail with string operations: on every message of the
    corpus it takes, the fields are exactly the email package's, and it takes most of them."""
    from tiergate.data.mail import _parse_simple, parse_mail_email

    taken = 0
    for e in spam_ds.split("test"):
        norm = e.text.replace("\r\n", "\n")
        head, sep, rest = norm.partition("\n\n")
        fast = _parse_simple(head, rest) if sep else None
        if fast is None:
            continue
        taken += 1
        assert fast == parse_mail_email(norm, head), e.text[:300]
    assert taken > 0.5 * len(spam_ds.split("test"))


@pytest.mark.parametrize("text", [
    "Subject: a\n folded\nTo: x\n\nbody",                       # continuation lines
    "From a@b  Mon\nSubject: hi\n\nbody",                      # mbox envelope line
    "Subject: =?utf-8?q?caf=C3=A9?=\n\nbody",                  # an encoded word
    "Subject: x\nContent-Type: text/plain; charset=utf-16\n\nbody",   # a charset ASCII is not plain in
    "Subject: x\nContent-Type: text/html\n\n<p>hi</p>",
    "Subject: x\nContent-Transfer-Encoding: base64\n\naGk=",
    "Subject: x\nnot a header line\n\nbody",
    "Subject: x\rTo: y\n\nbody",
    "Subject: x\n\nbody caf\u00e9",
    "Subject : x\nTo: y\n\nbody",
    "From a@b  Mon\n cont\nSubject: hi\n\nbody",
    "From a@b  Mon\n\nbody",                                  # the envelope line alone
    "Subject: \t \n\tfolded after blanks\nTo: x\n\nbody",       # a blank first line, then a continuation
    "\nSubject: x\n\nbody",                                    # a blank line before the headers
    "Subject: x\nTo:\n\nbody",                                 # an empty value
])
def test_parse_mail_is_the_email_package_on_edge_cases(text):
    from tiergate.data.mail import parse_mail, parse_mail_email

    norm = text.replace("\r\n", "\n")
    assert parse_mail(text) == parse_mail_email(norm, norm.partition("\n\n")[0])
