"""Text from tools and models as the database can keep it."""

from __future__ import annotations

import orjson
import pytest

from app.runner.tool_exec import storable
from app.store.db import json_dumps


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("a\x00b", "a\ufffdb"),
        ({"k\x00": ["\x00", 1]}, {"k\ufffd": ["\ufffd", 1]}),
        ("\\u0000", "\\u0000"),  # the text backslash-u-0-0-0-0 is no NUL
        ("\\\x00", "\\\ufffd"),  # a backslash, then a NUL
        ("plain", "plain"),
    ],
)
def test_json_for_a_column_has_no_nul(value: object, kept: object) -> None:
    text = json_dumps(value)
    assert "\\u0000" not in text.replace("\\\\", "")
    assert orjson.loads(text) == kept


def test_tool_text_loses_nul_and_lone_surrogates_only() -> None:
    assert storable("a\x00b\ud800c é") == "a\ufffdb\ufffdc é"
    assert storable("plain") == "plain"
