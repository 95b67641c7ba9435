#!/usr/bin/env python3
"""Turn ShareGPT conversations' user turns into questions for `clover-engine eval`.

Self-distillation data: the base model answers ShareGPT's user turns itself (`eval`, greedy), and
`tools/answers-to-sharegpt.py` turns those answers back into conversations for `gen-data`. A draft
head trained on them learns the text the base model produces, which is what it drafts for at
inference (the ShareGPT answers were written by another model).

    python3 tools/sharegpt-to-questions.py --data ShareGPT_V3_unfiltered_cleaned_split.json \\
        --start 60000 --end 61000 --out runs/self-questions.jsonl
    clover-engine eval --bench runs/self-questions.jsonl --out runs/self-answers.jsonl
    python3 tools/answers-to-sharegpt.py --bench runs/self-questions.jsonl \\
        --answers runs/self-answers.jsonl --out runs/self-answers.json
    clover-engine gen-data --data runs/self-answers.json --out runs/self-512 --max-len 512

Records `start..end` of the file (0-based, in file order, counting every complete record: not
gen-data's `--start/--end`, which count the conversations it can use, so record r holds usable
conversation r or a later one) are read; each gives one question (question_id: its record number, category "sharegpt") with its
first `--max-turns` user turns, or none when it has no user turn, or one longer than
`--max-chars` (a long pasted document would spend the answer's budget on its prompt). The file of
tools/fetch-sharegpt.sh is cut off mid-record; its complete records are read, as gen-data does.
Standard library only.
"""
import argparse
import json
import os
import sys


def records(path):
    """The complete records of a JSON array, in order, even when the file is cut off."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    decoder = json.JSONDecoder()
    i = text.find("[")
    if i < 0:
        sys.exit(f"error: {path}: not a JSON array")
    i += 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return
        try:
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            # The cut-off last record ends the file; a malformed one before others is an error.
            if '"conversations"' in text[e.pos :]:
                sys.exit(f"error: {path}: a malformed record at character {e.pos}: {e.msg}")
            return
        yield record


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="ShareGPT JSON file")
    ap.add_argument("--start", type=int, default=0, help="first record (0-based, file order)")
    ap.add_argument("--end", type=int, required=True, help="one past the last record")
    ap.add_argument("--max-turns", type=int, default=1, help="user turns per question")
    ap.add_argument("--max-chars", type=int, default=1500, help="longest user turn kept")
    ap.add_argument("--out", required=True, help="questions JSONL to write")
    a = ap.parse_args()
    if not 0 <= a.start < a.end or a.max_turns < 1 or a.max_chars < 1:
        sys.exit("error: need 0 <= --start < --end, --max-turns >= 1, --max-chars >= 1")

    questions, seen = [], 0
    for number, record in enumerate(records(a.data)):
        if number >= a.end:
            break
        seen = number + 1
        if number < a.start:
            continue
        messages = record.get("conversations") if isinstance(record, dict) else None
        turns = [
            (m.get("value") or "").strip()
            for m in (messages if isinstance(messages, list) else [])
            if isinstance(m, dict) and m.get("from") == "human"
        ][: a.max_turns]
        if not turns or any(not t or len(t) > a.max_chars for t in turns):
            continue
        questions.append({"question_id": number, "category": "sharegpt", "turns": turns})
    if seen < a.end:
        sys.exit(f"error: {a.data}: only {seen} complete records, --end is {a.end}")
    with open(a.out + ".partial", "w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    os.replace(a.out + ".partial", a.out)
    print(f"{len(questions)} questions from records {a.start}..{a.end} -> {a.out}")


if __name__ == "__main__":
    main()
