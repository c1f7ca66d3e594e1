"""What a tier sees: an :class:`Item`, the input text with named fields parsed out of it.

Mail (RFC 822) is parsed into headers, subject, from, to and the decoded body (HTML reduced to text); any
other text is a plain item whose ``body`` is the text itself. Rules address fields by name
(``subject``, ``header:x-mailer``, ``meta:source``); models read :attr:`Item.model_text`.

Every string an Item holds is valid Unicode (no lone surrogates, see :func:`clean_text`), so every tier may
hand it to code that needs UTF-8 (``tokenizers``, onnxruntime string tensors).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import regex

from tiergate.data.mail import looks_like_mail, parse_mail

# Inputs larger than this are cut before parsing: a classifier gains nothing from the 10th megabyte, and a
# hostile request must not make every tier scan it.
DEFAULT_MAX_CHARS = 200_000


@dataclass(frozen=True, slots=True)
class Item:
    """One input to classify.

    ``fields`` always holds ``text`` (the input as received, capped) and ``body``; mail adds ``subject``,
    ``from``, ``to``, ``headers`` (the raw header block) and ``header:<lower-case name>`` for every header.
    """

    text: str
    fields: Mapping[str, str]
    meta: Mapping[str, Any] = field(default_factory=dict)
    is_mail: bool = False

    def get(self, name: str) -> str:
        """The named field (``text``, ``subject``, ``header:received``, ``meta:key``, ...); '' if absent."""
        if name.startswith("meta:"):
            value = self.meta.get(name[5:], "")
            return "" if value is None else str(value)
        return self.fields.get(name.lower() if name.startswith("header:") else name, "")

    @property
    def model_text(self) -> str:
        """The text models read: for mail the header block then the decoded body; else the text."""
        if self.is_mail:
            return self.fields.get("headers", "") + "\n\n" + self.fields.get("body", "")
        return self.text


_WS = regex.compile(r"[ \t]+")
_SURROGATE = regex.compile(r"[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD; a high + low surrogate pair becomes the one character
    it encodes. Text without surrogates is returned as is (the same object).

    Why: a JSON string may hold ``"\\ud800"`` (JSON escapes UTF-16 units, and ``json.loads`` keeps an unpaired
    one as a surrogate code point), and so may a mail part whose charset is UTF-7 or ``unicode_escape``. Such a
    ``str`` cannot be encoded as UTF-8: ``tokenizers`` raises ``TypeError`` (the large tier's MiniLM) and
    onnxruntime ``UnicodeEncodeError`` (ONNX models that take text). Cleaning once, where an Item is made,
    serves rules, ONNX and torch tiers alike.

    >>> clean_text("a\\ud800b"), clean_text("\\ud83d\\ude00") == "\\U0001f600"
    ('a\ufffdb', True)
    """
    if text.isascii() or _SURROGATE.search(text) is None:  # isascii reads a flag CPython keeps: O(1)
        return text
    # UTF-16 is the one codec where a surrogate pair is a character and a lone surrogate is an error:
    # surrogatepass writes every code point as its 16-bit unit, and decoding joins pairs and replaces the rest.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def make_item(text: str | bytes, meta: Mapping[str, Any] | None = None, *, kind: str = "auto",
              max_chars: int = DEFAULT_MAX_CHARS) -> Item:
    """Parse ``text`` into an :class:`Item`.

    ``kind`` is ``"auto"`` (mail when it looks like an RFC 822 message), ``"mail"`` or ``"plain"``. Any ``str``
    is accepted (empty, NUL, control characters, lone surrogates): the text and every parsed field are passed
    through :func:`clean_text`, so the Item holds valid Unicode only.

    >>> make_item("Subject: hi\\n\\nhello").get("subject")
    'hi'
    """
    if isinstance(text, bytes):
        text = decode_bytes(text)
    if len(text) > max_chars:
        text = text[:max_chars]
    text = clean_text(text)  # after the cut, so a hostile 100 MB string is not scanned whole
    mail = kind == "mail" or (kind == "auto" and looks_like_mail(text))
    if not mail:
        return Item(text=text, fields={"text": text, "body": text}, meta=dict(meta or {}))
    # Decoding can make surrogates that the text did not hold (a UTF-7 part: "+2AA-" decodes to "\ud800").
    fields = parse_mail(text)
    if text.isascii():  # names and raw values are the text's; only a decoded value can hold what it did not
        for k, v in fields.items():
            if not v.isascii():
                fields[k] = clean_text(v)
    else:
        fields = {clean_text(k): clean_text(v) for k, v in fields.items()}
    fields["text"] = text
    return Item(text=text, fields=fields, meta=dict(meta or {}), is_mail=True)


def make_items(texts: Iterable[str], kind: str = "auto", max_chars: int = DEFAULT_MAX_CHARS) -> list[Item]:
    return [make_item(t, kind=kind, max_chars=max_chars) for t in texts]


def decode_bytes(raw: bytes) -> str:
    """UTF-8 when the bytes are valid UTF-8, else Latin-1 (which maps every byte, so nothing is lost)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
