"""Suppression rules: outliers an analyst has ruled out by pattern never alert.

A rule is a mapping of any of `text` (regex on the canonical text), `computer` (regex on the
host name), `event_id` and `cluster` (numbers); an alert matches a rule when every key the rule
gives matches. Matching alerts are kept with status `suppressed` (the evidence stays queryable)
and never reach the alerts topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from plugin.errors import UsageError

KEYS = ("text", "computer", "event_id", "cluster")


@dataclass(frozen=True)
class Rule:
    text: re.Pattern | None = None
    computer: re.Pattern | None = None
    event_id: int | None = None
    cluster: int | None = None

    def matches(self, text: str, computer: str | None, event_id: int, cluster: int | None) -> bool:
        return ((self.text is None or self.text.search(text) is not None)
                and (self.computer is None or self.computer.search(computer or "") is not None)
                and (self.event_id is None or self.event_id == event_id)
                and (self.cluster is None or self.cluster == cluster))


class SuppressRules:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    @classmethod
    def parse(cls, items: list[Any], origin: str = "suppress") -> "SuppressRules":
        """Rules from configuration; a bad one is a usage error naming it."""
        rules = []
        for i, item in enumerate(items or []):
            where = f"{origin}[{i}]"
            if not isinstance(item, dict) or not item:
                raise UsageError(f"{where}: a rule is a mapping of {', '.join(KEYS)}")
            unknown = set(item) - set(KEYS)
            if unknown:
                raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                                 f"(known: {', '.join(KEYS)})")
            kw: dict[str, Any] = {}
            for k in ("text", "computer"):
                if k in item:
                    try:
                        kw[k] = re.compile(str(item[k]), re.IGNORECASE)
                    except re.error as exc:
                        raise UsageError(f"{where}: {k} is not a valid regex: {exc}") from None
            for k in ("event_id", "cluster"):
                if k in item:
                    if isinstance(item[k], bool) or not isinstance(item[k], int):
                        raise UsageError(f"{where}: {k} must be an integer")
                    kw[k] = item[k]
            rules.append(Rule(**kw))
        return cls(rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def matches(self, text: str, computer: str | None, event_id: int, cluster: int | None) -> bool:
        return any(r.matches(text, computer, event_id, cluster) for r in self.rules)
