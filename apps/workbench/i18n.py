"""The workbench's message catalogs: every piece of page text comes from one catalog per language.

``messages/<lang>.yaml`` maps a message id to its text (``str.format`` fields in braces); English
(``en``) is the default and the reference: a catalog may not hold an id English lacks, and an id a
language lacks falls back to English (the test suite checks that ``zh`` lacks none). Values from the
data (a lifecycle stage, an action family, a channel) are translated through ids ``value.<kind>.<value>``
and shown as they are when the catalog has no entry (a bank's own catalog of actions, say).

The language: ``?lang=`` on any page (remembered in a cookie), else the cookie, else the browser's
``Accept-Language`` (RFC 9110 section 12.5.4: the highest-weighted language we have), else English.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

LANGUAGES = ("en", "zh")
DEFAULT = "en"
NAMES = {"en": "English", "zh": "中文"}
HTML_LANG = {"en": "en", "zh": "zh-Hans"}
_DIR = Path(__file__).with_name("messages")


@lru_cache(maxsize=None)
def catalog(lang: str) -> dict[str, str]:
    """The messages of ``lang`` (``KeyError`` for a language we do not ship)."""
    if lang not in LANGUAGES:
        raise KeyError(f"no message catalog for {lang!r} (have {', '.join(LANGUAGES)})")
    data = yaml.safe_load((_DIR / f"{lang}.yaml").read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"{_DIR / f'{lang}.yaml'}: expected a mapping of message ids to strings")
    return data


class Translator:
    """``t("list.title", rm="RM0001")`` in one language, falling back to English, then to the id."""

    def __init__(self, lang: str):
        self.lang = lang if lang in LANGUAGES else DEFAULT
        self._own, self._en = catalog(self.lang), catalog(DEFAULT)

    def __call__(self, key: str, **fields) -> str:
        text = self._own.get(key) or self._en.get(key) or key
        return text.format(**fields) if fields else text

    def has(self, key: str) -> bool:
        """Whether this language's own catalog has ``key`` (no English fallback)."""
        return key in self._own

    def value(self, kind: str, value) -> str:
        """A data value (``value("channel", "phone")``): its translation, or the value itself."""
        if value is None:
            return ""
        key = f"value.{kind}.{value}"
        return self._own.get(key) or self._en.get(key) or str(value)

    @property
    def html_lang(self) -> str:
        return HTML_LANG[self.lang]


def parse_accept_language(header: str | None) -> list[str]:
    """Primary language tags of an ``Accept-Language`` header, best first (q=0 dropped, ties keep order)."""
    if not header:
        return []
    ranked = []
    for i, part in enumerate(header.split(",")[:32]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            name, _, val = p.strip().partition("=")
            if name.strip() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        tag = tag.strip().lower().split("-")[0]
        if tag and tag != "*" and q > 0:
            ranked.append((-q, i, tag))
    return [t for _, _, t in sorted(ranked)]


def negotiate(query: str | None, cookie: str | None, accept_language: str | None) -> str:
    """The page language: a supported ``?lang=``, else the cookie's, else the browser's best, else English."""
    for choice in (query, cookie):
        choice = (choice or "").strip().lower()
        if choice in LANGUAGES:
            return choice
    for tag in parse_accept_language(accept_language):
        if tag in LANGUAGES:
            return tag
    return DEFAULT
