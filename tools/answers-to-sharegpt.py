#!/usr/bin/env python3
"""Turn `clover-engine eval` answers into ShareGPT conversations, for `gen-data`.

The references evaluate draft heads on the base model's own answers to the benchmark questions,
dumped like the training data (clover2.md §7, "Evaluation data"). With plain greedy answers the
assistant text is what the base model itself decodes, so a head's held-out top-1 agreement on it
(`distill --eval-data`) is measured on the text it will draft for.

    clover-engine eval --bench data/spec_bench/question.jsonl --out plain.jsonl   # plain, greedy
    python3 tools/answers-to-sharegpt.py --bench data/spec_bench/question.jsonl \\
        --answers plain.jsonl --out runs/plain-answers.json
    clover-engine gen-data --data runs/plain-answers.json --out runs/eval-data
    clover-engine distill ... --eval-data runs/eval-data

Each answer becomes one conversation: its question's turns and the answer's turns, alternating
(a question answered for fewer turns, with `eval --max-turns`, keeps only those). Standard library
only.
"""
import argparse
import json
import sys


def read_jsonl(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"error: {path}: line {number}: {e}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", required=True, help="the questions eval answered (JSONL: question_id, turns)")
    ap.add_argument("--answers", required=True, help="eval's answers file (JSONL)")
    ap.add_argument("--out", required=True, help="ShareGPT JSON array to write")
    a = ap.parse_args()

    questions = {}
    for q in read_jsonl(a.bench):
        if "question_id" not in q or "turns" not in q:
            sys.exit(f"error: {a.bench}: a question lacks question_id or turns: {str(q)[:80]}")
        questions[q["question_id"]] = q["turns"]
    conversations = []
    for ans in read_jsonl(a.answers):
        qid = ans.get("question_id")
        if qid not in questions:
            sys.exit(f"error: {a.answers}: question {qid} is not in {a.bench}")
        try:
            replies = ans["choices"][0]["turns"]
        except (KeyError, IndexError, TypeError):
            sys.exit(f"error: {a.answers}: question {qid}: no choices[0].turns")
        if len(replies) > len(questions[qid]):
            sys.exit(f"error: {a.answers}: question {qid} has {len(replies)} answers to {len(questions[qid])} turns")
        turns = []
        for user, reply in zip(questions[qid], replies):
            turns.append({"from": "human", "value": user})
            turns.append({"from": "gpt", "value": reply})
        conversations.append({"id": f"question-{qid}", "conversations": turns})
    if not conversations:
        sys.exit(f"error: {a.answers}: no answers")
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(conversations, f, ensure_ascii=False, indent=1)
    print(f"wrote {a.out}: {len(conversations)} conversations")


if __name__ == "__main__":
    main()
