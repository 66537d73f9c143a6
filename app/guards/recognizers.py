"""What the output filter recognises: the entities, their patterns and their validators.

The patterns are `regex` sources shared by whole-text and streaming redaction, so they
follow three rules that keep a stream's hold-back decision sound (see `app.guards.scanner`):

- A match never ends in `\\b`, `$` or `\\Z` where more text could change it: the `regex`
  module treats those as settled at the end of a buffer. Explicit lookaheads such as
  `(?![0-9])` read past the end, so the stream keeps that tail until the next chunk.
- No lazy quantifier on a character class: in `regex`'s partial matching they report
  wrong spans. Greedy and possessive quantifiers only.
- Every repetition is bounded, except the body of a private key block, so nothing but a
  private key can keep more than about 12 KiB held back. Lookbehinds look at most
  `LOOKBEHIND` characters back.

A pattern with a group named `v` replaces only that group (`password=` stays, its value
goes); otherwise the whole match is replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import regex

LOOKBEHIND = 2
"""The longest lookbehind of any pattern, in characters."""


class Entity(StrEnum):
    """A kind of sensitive value; its marker in redacted text is `[<name>_REDACTED]`."""

    EMAIL = "EMAIL"
    PHONE = "PHONE"
    US_SSN = "US_SSN"
    CREDIT_CARD = "CREDIT_CARD"
    IBAN = "IBAN"
    API_KEY = "API_KEY"
    BEARER_TOKEN = "BEARER_TOKEN"
    PRIVATE_KEY = "PRIVATE_KEY"


Span = tuple[int, int]
Validator = Callable[[str], Span | None]


@dataclass(frozen=True, kw_only=True)
class Recognizer:
    """One pattern for one entity."""

    entity: Entity
    pattern: str
    """`regex` source; a group `v`, if any, is the part replaced."""
    validate: Validator | None = None
    """Given the part to replace, the span of it to replace, or None to keep it all."""


def luhn_valid(digits: str) -> bool:
    """Whether a string of ASCII digits passes the Luhn checksum of card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Lengths from the SWIFT IBAN registry; a country missing here is not recognised.
IBAN_LENGTHS: dict[str, int] = {
    **dict.fromkeys(["NO"], 15),
    **dict.fromkeys(["BE"], 16),
    **dict.fromkeys(["DK", "FI", "FO", "GL", "NL"], 18),
    **dict.fromkeys(["MK", "SI"], 19),
    **dict.fromkeys(["AT", "BA", "EE", "KZ", "LT", "LU", "XK"], 20),
    **dict.fromkeys(["CH", "CR", "HR", "LI", "LV"], 21),
    **dict.fromkeys(["BG", "BH", "DE", "GB", "GE", "IE", "ME", "RS", "VA"], 22),
    **dict.fromkeys(["AE", "GI", "IL", "IQ", "TL"], 23),
    **dict.fromkeys(["AD", "CZ", "ES", "MD", "PK", "RO", "SA", "SE", "SK", "TN", "VG"], 24),
    **dict.fromkeys(["PT", "ST"], 25),
    **dict.fromkeys(["IS", "TR"], 26),
    **dict.fromkeys(["FR", "GR", "IT", "MC", "MR", "SM"], 27),
    **dict.fromkeys(["AL", "AZ", "BY", "CY", "DO", "GT", "HU", "LB", "PL", "SV"], 28),
    **dict.fromkeys(["BR", "EG", "PS", "QA", "UA"], 29),
    **dict.fromkeys(["JO", "KW", "MU"], 30),
    **dict.fromkeys(["MT", "SC"], 31),
    **dict.fromkeys(["LC"], 32),
}


