"""The report as plain values: sections of text, tables, figures and code. The Markdown and HTML renderers
(harness.report.render) and the console all read the same tables, so they show the same rows and numbers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Text:
    """A paragraph; `code` in backticks is kept as code."""

    text: str


@dataclass(frozen=True)
class Table:
    """Cells are already formatted: every renderer prints them as they are."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric_from: int = 1  # columns from this index on hold numbers (right-aligned)
    note: str = ""
    numeric_to: int | None = None  # ... up to this index (exclusive); None: to the last column

    def numeric(self, column: int) -> bool:
        """Whether the column holds numbers (right-aligned)."""
        return self.numeric_from <= column < (len(self.columns) if self.numeric_to is None else self.numeric_to)


@dataclass(frozen=True)
class Figure:
    path: str  # relative to the report directory, e.g. img/jct-cdf-paper.png
    title: str
    caption: str = ""


@dataclass(frozen=True)
class Code:
    """A block of code or data, e.g. a run's config as JSON; collapsed in HTML under `summary`."""

    text: str
    summary: str
    language: str = "json"


Block = Text | Table | Figure | Code


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2  # 2 = a top-level section, 3 = a subsection


@dataclass
class Document:
    title: str
    subtitle: str = ""  # e.g. when and by what it was made
    intro: list[Block] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def blocks(self) -> list[Block]:
        return [*self.intro, *(b for s in self.sections for b in s.blocks)]

    def tables(self) -> list[Table]:
        return [b for b in self.blocks() if isinstance(b, Table)]

    def figures(self) -> list[Figure]:
        return [b for b in self.blocks() if isinstance(b, Figure)]
