"""The study note's approach, for timing against chatglm-data (see docs/benchmarks.md).

Reads every sheet of a workbook with header Q, A and writes one JSON line
{"content": q, "summary": a} per row (json.dumps, ensure_ascii=False).

Usage: python3 python_convert.py IN.xlsx OUT.json [pandas|openpyxl]
  pandas   (default) pandas.read_excel(sheet_name=None, engine="openpyxl"), as the note does
  openpyxl openpyxl.load_workbook(read_only=True), iterating rows (the fastest pure-Python way)
"""
import json
import sys
import time

start = time.perf_counter()
engine = sys.argv[3] if len(sys.argv) > 3 else "pandas"
n = 0
with open(sys.argv[2], "w", encoding="utf-8") as out:
    if engine == "pandas":
        import pandas as pd

        for df in pd.read_excel(sys.argv[1], sheet_name=None, engine="openpyxl").values():
            for q, a in zip(df["Q"], df["A"]):
                out.write(json.dumps({"content": str(q), "summary": str(a)}, ensure_ascii=False) + "\n")
                n += 1
    else:
        import openpyxl

        wb = openpyxl.load_workbook(sys.argv[1], read_only=True)
        for ws in wb.worksheets:
            rows = ws.iter_rows(values_only=True)
            header = list(next(rows))
            qi, ai = header.index("Q"), header.index("A")
            for row in rows:
                out.write(json.dumps({"content": str(row[qi]), "summary": str(row[ai])}, ensure_ascii=False) + "\n")
                n += 1
print(f"{engine}: {n} rows in {time.perf_counter() - start:.3f} s", file=sys.stderr)