def iban_valid(compact: str) -> bool:
    """Whether an IBAN without spaces has its country's length and passes ISO 7064 mod 97."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    if not (compact.isascii() and compact.isalnum()):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _card_span(value: str) -> Span | None:
    # A run of digit groups can hold a card plus a neighbouring number ("4111 … 1111 20"):
    # try runs of whole groups, longest first, so the card is still found.
    groups = [m.span() for m in regex.finditer(r"[0-9]+", value)]
    windows = [(i, j) for i in range(len(groups)) for j in range(i, len(groups))]
    windows.sort(key=lambda w: (groups[w[0]][0] - groups[w[1]][1], w[0]))
    for i, j in windows:
        span = (groups[i][0], groups[j][1])
        digits = "".join(ch for ch in value[span[0] : span[1]] if ch.isdigit())
        if 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits):
            return span
    return None


def _iban_span(value: str) -> Span | None:
    length = IBAN_LENGTHS.get(value[:2])
    if length is None:
        return None
    seen = 0
    for end, ch in enumerate(value, start=1):
        seen += ch != " "
        if seen == length:
            return (0, end) if iban_valid(value[:end].replace(" ", "")) else None
    return None


def _phone_span(value: str) -> Span | None:
    digits = sum(ch.isdigit() for ch in value)
    looks_decimal = regex.fullmatch(r"\+[0-9]+\.[0-9]+", value) is not None
    return (0, len(value)) if 8 <= digits <= 15 and not looks_decimal else None


def _token_span(value: str) -> Span | None:
    # "the bearer instrument" is prose; real tokens carry digits or punctuation, or are long.
    tokenish = len(value) >= 20 or any(ch.isdigit() or ch in "._~+/-=" for ch in value)
    return (0, len(value)) if tokenish else None


_PK_LABEL = r"(?:[A-Z0-9]{1,16} ){0,4}PRIVATE KEY(?: BLOCK)?-----"
PRIVATE_KEY_BEGIN = r"-----BEGIN " + _PK_LABEL
"""The line that opens a private key block."""
PRIVATE_KEY_END = r"-----END " + _PK_LABEL
"""The line that closes a private key block."""
PRIVATE_KEY_END_MAX = 128
"""An upper bound on the length of a `PRIVATE_KEY_END` match."""

_SECRET_WORD = (
    r"(?i:(?:api[_-]?key|secret|passw(?:or)?d|passphrase|pwd|credentials?"
    r"|(?:access|auth|refresh|session|api|id|private)[_-]?(?:token|key))"
    r"(?:[_-][A-Za-z0-9_-]{0,40})?)"
)
SECRET_NAME = r"(?:[A-Za-z0-9_.-]{0,40}[_.-])?" + _SECRET_WORD
"""A name whose value is a secret: `password`, `OPENAI_API_KEY`, `client_secret`…"""

_TOKEN = r"[A-Za-z0-9._~+/-]"
_SSN_BODY = r"[0-9]{3}(?:-(?!00)[0-9]{2}-(?!0000)| (?!00)[0-9]{2} (?!0000))[0-9]{4}"

RECOGNIZERS: tuple[Recognizer, ...] = (
    Recognizer(
        entity=Entity.PRIVATE_KEY,
        pattern=(
            PRIVATE_KEY_BEGIN
            # The body stops at the first END line; with none, the block runs to the end.
            + r"(?:[^-]++|-(?!"
            + PRIVATE_KEY_END[1:]
            + r"))*+(?:"
            + PRIVATE_KEY_END
            + r"|\Z)"
        ),
    ),
    Recognizer(
        entity=Entity.BEARER_TOKEN,
        pattern=(
            r"(?<![A-Za-z0-9_-])(?i:authorization)[\"']?[ \t]{0,4}[:=][ \t\"']{0,4}"
            r"(?i:bearer|basic|token)[ \t]{1,4}(?P<v>" + _TOKEN + r"{1,8192}={0,2})"
        ),
    ),
    Recognizer(
        entity=Entity.BEARER_TOKEN,
        pattern=r"(?<![A-Za-z0-9_-])(?i:bearer)[ \t]{1,4}(?P<v>" + _TOKEN + r"{8,4096}={0,2})",
        validate=_token_span,
    ),
    Recognizer(
        entity=Entity.BEARER_TOKEN,
        pattern=(
            r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,2048}\.eyJ[A-Za-z0-9_-]{4,8192}"
            r"\.[A-Za-z0-9_-]{0,2048}"
        ),
    ),
    *(
        Recognizer(entity=Entity.API_KEY, pattern=r"(?<![A-Za-z0-9_-])" + key)
        for key in (
            r"sk-[A-Za-z0-9][A-Za-z0-9_-]{19,4096}",  # OpenAI, Anthropic (sk-ant-)
            r"[sr]k_(?:live|test)_[A-Za-z0-9]{10,4096}",  # Stripe
            r"A[KS]IA[0-9A-Z]{16}",  # AWS access key id
            r"gh[pousr]_[A-Za-z0-9]{30,255}",  # GitHub
            r"github_pat_[A-Za-z0-9_]{20,255}",
            r"xox[abprs]-[A-Za-z0-9-]{10,4096}",  # Slack
            r"AIza[0-9A-Za-z_-]{35}",  # Google
            r"whsec_[A-Za-z0-9+/]{16,4096}={0,2}",  # Standard Webhooks, ours included
        )
    ),
    # One per separator: with a literal `:` or `=`, `regex` skips text that has none.
    *(
        Recognizer(
            entity=Entity.API_KEY,
            pattern=(
                r"(?<![A-Za-z0-9])"
                + _SECRET_WORD
                + r"[\"'*]{0,2}[ \t]{0,4}"
                + sep
                + r"[ \t\"'*]{0,6}(?P<v>[^\s\"'`,;&<>\[\](){}]{1,4096})"
            ),
        )
        for sep in (":", "=")
    ),
    Recognizer(
        entity=Entity.EMAIL,
        pattern=(r"(?<![\w.%+-])[\w.%+-]{1,64}@(?:[\w-]{1,63}\.){1,8}[^\W\d_]{2,24}(?![\w-])"),
    ),
    Recognizer(
        entity=Entity.US_SSN,
        pattern=r"(?<![A-Za-z0-9.-])(?!000|666|9)" + _SSN_BODY + r"(?![0-9]|[.-][0-9])",
    ),
    Recognizer(
        entity=Entity.CREDIT_CARD,
        pattern=r"(?<![0-9.,]|[0-9][ -])[2-6](?:[ -]?[0-9]){12,40}(?![0-9]|[.,][0-9])",
        validate=_card_span,
    ),
    Recognizer(
        entity=Entity.IBAN,
        pattern=(
            r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,8}(?: ?[A-Z0-9]{1,3})?"
            r"(?![A-Za-z0-9])"
        ),
        validate=_iban_span,
    ),
    Recognizer(
        entity=Entity.PHONE,
        pattern=(
            r"(?<![A-Za-z0-9_+])\+[1-9][0-9]{0,2}+"
            r"(?:[ .-]?(?:\([0-9]{1,4}+\)|[0-9]{1,4}+)){2,6}+(?![0-9]|[.,][0-9])"
        ),
        validate=_phone_span,
    ),
    # North American, one per separator for the same reason. The leading lookahead only
    # names the possible first characters: `regex` then skips text 6 times faster.
    *(
        Recognizer(
            entity=Entity.PHONE,
            pattern=(
                r"(?=[+(1-9])(?<![A-Za-z0-9_+.-])(?:\+?1[ .-]?)?" + body + r"(?![0-9]|[.-][0-9])"
            ),
        )
        for body in (
            r"\([2-9][0-9]{2}\) ?[0-9]{3}[ .-][0-9]{4}",
            r"[2-9][0-9]{2}-[0-9]{3}-[0-9]{4}",
            r"[2-9][0-9]{2}\.[0-9]{3}\.[0-9]{4}",
            r"[2-9][0-9]{2} [0-9]{3} [0-9]{4}",
        )
    ),
)
"""Every recognizer; on equal spans the earlier one names the entity."""
