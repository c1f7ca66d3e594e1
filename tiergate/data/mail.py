"""RFC 822 parsing into named fields, tolerant of the malformed mail that real corpora hold."""

from __future__ import annotations

import email
import email.header
import email.policy
import html
from email.message import Message
from html.parser import HTMLParser

import regex

_HEADER_LINE = regex.compile(r"^(From |[A-Za-z0-9][A-Za-z0-9_-]*:)")
_SKIP_TAGS = {"script", "style", "head", "title"}
_BLOCK_TAGS = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "td", "hr"}


_KNOWN_HEADERS = frozenset({"from", "to", "subject", "received", "return-path", "date", "message-id", "delivered-to",
                            "content-type", "mime-version"})


def looks_like_mail(text: str) -> bool:
    """True when the text opens with a header block: an mbox ``From `` line or ``Name: value`` lines
    followed by an empty line, at least two of them, one a well-known mail header."""
    head, sep, _ = text.partition("\n\n")
    if not sep and "\r\n\r\n" in text:
        head = text.split("\r\n\r\n", 1)[0]
    lines = [ln for ln in head.splitlines() if ln and not ln[0].isspace()]
    if len(lines) < 1 or not all(_HEADER_LINE.match(ln) for ln in lines[:3]):
        return False
    return lines[0].startswith("From ") or any(ln.split(":", 1)[0].lower() in _KNOWN_HEADERS
                                               for ln in lines if ":" in ln)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")
        if tag == "a":
            # Link targets are evidence (spam is mostly links); keep them as text.
            for name, value in attrs:
                if name == "href" and value:
                    self.parts.append(f" {value} ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Reduce HTML to its visible text (plus link targets); never raises on broken markup."""
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # html.parser can choke on pathological markup; fall back to tag stripping
        return html.unescape(regex.sub(r"<[^>]*>", " ", markup))
    text = "".join(parser.parts)
    return regex.sub(r"\n\s*\n+", "\n\n", regex.sub(r"[ \t\r\f\v]+", " ", text)).strip()


def _decode_part(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # unknown charset names are common in spam
        return payload.decode("latin-1")


def _header_str(msg: Message, name: str) -> str:
    value = msg.get(name)
    if value is None:
        return ""
    try:
        return str(email.header.make_header(email.header.decode_header(str(value))))
    except Exception:
        return str(value)


# Charsets under which an ASCII body decodes to itself.
_ASCII_CHARSET = regex.compile(r"(?i)(us-)?ascii|utf-?8|iso-?8859-[0-9]+|windows-125[0-9]|cp125[0-9]|latin-?1")


def _header_value(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:
        return value


# One header (its name as the email package reads one: printable ASCII but ':'), then its value from the first character after ": " and blanks, continuation lines
# (a newline then a blank) included; the block is a sequence of them.
_HEADER = regex.compile(r"([\041-\071\073-\176]+):[ \t]*([^\n]*(?:\n[ \t][^\n]*)*)(?:\n|\Z)")
_HEADER_BLOCK = regex.compile(r"(?:[\041-\071\073-\176]+:[^\n]*(?:\n[ \t][^\n]*)*(?:\n|\Z))*")


def _parse_simple(head: str, body: str) -> dict[str, str] | None:
    """The fields of a single-part ``text/plain`` message whose body is ASCII and sent as is (no base64 or
    quoted-printable), read with string operations alone; None for any other message. The result is what the
    email package gives for the same message (tests/data/test_mail.py checks it on the corpora), at about a
    tenth of the cost: most of a rules-decided request's time was the email package's parser."""
    if not body.isascii() or not head.isascii() or "\r" in head or "\r" in body:
        return None  # (a lone CR ends a line for the email package)
    start = 0
    if head.startswith("From "):  # the mbox envelope line: not a header (the email package's unixfrom)
        nl = head.find("\n")
        start = len(head) if nl < 0 else nl + 1
    elif not head:
        return None
    # Every line a "Name: value" header or a continuation of one (else the email package reads it otherwise:
    # an mbox "From " line, or the body's start), checked in one match; then the headers, grouped by name.
    if _HEADER_BLOCK.fullmatch(head, start) is None:
        return None
    grouped: dict[str, list[str]] = {}
    for name, value in _HEADER.findall(head, start):
        grouped.setdefault(name.lower(), []).append(value)
    ctype = grouped.get("content-type")
    if ctype is not None:
        if len(ctype) > 1:
            return None
        main, *params = ctype[0].split(";")
        if main.strip().lower() != "text/plain" or "\n" in ctype[0]:
            return None
        for param in params:
            key, _, val = param.strip().partition("=")
            if key.strip().lower() == "charset" and not _ASCII_CHARSET.fullmatch(val.strip().strip('"').strip()):
                return None
    cte = grouped.get("content-transfer-encoding")
    if cte is not None and (len(cte) > 1 or cte[0].strip().lower() not in ("7bit", "8bit", "binary")):
        return None
    fields: dict[str, str] = {"headers": head}
    for name, vals in grouped.items():
        fields[f"header:{name}"] = "\n".join(vals)
    for name in ("subject", "from", "to"):
        vals = grouped.get(name)
        fields[name] = _header_value(vals[0]) if vals else ""
    fields["body"] = body.strip()
    return fields


# Trace fields: the relays a message passed through, one or more lines each, most of a typical header block
# (a mailing-list message's Received chain alone can be 500+ WordPiece tokens).
TRACE_FIELDS = frozenset({"received", "x-received", "return-path", "delivered-to", "x-original-to", "message-id",
                          "dkim-signature", "domainkey-signature", "authentication-results", "received-spf",
                          "arc-seal", "arc-message-signature", "arc-authentication-results"})


def without_trace_fields(head: str) -> str:
    """A header block without its trace fields (:data:`TRACE_FIELDS`, continuation lines included), every other
    line as it was: what a reader of the message's origin and subject looks at."""
    out: list[str] = []
    keep = True
    for line in head.splitlines():
        if line[:1] not in (" ", "\t"):
            m = _HEADER_LINE.match(line)  # "Name:" (its group keeps the colon) or an mbox "From " line
            keep = not (m and m.group(1)[:-1].lower() in TRACE_FIELDS)
        if keep:
            out.append(line)
    return "\n".join(out)


def parse_mail(text: str) -> dict[str, str]:
    """Parse an RFC 822 message into fields: ``headers``, ``subject``, ``from``, ``to``, ``body`` and
    ``header:<name>`` (lower case; repeated headers joined by newlines). Never raises."""
    # Split the header block ourselves so that `headers` is exactly what was sent.
    norm = text.replace("\r\n", "\n")
    head, sep, rest = norm.partition("\n\n")
    if sep:
        simple = _parse_simple(head, rest)
        if simple is not None:
            return simple
    return parse_mail_email(norm, head)


def parse_mail_email(norm: str, head: str) -> dict[str, str]:
    """:func:`parse_mail` by the email package (any message: MIME parts, encodings, HTML)."""
    try:
        msg = email.message_from_string(norm, policy=email.policy.compat32)
    except Exception:
        return {"headers": head, "subject": "", "from": "", "to": "", "body": norm}
    fields: dict[str, str] = {"headers": head}
    grouped: dict[str, list[str]] = {}
    for name, value in msg.items():  # one pass: get_all per name rescans every header (a third of the parse)
        grouped.setdefault(name.lower(), []).append(str(value))
    for name, values in grouped.items():
        fields[f"header:{name}"] = "\n".join(values)
    fields["subject"] = _header_str(msg, "subject")
    fields["from"] = _header_str(msg, "from")
    fields["to"] = _header_str(msg, "to")
    bodies: list[str] = []
    try:
        parts = list(msg.walk())
    except Exception:
        parts = [msg]
    for part in parts:
        if part.is_multipart():
            continue
        ctype = (part.get_content_type() or "text/plain").lower()
        if not ctype.startswith("text/") and ctype != "message/rfc822":
            # Attachments count as evidence by name and type only.
            name = part.get_filename() or ""
            bodies.append(f"[attachment {ctype} {name}]".strip())
            continue
        try:
            content = _decode_part(part)
        except Exception:
            content = ""
        bodies.append(html_to_text(content) if ctype == "text/html" else content)
    fields["body"] = "\n".join(b for b in bodies if b).strip()
    return fields
