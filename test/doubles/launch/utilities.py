"""TEST DOUBLE — not the real package; written from the public documentation/source of launch for CI only.

``normalize_to_list_of_substitutions`` and ``perform_substitutions`` (launch/utilities/).
"""

from __future__ import annotations

from typing import Any

from .substitutions import Substitution, TextSubstitution


def normalize_to_list_of_substitutions(subs: Any) -> list[Substitution]:
    if isinstance(subs, str):
        return [TextSubstitution(text=subs)]
    if isinstance(subs, Substitution):
        return [subs]
    return [TextSubstitution(text=s) if isinstance(s, str) else s for s in subs]


def perform_substitutions(context: Any, subs: list[Substitution]) -> str:
    return "".join(s.perform(context) for s in subs)


__all__ = ["normalize_to_list_of_substitutions", "perform_substitutions"]
