"""Model selection by task complexity: a policy maps tiers to models, a classifier picks
the tier of each run from its input.

The default classifier is a heuristic: fast (three regular expressions over the
input), deterministic, no model call. It adds points:

- code, 2: a ``` fence, `def`/`class`/`import` lines, a traceback, a language name,
  "refactor", "debug", "implement";
- math, 2: "prove", "derive", "integral", "theorem", "equation", "probability",
  "matrix", LaTeX;
- multi-step, 1: "step by step", "first … then", "finally", "plan", "compare",
  "analyze", "design", a numbered list of 3 or more items;
- length: 1 over 150 words, 2 over 600.

0 points is `simple`, 1-2 `medium`, 3 or more `complex`. An agent replaces it with its
own classifier (`ModelPolicy.classifier`); one that raises or answers an unknown tier
falls back to the heuristic, and the reason says so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

log = logging.getLogger(__name__)

Tier = Literal["simple", "medium", "complex"]
TIERS: tuple[Tier, ...] = get_args(Tier)


@dataclass(frozen=True, kw_only=True)
class TierChoice:
    """A classifier's verdict on one input."""

    tier: Tier
    reason: str
    """Why, in a few words an operator can check against the input."""


Classifier = Callable[[str], TierChoice]
"""Picks the tier of a run from its input text. Runs when the run is created, on the
request path: it must be fast and must not do I/O."""

_FLAGS = re.IGNORECASE | re.MULTILINE
# Each pattern runs in time linear in the input (no unbounded `.*` between two words):
# inputs may be 200,000 characters long.
_CUES: tuple[tuple[str, int, re.Pattern[str]], ...] = (
    (
        "code",
        2,
        re.compile(
            r"```|^[ \t]*(?:def|class|import|from [\w.]+ import|#include|fn|func)\b|Traceback"
            r"|\bstack ?trace\b|\b(?:python|javascript|typescript|rust|golang|java|sql|regex"
            r"|bash|refactor|debug|implement)\b",
            _FLAGS,
        ),
    ),
    (
        "math",
        2,
        re.compile(
            r"\b(?:prove|proof|derive|derivative|integral|theorem|lemma|equations?"
            r"|probability|matrix|eigen\w*)\b|\\frac|\\sum|\\int|\$\$",
            _FLAGS,
        ),
    ),
    (
        "multi-step",
        1,
        re.compile(
            r"\bstep[- ]by[- ]step\b|\bfirst\b[^\n]{0,200}?\bthen\b|\bfinally\b"
            r"|\bafter that\b|\b(?:plan|compare|analy[sz]e|design|evaluate|trade-?offs?)\b",
            _FLAGS,
        ),
    ),
)
_LIST_ITEM = re.compile(r"^[ \t]*\d{1,3}[.)][ \t]", re.MULTILINE)
_LIST_ITEMS = 3
_LONG_WORDS = 150
_VERY_LONG_WORDS = 600


def classify_by_heuristic(text: str) -> TierChoice:
    """The default classifier: cue and length points (see the module's docstring)."""
    points = 0
    found: list[str] = []
    for name, weight, pattern in _CUES:
        match = pattern.search(text)
        if match is None and name == "multi-step":
            match = _numbered_list(text)
        if match is not None:
            points += weight
            found.append(f"{name} ({_quote(match.group(0))})")
    words = len(text.split())
    if words > _LONG_WORDS:
        points += 2 if words > _VERY_LONG_WORDS else 1
    tier: Tier = "complex" if points >= 3 else "medium" if points >= 1 else "simple"
    cues = ", ".join(found) if found else "no code, math or multi-step cue"
    return TierChoice(tier=tier, reason=f"heuristic: {points} points: {cues}; {words} words")


def _numbered_list(text: str) -> re.Match[str] | None:
    """The third item of a numbered list, if the text has one that long."""
    for count, match in enumerate(_LIST_ITEM.finditer(text), start=1):
        if count == _LIST_ITEMS:
            return match
    return None


def _quote(fragment: str) -> str:
    """The cue as the reason shows it: never more of the input than the cue words."""
    text = " ".join(fragment.split())
    if text.lower().startswith("first "):
        text = "first … then"
    return repr(text)


@dataclass(frozen=True, kw_only=True)
class ModelPolicy:
    """An agent version's models by task complexity, each `provider/model`."""

    simple: str
    medium: str
    complex: str
    classifier: Classifier | None = None
    """The agent's own classifier; None: `classify_by_heuristic`."""

    def model(self, tier: Tier) -> str:
        """The model of `tier`."""
        return {"simple": self.simple, "medium": self.medium, "complex": self.complex}[tier]

    def classify(self, text: str) -> TierChoice:
        """The tier of `text`: the agent's classifier if it answers sensibly, else the
        heuristic, with the reason saying why."""
        if self.classifier is None:
            return classify_by_heuristic(text)
        try:
            choice = self.classifier(text)
            if choice.tier not in TIERS:
                raise ValueError(f"unknown tier {choice.tier!r}")
        except Exception as exc:
            log.warning("model policy: the agent's classifier failed: %r", exc)
            fallback = classify_by_heuristic(text)
            problem = f"{type(exc).__name__}: {exc}"
            return TierChoice(
                tier=fallback.tier, reason=f"own classifier failed ({problem}); {fallback.reason}"
            )
        return choice


@dataclass(frozen=True, kw_only=True)
class Route:
    """The model a run uses and, when a policy chose it, the tier and why."""

    model: str
    tier: Tier | None = None
    reason: str | None = None

    def event_data(self) -> dict[str, object]:
        """What `run.started` tells of the choice: `routing` when a policy chose."""
        if self.tier is None:
            return {}
        return {"routing": {"tier": self.tier, "reason": self.reason}}


def route_run(policy: ModelPolicy | None, text: str, *, model: str) -> Route:
    """The model of a run whose input is `text`: by `policy` when there is one,
    else `model` (the version's model or the service's default)."""
    if policy is None:
        return Route(model=model)
    choice = policy.classify(text)
    return Route(model=policy.model(choice.tier), tier=choice.tier, reason=choice.reason)
