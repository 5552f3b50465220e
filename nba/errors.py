"""Named errors. Each message names the bad value, where it was, and what was allowed."""

from __future__ import annotations

from dataclasses import dataclass


class NBAError(Exception):
    """Base of every error this project raises on purpose (the CLI turns them into exit code 2)."""


@dataclass(frozen=True)
class Problem:
    """One defect in input data, located as precisely as the input allows."""

    file: str
    message: str
    row: int | None = None  # 1-based data row (header excluded)
    column: str | None = None
    line: int | None = None  # 1-based line in a CSV file (header is line 1)

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}" + (f" (line {self.line})" if self.line is not None else ""))
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return ", ".join(where) + ": " + self.message


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` and the noun in the right number: ``plural(1, "problem")`` is "1 problem", 2 gives "2 problems"."""
    return f"{n:,} {noun if n == 1 else (nouns or noun + 's')}"


class DataValidationError(NBAError):
    """Input data broke the contract. ``problems`` lists each defect found (up to a limit)."""

    def __init__(self, problems: list[Problem], truncated: int = 0):
        self.problems = problems
        self.truncated = truncated
        lines = [str(p) for p in problems]
        if truncated:
            lines.append(f"... and {truncated} more")
        super().__init__(f"{plural(len(problems) + truncated, 'problem')} in input data:\n  " + "\n  ".join(lines))


class StoreError(NBAError):
    """The store is missing, locked, or does not hold what was asked for."""


class ConfigError(NBAError):
    """A command-line option or configuration value is invalid."""
