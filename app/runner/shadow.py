"""Shadow runs: a version tried on a copy of a live request, with no side effects.

A shadow run's tools do not execute, except those that declare themselves read-only.
Every other call is answered with the live run's recorded result for the same tool and
arguments when there is one (`replayed`), and otherwise with a note that it was not
executed (`simulated`): the model carries on, the world is left as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

NOT_EXECUTED = "{name} was not executed: this is a shadow run, and it changes nothing"


def replay_key(name: str, arguments: Mapping[str, object]) -> str:
    """The same for the same tool and arguments, whatever their order."""
    return name + "\x00" + orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS).decode()


@dataclass(frozen=True, kw_only=True)
class ShadowReplay:
    """The live run's successful tool results, by tool and arguments."""

    results: Mapping[str, str]

    @classmethod
    def of(cls, calls: Iterable[tuple[str, Mapping[str, object], str, str | None]]) -> ShadowReplay:
        """From the live run's tool calls as (name, arguments, status, result)."""
        return cls(
            results={
                replay_key(name, args): result
                for name, args, status, result in calls
                if status == "ok" and result is not None
            }
        )

    def answer(self, name: str, arguments: Mapping[str, object]) -> tuple[bool, str]:
        """(True, the live result) when the live run made this call; else (False, a note)."""
        recorded = self.results.get(replay_key(name, arguments))
        if recorded is not None:
            return True, recorded
        return False, NOT_EXECUTED.format(name=name)
