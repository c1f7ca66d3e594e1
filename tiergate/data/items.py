"""What a tier sees: an :class:`Item`, the input text with named fields parsed out of it.

Mail (RFC 822) is parsed into headers, subject, from, to and the decoded body (HTML reduced to text); any
other text is a plain item whose ``body`` is the text itself. Rules address fields by name
(``subject``, ``header:x-mailer``, ``meta:source``); models read :attr:`Item.model_text`.
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


def make_item(text: str | bytes, meta: Mapping[str, Any] | None = None, *, kind: str = "auto",
              max_chars: int = DEFAULT_MAX_CHARS) -> Item:
    """Parse ``text`` into an :class:`Item`.

    ``kind`` is ``"auto"`` (mail when it looks like an RFC 822 message), ``"mail"`` or ``"plain"``.

    >>> make_item("Subject: hi\\n\\nhello").get("subject")
    'hi'
    """
    if isinstance(text, bytes):
        text = decode_bytes(text)
    if len(text) > max_chars:
        text = text[:max_chars]
    mail = kind == "mail" or (kind == "auto" and looks_like_mail(text))
    if not mail:
        return Item(text=text, fields={"text": text, "body": text}, meta=dict(meta or {}))
    fields = parse_mail(text)
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
