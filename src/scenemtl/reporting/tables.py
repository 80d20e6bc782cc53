"""Tables as Markdown, LaTeX or CSV, for ``runs`` and ``study report``."""

from __future__ import annotations

import csv
import io


def format_table(
    rows: list[dict[str, str]], fmt: str = "md", columns: tuple[str, ...] | None = None
) -> str:
    """The rows as Markdown, LaTeX or CSV (``columns``: default, those of the first row)."""
    cols = columns or (tuple(rows[0]) if rows else ())
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    if fmt == "latex":

        def esc(text: str) -> str:
            for a, b in (
                ("\\", r"\textbackslash{}"),
                ("_", r"\_"),
                ("%", r"\%"),
                ("&", r"\&"),
                ("#", r"\#"),
            ):
                text = text.replace(a, b)
            return text

        lines = [
            r"\begin{tabular}{" + "l" * len(cols) + "}",
            r"\hline",
            " & ".join(esc(c) for c in cols) + r" \\",
            r"\hline",
        ]
        lines += [" & ".join(esc(r[c]) for c in cols) + r" \\" for r in rows]
        lines += [r"\hline", r"\end{tabular}"]
        return "\n".join(lines)

    def cell(text: str) -> str:
        return text.replace("|", r"\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
