"""The output filter: what it finds, what it leaves, and streams that never leak."""

from __future__ import annotations

import random

import pytest

from app.guards.recognizers import iban_valid, luhn_valid
from app.guards.redact import (
    ALL_ENTITIES,
    HOLD_LIMIT,
    NO_REDACTION,
    Entity,
    Redactor,
    parse_entities,
)

REDACTOR = Redactor()

# (entity, value, text around it: "{}" is where the value goes)
FOUND: list[tuple[Entity, str, str]] = [
    (Entity.EMAIL, "jane.doe@example.com", "Write to {} today."),
    (Entity.EMAIL, "j.doe+tag@mail.example.co.uk", "cc: <{}>"),
    (Entity.EMAIL, "jürgen_müller@beispiel.de", "an {}"),
    (Entity.PHONE, "(555) 123-4567", "Call {} now."),
    (Entity.PHONE, "555-123-4567", "Call {}."),
    (Entity.PHONE, "555.123.4567", "fax {}"),
    (Entity.PHONE, "+1 555 123 4567", "US: {}"),
    (Entity.PHONE, "+44 20 7946 0958", "London office {}, ask for Sam."),
    (Entity.PHONE, "+442079460958", "tel:{}"),
    (Entity.US_SSN, "123-45-6789", "SSN {}."),
    (Entity.US_SSN, "123 45 6789", "ssn: {}"),
    (Entity.CREDIT_CARD, "4111 1111 1111 1111", "Card {}, exp 12/29."),
    (Entity.CREDIT_CARD, "4111-1111-1111-1111", "card={}"),
    (Entity.CREDIT_CARD, "4242424242424242", "Pay with {}."),
    (Entity.CREDIT_CARD, "3782 822463 10005", "Amex {}"),
    (Entity.CREDIT_CARD, "5555 5555 5555 4444", "MC {} 2024"),
    (Entity.IBAN, "DE89 3704 0044 0532 0130 00", "IBAN: {}."),
    (Entity.IBAN, "DE89370400440532013000", "to {}"),
    (Entity.IBAN, "GB82 WEST 1234 5698 7654 32", "UK {} ok"),
    (Entity.IBAN, "FR14 2004 1010 0505 0001 3M02 606", "FR {}"),
    (Entity.API_KEY, "sk-proj-" + "a1B2c3D4e5" * 4, "OpenAI key {}"),
    (Entity.API_KEY, "sk-ant-api03-" + "Xy9_" * 10, "anthropic: {}"),
    (Entity.API_KEY, "AKIAIOSFODNN7EXAMPLE", "aws {} ."),
    (Entity.API_KEY, "ghp_" + "aB3" * 12, "token {}"),
    (Entity.API_KEY, "github_pat_" + "11AB" * 8, "{}"),
    (Entity.API_KEY, "xoxb-123456789012-abcdefghij", "slack {}"),
    (Entity.API_KEY, "AIza" + "SyD-9" * 7, "google {}"),
    (Entity.API_KEY, "sk_live_" + "51Hx" * 6, "stripe {}"),
    (Entity.API_KEY, "rk_test_" + "51Hx" * 6, "stripe {}"),
    (Entity.API_KEY, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "webhook secret {}"),
    (Entity.API_KEY, "hunter2", "password={}"),
    (Entity.API_KEY, "wJalrXUtnFEMI/K7MDENG", "AWS_SECRET_ACCESS_KEY={}"),
    (Entity.API_KEY, "abc123", 'config = {{"api_key": "{}"}}'),
    (Entity.API_KEY, "s3cr3t", "client_secret: {}"),
    (Entity.BEARER_TOKEN, "abc.def-123", "Authorization: Bearer {}"),
    (Entity.BEARER_TOKEN, "dXNlcjpwYXNz", "Authorization: Basic {}"),
    (Entity.BEARER_TOKEN, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl", "jwt {} end"),
    (
        Entity.PRIVATE_KEY,
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nx+y/z==\n-----END RSA PRIVATE KEY-----",
        "key:\n{}\ndone",
    ),
    (
        Entity.PRIVATE_KEY,
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF\n-----END PGP PRIVATE KEY BLOCK-----",
        "{}",
    ),
]

UNCHANGED = [
    "17*23 = 391",
    "What is 17*23? It is 391.",
    "It is 2026-11-27T21:13:06+00:00 now.",
    "2026-11-27 21:13:06",
    "Python 3.11.7, regex 2026.11.19, v1.2.3",
    "The total is $1,234,567.89 or 1234567.89 EUR.",
    "In 2024 and 2025, 42 of 100 runs passed.",
    "Call 911 or 112.",
    "order 12345678",
    "1764278000000 ms since the epoch",
    "ISBN 978-3-16-148410-0",
    "123e4567-e89b-12d3-a456-426614174000",
    "123456789 * 987654321 = 121932631112635269",
    "+5 points, 12:30-13:45, +00:00",
    "pi is +3.14159265",
    "IP 192.168.100.200",
    "max_tokens=100 temperature=0.7",
    "the bearer instrument",
    "user@localhost and @username",
    "-----\nA horizontal rule\n-----",
    "4111 1111 1111 1112",  # fails Luhn
    "DE89 3704 0044 0532 0130 01",  # wrong IBAN checksum
    "XX89 3704 0044 0532 0130 00",  # no such country
    "000-12-3456 666-12-3456 923-45-6789 123-00-4567 123-45-0000",  # invalid SSNs
    "sk-short",
    "AKIA1234",
    "[EMAIL_REDACTED] and password=[API_KEY_REDACTED]",  # markers stay as they are
]


@pytest.mark.parametrize(("entity", "value", "around"), FOUND)
def test_each_entity_is_replaced_by_its_marker(entity: Entity, value: str, around: str) -> None:
    assert REDACTOR.redact(around.format(value)) == around.format(f"[{entity}_REDACTED]")


@pytest.mark.parametrize("text", UNCHANGED)
def test_lookalikes_pass_unchanged(text: str) -> None:
    assert REDACTOR.redact(text) == text


def test_validators() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000")
    assert not iban_valid("DE89370400440532013001")
    assert not iban_valid("DE8937040044053201300")  # one character short


def test_prefix_of_a_credential_stays() -> None:
    text = "Authorization: Bearer abc.def-123\npassword: hunter2"
    assert REDACTOR.redact(text) == (
        "Authorization: Bearer [BEARER_TOKEN_REDACTED]\npassword: [API_KEY_REDACTED]"
    )


def test_card_next_to_other_digits_is_still_found() -> None:
    assert REDACTOR.redact("4111 1111 1111 1111 2024") == "[CREDIT_CARD_REDACTED] 2024"


def test_unterminated_private_key_is_redacted_to_the_end() -> None:
    text = "here:\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\nkqhkiG9w0BAQEFAASC"
    assert REDACTOR.redact(text) == "here:\n[PRIVATE_KEY_REDACTED]"


def test_redaction_is_idempotent() -> None:
    text = " ".join(around.format(value) for _, value, around in FOUND)
    once = REDACTOR.redact(text)
    assert REDACTOR.redact(once) == once


def test_only_configured_entities_are_redacted() -> None:
    text = "Mail jane@example.com or call (555) 123-4567 with card 4111 1111 1111 1111."
    only_email = Redactor(entities=frozenset({Entity.EMAIL}))
    assert only_email.redact(text) == (
        "Mail [EMAIL_REDACTED] or call (555) 123-4567 with card 4111 1111 1111 1111."
    )
    cards_and_phones = Redactor(entities=frozenset({Entity.PHONE, Entity.CREDIT_CARD}))
    assert cards_and_phones.redact(text) == (
        "Mail jane@example.com or call [PHONE_REDACTED] with card [CREDIT_CARD_REDACTED]."
    )


def test_no_redaction_is_the_identity() -> None:
    text = "Mail jane@example.com, key sk-proj-" + "a" * 30
    assert NO_REDACTION.redact(text) == text
    stream = NO_REDACTION.stream()
    assert stream.feed(text[:7]) == text[:7]
    assert stream.feed(text[7:]) == text[7:]
    assert stream.flush() == ""
    assert NO_REDACTION.redact_json({"a": [text]}) == {"a": [text]}


def test_redact_json_copies_and_redacts_string_values() -> None:
    value: dict[str, object] = {
        "jane@example.com": "mail jane@example.com",
        "items": ["call 555-123-4567", 4111111111111111, 2.5, True, None],
        "pair": ("SSN 123-45-6789", 7),
        "nested": {"password": "hunter2", "max_tokens": "100", "password_hint": ""},
    }
    redacted = REDACTOR.redact_json(value)
    assert redacted == {
        "jane@example.com": "mail [EMAIL_REDACTED]",
        "items": ["call [PHONE_REDACTED]", 4111111111111111, 2.5, True, None],
        "pair": ("SSN [US_SSN_REDACTED]", 7),
        "nested": {"password": "[API_KEY_REDACTED]", "max_tokens": "100", "password_hint": ""},
    }
    assert value["items"] == ["call 555-123-4567", 4111111111111111, 2.5, True, None]
    assert REDACTOR.redact_json("x@example.com") == "[EMAIL_REDACTED]"
    assert REDACTOR.redact_json(3) == 3


def test_parse_entities() -> None:
    assert parse_entities(["email", " Phone ", "CREDIT_CARD", ""]) == {
        Entity.EMAIL,
        Entity.PHONE,
        Entity.CREDIT_CARD,
    }
    assert parse_entities([]) == frozenset()
    assert parse_entities(e.lower() for e in Entity) == ALL_ENTITIES
    with pytest.raises(ValueError, match="'PASSPORT'"):
        parse_entities(["EMAIL", "PASSPORT"])


# Streaming: for any chunking, the pieces join to redact(text) and never show a value.

STREAM_TEXTS = [
    around.format(value)
    for _, value, around in FOUND
    if len(around.format(value)) < 120  # long ones are covered by random chunkings below
] + [
    "Hi! Reach me at jane.doe@example.com or (555) 123-4567; SSN 123-45-6789.\n"
    "Card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, 17*23 = 391.",
    "Use password=hunter2 and Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIx.c2ln "
    "at 2026-11-27T21:13:06+00:00 with sk-ant-api03-" + "Q" * 30 + " ok",
]


def _values_in(text: str) -> list[str]:
    return [value for _, value, around in FOUND if value in text and len(value) >= 6]


def _run(redactor: Redactor, chunks: list[str]) -> tuple[list[str], str]:
    stream = redactor.stream()
    pieces = [stream.feed(chunk) for chunk in chunks]
    pieces.append(stream.flush())
    return pieces, "".join(pieces)


def _check(text: str, chunks: list[str], redactor: Redactor = REDACTOR) -> str:
    # Equal joins mean every piece was a prefix of the redacted text, never a raw value.
    _, joined = _run(redactor, chunks)
    assert joined == redactor.redact(text), chunks
    return joined


def _check_hidden(text: str, chunks: list[str]) -> None:
    joined = _check(text, chunks)
    for value in _values_in(text):
        assert value not in joined


def _random_chunks(text: str, rnd: random.Random, largest: int) -> list[str]:
    chunks, at = [], 0
    while at < len(text):
        size = rnd.randint(1, largest)
        chunks.append(text[at : at + size])
        at += size
    return chunks


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_stream_equals_redact_at_every_split(text: str) -> None:
    for i in range(len(text) + 1):
        _check_hidden(text, [text[:i], text[i:]])


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_stream_equals_redact_in_single_characters(text: str) -> None:
    _check_hidden(text, list(text))


@pytest.mark.parametrize("text", [around.format(value) for _, value, around in FOUND])
def test_stream_equals_redact_in_random_chunks(text: str) -> None:
    rnd = random.Random(text)
    for largest in (2, 5, 17):
        _check_hidden(text, _random_chunks(text, rnd, largest))


def test_stream_never_emits_a_value_before_it_is_redacted() -> None:
    text = "Write to jane.doe@example.com or 4111 1111 1111 1111 please."
    pieces, joined = _run(REDACTOR, list(text))
    emitted = ""
    for piece in pieces:
        emitted += piece
        for fragment in ("jane.", "doe@", "@example", "4111 1"):
            assert fragment not in emitted
    assert joined == "Write to [EMAIL_REDACTED] or [CREDIT_CARD_REDACTED] please."


def test_stream_mixed_texts_with_chosen_entities() -> None:
    pieces = [around.format(value) for _, value, around in FOUND] + [
        " ",
        "\n",
        "17*23 = 391",
        "-",
        "1",
        "@",
        ".",
        "DE",
        "+4",
        "sk-",
        "Bearer ",
        "-----BEGIN PRIVATE KEY-----",
    ]
    rnd = random.Random(7)
    entities = list(Entity)
    for _ in range(150):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 6)))
        chosen = frozenset(rnd.sample(entities, rnd.randint(1, len(entities))))
        redactor = REDACTOR if rnd.random() < 0.5 else Redactor(entities=chosen)
        _check(text, _random_chunks(text, rnd, 9), redactor)


