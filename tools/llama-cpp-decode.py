#!/usr/bin/env python3
"""Decode tokens/s of llama.cpp against clover-engine on the same GGUF file, rounds alternated.

The outside reference for issue 8's stretch goal: llama.cpp through llama-cpp-python (not a
dependency of this project; build it on the machine that measures, with its native instructions:
`CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --no-binary llama-cpp-python llama-cpp-python==0.3.36`).
Each round runs, in turn: llama.cpp on the GGUF file; clover-engine on the bf16 import
(`tools/fetch-default-model.sh`); clover-engine on the same GGUF imported with its blocks kept
(`clover-engine import-gguf FILE DIR --dtype keep`). Greedy, one chat prompt, 128 new tokens,
2 threads each. llama.cpp's figure is its own counter (`llama_perf_context`: n_eval / t_eval_ms);
clover-engine's is the "decode" figure `generate` prints. Medians over the rounds at the end.

usage: tools/llama-cpp-decode.py --gguf FILE --bf16 DIR --kept DIR [--rounds 5] [--engine BIN]
"""

import argparse
import re
import statistics
import subprocess
import sys

PROMPT = "Write a 500-word essay about the history of the printing press."


def llama_cpp_round(llm, llama_cpp, tokens):
    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}], max_tokens=tokens, temperature=0.0
    )
    perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
    text = out["choices"][0]["message"]["content"]
    return perf.n_eval / (perf.t_eval_ms / 1000.0), out["usage"]["completion_tokens"], text


def engine_round(engine, model, threads, tokens):
    cmd = [engine, "--threads", str(threads), "--device", "cpu", "generate", "--model", model,
           "--chat", PROMPT, "--max-new-tokens", str(tokens)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    both = run.stdout + run.stderr
    m = re.search(r"new tokens: (\d+)\s+prefill: [\d.]+ tok/s\s+decode: ([\d.]+) tok/s", both)
    if not m:
        sys.exit(f"no decode figure in the output of {' '.join(cmd)}:\n{both}")
    return float(m.group(2)), int(m.group(1)), run.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--bf16", required=True, help="clover-engine folder of the bf16 import")
    ap.add_argument("--kept", required=True, help="clover-engine folder of import-gguf --dtype keep")
    ap.add_argument("--engine", default="target/release/clover-engine")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()

    import llama_cpp

    llm = llama_cpp.Llama(model_path=args.gguf, n_threads=args.threads, n_ctx=512, verbose=False)
    methods = {
        "llama.cpp GGUF": lambda: llama_cpp_round(llm, llama_cpp, args.tokens),
        "clover-engine bf16 import": lambda: engine_round(args.engine, args.bf16, args.threads, args.tokens),
        "clover-engine blocks kept": lambda: engine_round(args.engine, args.kept, args.threads, args.tokens),
    }
    runs = {name: [] for name in methods}
    for r in range(1, args.rounds + 1):
        for name, run in methods.items():
            rate, tokens, text = run()
            runs[name].append(rate)
            print(f"round {r} {name}: {rate:.1f} tok/s decode, {tokens} tokens: {text[:60]!r}", flush=True)
    print("\nmedians:")
    for name, rates in runs.items():
        print(f"  {name}: {statistics.median(rates):.1f} tok/s (runs: {', '.join(f'{x:.1f}' for x in rates)})")
    ref = statistics.median(runs["llama.cpp GGUF"])
    for name in list(methods)[1:]:
        print(f"  {name} / llama.cpp: {statistics.median(runs[name]) / ref:.2f}x")


if __name__ == "__main__":
    main()
