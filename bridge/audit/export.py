"""Audit records out of the store as JSON or CSV (CLI `audit query`, the auditor API).

Export flattens each stored row (the body's objects/details/description become columns) and, in
CSV, neutralises cells a spreadsheet would run as a formula (CSV injection).
"""

from __future__ import annotations

import csv
import json
import unicodedata
from collections.abc import Iterable, Iterator
from typing import IO, Any

from bridge.audit.chain import HASHED

EXPORT_COLUMNS = ("seq", *HASHED[:-1], "objects", "details", "description", "hash")


def export_rows(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Flatten stored rows for export: body fields become columns."""
    for r in rows:
        body = json.loads(r["body"])
        yield {
            "seq": r["seq"],
            **{k: r[k] for k in HASHED[:-1]},
            "objects": body.get("objects", []),
            "details": body.get("details", {}),
            "description": body.get("description"),
            "hash": r["hash"],
        }


def export_json(rows: Iterable[dict[str, Any]], out: IO[str]) -> int:
    n = 0
    out.write("[")
    for i, r in enumerate(export_rows(rows)):
        out.write(("," if i else "") + "\n" + json.dumps(r, ensure_ascii=False))
        n += 1
    out.write("\n]\n")
    return n


#: first characters that make a spreadsheet read a cell as a formula (OWASP "CSV Injection"):
#: = + - @, tab and CR (and LF), and their full-width forms, which some spreadsheets fold to ASCII
FORMULA_LEADS = frozenset("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20")
#: Unicode categories skipped before the formula check: separators, controls, format characters
_INVISIBLE = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})


def csv_cell(value: str) -> str:
    """``value`` safe to open in a spreadsheet: a cell whose first visible character could start
    a formula is prefixed with ``'`` (the cell then shows as text; the value stays readable).
    Invisible leading characters (any space, control or format character: no-break space, BOM,
    zero-width space ...) are skipped first: a spreadsheet may drop them and run the rest."""
    i = 0
    while i < len(value) and unicodedata.category(value[i]) in _INVISIBLE:
        i += 1
    if value[:1] in FORMULA_LEADS or value[i:i + 1] in FORMULA_LEADS:
        return "'" + value
    return value

def export_csv(rows: Iterable[dict[str, Any]], out: IO[str]) -> int:
    """CSV with one column per field; objects and details as JSON text.  Cells that a spreadsheet
    would run as a formula are neutralised by :func:`csv_cell` (CSV injection)."""
    w = csv.writer(out)
    w.writerow(EXPORT_COLUMNS)
    n = 0
    for r in export_rows(rows):
        cells = []
        for c in EXPORT_COLUMNS:
            v = r[c]
            v = "" if v is None else json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else str(v)
            cells.append(v if c in ("seq", "outcome") else csv_cell(v))
        w.writerow(cells)
        n += 1
    return n