def test_stream_of_non_ascii_text() -> None:
    text = "Grüße aus Köln — schreib an jürgen@example.de ✉️ oder ruf +49 221 123456 an. 日本語"
    _check(text, list(text))
    assert REDACTOR.redact(text) == (
        "Grüße aus Köln — schreib an [EMAIL_REDACTED] ✉️ oder ruf [PHONE_REDACTED] an. 日本語"
    )


def test_prose_flows_with_a_small_lag() -> None:
    stream = REDACTOR.stream()
    first = stream.feed("Hello there, how are you today? ")
    assert "Hello there" in first
    assert stream.held <= 1
    rnd = random.Random(3)
    prose = "The model answered the question and the run finished. " * 40
    most = 0
    for chunk in _random_chunks(prose, rnd, 6):
        stream.feed(chunk)
        most = max(most, stream.held)
    assert most <= 16  # about one word


def test_a_huge_private_key_is_never_held_past_the_limit() -> None:
    body = "".join(f"MIIEvQIBADANBgkqhkiG9w0BAQEFAASC{i:08d}\n" for i in range(1200))
    ended = "a -----BEGIN PRIVATE KEY-----\n" + body + "-----END PRIVATE KEY-----\nb x@example.com"
    unterminated = "a -----BEGIN PRIVATE KEY-----\n" + body
    for text in (ended, unterminated):
        assert len(text) > 2 * HOLD_LIMIT
        stream = REDACTOR.stream()
        pieces = []
        for i in range(0, len(text), 64):
            pieces.append(stream.feed(text[i : i + 64]))
            assert stream.held <= HOLD_LIMIT + 64
        pieces.append(stream.flush())
        joined = "".join(pieces)
        assert joined == REDACTOR.redact(text)
        assert "MIIEvQ" not in joined
    assert REDACTOR.redact(ended) == "a [PRIVATE_KEY_REDACTED]\nb [EMAIL_REDACTED]"
