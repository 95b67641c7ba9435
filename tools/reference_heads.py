#!/usr/bin/env python3
"""Independent numpy reference of the shipped draft heads (Clover-2 and EAGLE-1).

Written from the specifications only (spec/clover2.md §2-§5, §10; spec/eagle.md §2, §3, §8, §9),
sharing no code with the Rust engine: it parses safetensors itself (bf16 -> f32 -> f64), runs its
own f64 forward of the HF-layout base model (rotate-half RoPE) and then each head at the first
draft step after prefill, as a greedy top-1 chain of 5 depths over the reduced draft vocabulary.

What is fed (also written into the fixture as "conventions"):
  base:    prompt ids x_0..x_{P-1} as-is (no BOS added), positions 0..P-1, one causal prefill;
           u_t = last decoder layer output before the final norm, h_t = after it;
           root r = argmax of the base logits at position P-1 (full vocabulary).
  pairs:   (feature_t, x_{t+1}) for t = 0..P-1 with x_P = r, draft position t.
  clover2: feature = u_t (pre-norm). z_t = AD0(u_t, E[x_{t+1}]); 2 decoder layers (input norm,
           RoPE base 10000, positions 0..P-1, causal); s0 = clover_norm(z_{P-1});
           depth 0: f = head_norm(W0 s0 + b0); depth d >= 1: e = E[c_{d-1}], s_d = AD1(s_{d-1}, e),
           f = head_norm(Wc [s_d ; e] + bc).  E = lm_head = embed_tokens (tied).
  eagle:   feature = h_t (post-norm). x = fc([E[tok] ; feat]) + b; one decoder layer with no input
           norm (RoPE base 10000, causal); no final norm. Depth 0 = output at pair P-1; depth d >= 1
           = node (f_hat of depth d-1, c_{d-1}) at position P+d-1 attending to all P pairs and the
           earlier chain nodes (a chain is the tree mask's ancestor set).  E = embed_tokens.
  logits:  lm_head rows of the draft vocabulary only (draft_vocab.json token_ids);
           c_d = the draft-vocab id with the largest depth-d logit.

Usage (Python >= 3.11, numpy and tokenizers from tools/requirements.txt):
    python3 tools/reference_heads.py \\
        --model-dir ~/.cache/clover-engine/models/SmolLM2-135M-Instruct \\
        --heads-dir assets/smollm2-135m-instruct \\
        --check-base tests/fixtures/reference_logits.json \\
        --out tests/fixtures/reference_heads.json
"""
import argparse
import hashlib
import json
import math
import os
import struct
import sys

import numpy as np

DEPTHS = 5
TOP_K = 16
ROOT_TOP_K = 8
DRAFT_ROPE_BASE = 10000.0  # hard-coded in both references, whatever the base's rope_theta


# ------------------------------------------------------------ safetensors ----

def read_safetensors(path):
    """name -> f64 array. Header: u64 LE length, JSON {name: {dtype, shape, data_offsets}}."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        blob = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        raw = blob[a:b]
        dt = meta["dtype"]
        if dt == "BF16":
            u16 = np.frombuffer(raw, dtype="<u2")
            arr = (u16.astype(np.uint32) << 16).view(np.float32)
        elif dt == "F16":
            arr = np.frombuffer(raw, dtype="<f2")
        elif dt == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        else:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
        out[name] = arr.astype(np.float64).reshape(meta["shape"])
    return out


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ------------------------------------------------------------- primitives ----

def rms_norm(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def rope_rotate_half(x, positions, theta):
    """HF Llama RoPE. x: [T, n_heads, d]; pairs (i, i + d/2)."""
    d = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)            # [d/2]
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, d/2]
    ang = np.concatenate([ang, ang], axis=-1)[:, None, :]                      # [T, 1, d]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rotated = np.concatenate([-x2, x1], axis=-1)
    return x * np.cos(ang).astype(x.dtype) + rotated * np.sin(ang).astype(x.dtype)


def causal_gqa_attention(x, w, prefix, n_head, n_kv, positions, theta):
    """Softmax attention, causal over the rows of x (row i sees rows 0..i). x already normed."""
    T, H = x.shape
    d = H // n_head
    q = (x @ w[prefix + "q_proj.weight"].T).reshape(T, n_head, d)
    k = (x @ w[prefix + "k_proj.weight"].T).reshape(T, n_kv, d)
    v = (x @ w[prefix + "v_proj.weight"].T).reshape(T, n_kv, d)
    q = rope_rotate_half(q, positions, theta)
    k = rope_rotate_half(k, positions, theta)
    group = n_head // n_kv  # query head h uses kv head h // group
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
    scores = scores + np.triu(np.full((T, T), -np.inf, dtype=x.dtype), k=1)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", probs, v).reshape(T, H)
    return out @ w[prefix + "o_proj.weight"].T


def swiglu_mlp(x, w, prefix):
    gate = x @ w[prefix + "gate_proj.weight"].T
    up = x @ w[prefix + "up_proj.weight"].T
    return (gate / (1.0 + np.exp(-gate)) * up) @ w[prefix + "down_proj.weight"].T


def decoder_layer(z, w, p, cfg, positions, theta, input_norm=True):
    """Pre-norm LLaMA layer; input_norm=False is EAGLE-1's layer 0 (no input RMSNorm)."""
    eps = cfg["rms_norm_eps"]
    a_in = rms_norm(z, w[p + "input_layernorm.weight"], eps) if input_norm else z
    z = z + causal_gqa_attention(a_in, w, p + "self_attn.", cfg["num_attention_heads"],
                                 cfg["num_key_value_heads"], positions, theta)
    return z + swiglu_mlp(rms_norm(z, w[p + "post_attention_layernorm.weight"], eps), w, p + "mlp.")


# ------------------------------------------------------------------- base ----

def base_forward(cfg, w, token_ids):
    """Returns (u [P,H] pre-final-norm, h [P,H] post-norm, logits [P,V])."""
    T = len(token_ids)
    z = w["model.embed_tokens.weight"][np.asarray(token_ids)]
    positions = np.arange(T)
    for layer in range(cfg["num_hidden_layers"]):
        z = decoder_layer(z, w, f"model.layers.{layer}.", cfg, positions, cfg["rope_theta"])
    h = rms_norm(z, w["model.norm.weight"], cfg["rms_norm_eps"])
    return z, h, h @ w["lm_head.weight"].T


# ---------------------------------------------------------------- clover2 ----

def attention_decoder(x, y, w, p, n_head, eps):
    """AD(x, y) = x + concat_h(cos(q_h, k_h) * v_h); q from RMSNorm(x), k/v from y."""
    xn = rms_norm(x, w[p + "input_layernorm.weight"], eps)
    q = xn @ w[p + "q.weight"].T + w[p + "q.bias"]
    k = y @ w[p + "k.weight"].T + w[p + "k.bias"]
    v = y @ w[p + "v.weight"].T + w[p + "v.bias"]
    shape = x.shape[:-1] + (n_head, x.shape[-1] // n_head)
    q, k, v = q.reshape(shape), k.reshape(shape), v.reshape(shape)
    qn = np.maximum(np.linalg.norm(q, axis=-1), eps)
    kn = np.maximum(np.linalg.norm(k, axis=-1), eps)
    cos = np.sum(q * k, axis=-1) / (qn * kn)
    return x + (cos[..., None] * v).reshape(x.shape)


def clover2_chain(hcfg, w, E, W_draft, draft_ids, u, pair_tokens, forced=None):
    """Logits per depth; forced = chain tokens to feed instead of the argmaxes (diagnostics)."""
    eps, nh = hcfg["rms_norm_eps"], hcfg["num_attention_heads"]
    z = attention_decoder(u, E[pair_tokens], w, "clover_head_mlp_rnn.", nh, eps)   # AD0
    positions = np.arange(len(pair_tokens))
    for layer in range(hcfg["clover"]["num_layers"]):
        z = decoder_layer(z, w, f"layers.{layer}.", hcfg, positions, DRAFT_ROPE_BASE)
    s = rms_norm(z[-1], w["clover_norm.weight"], eps)                              # s0
    g_head = w["clover_head_norm.weight"]
    f = rms_norm(w["clover_head_mlp.weight"] @ s + w["clover_head_mlp.bias"], g_head, eps)
    depths = [W_draft @ f]
    for d in range(1, DEPTHS):
        c = int(draft_ids[np.argmax(depths[-1])]) if forced is None else forced[d - 1]
        e = E[c]
        s = attention_decoder(s, e, w, "clover_head_mlp_rnn2.", nh, eps)             # AD1
        fc = w["clover_head_mlp2.weight"] @ np.concatenate([s, e]) + w["clover_head_mlp2.bias"]
        depths.append(W_draft @ rms_norm(fc, g_head, eps))
    return depths


# ------------------------------------------------------------------ eagle ----

def eagle_chain(hcfg, w, E, W_draft, draft_ids, h, pair_tokens, forced=None):
    P = len(pair_tokens)
    feats, toks = list(h), list(pair_tokens)
    depths = []
    for d in range(DEPTHS):
        # rows 0..P-1 = prompt pairs; row P+j = chain node j (parent f_hat, c_j) at position P+j
        x = np.concatenate([E[np.asarray(toks)], np.stack(feats)], axis=1)  # [e ; f]
        x = x @ w["fc.weight"].T + w["fc.bias"]
        f_hat = decoder_layer(x, w, "layers.0.", hcfg, np.arange(len(toks)), DRAFT_ROPE_BASE,
                              input_norm=False)[-1]
        depths.append(W_draft @ f_hat)
        feats.append(f_hat)
        toks.append(int(draft_ids[np.argmax(depths[-1])]) if forced is None else forced[d])
    assert len(toks) == P + DEPTHS
    return depths


# ---------------------------------------------------------------- fixture ----

def summarize(depths, draft_ids):
    chain, rows = [], []
    for logits in depths:
        order = np.argsort(-logits, kind="stable")[:TOP_K]
        m = logits.max()
        rows.append({
            "top_ids": [int(draft_ids[i]) for i in order],
            "top_logits": [round(float(logits[i]), 5) for i in order],
            "logsumexp": round(float(m + np.log(np.exp(logits - m).sum())), 5),
        })
        chain.append(int(draft_ids[order[0]]))
    return {"chain": chain, "depths": rows}


def render_chat(tokenizer_config, messages):
    import jinja2
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as HF transformers does
    return env.from_string(tokenizer_config["chat_template"]).render(
        messages=messages, add_generation_prompt=True)


def check_base(cfg, w, path):
    """Compare this bf16-safetensors forward with the Q4_1-GGUF reference fixture."""
    ref = json.load(open(path))
    agree = total = 0
    max_top1 = max_lse = 0.0
    diffs = []
    for case in ref["cases"]:
        _, _, logits = base_forward(cfg, w, case["token_ids"])
        for t, pos in enumerate(case["positions"]):
            total += 1
            agree += int(np.argmax(logits[t]) == pos["top_ids"][0])
            ours = logits[t][pos["top_ids"]]
            d = np.abs(ours - np.asarray(pos["top_logits"]))
            diffs.append(d.mean())
            max_top1 = max(max_top1, float(d[0]))
            m = logits[t].max()
            lse = m + np.log(np.exp(logits[t] - m).sum())
            max_lse = max(max_lse, abs(float(lse) - pos["logsumexp"]))
    print(f"base self-check vs {os.path.basename(path)}: top-1 agreement {agree}/{total}, "
          f"mean |dlogit| over the 32 top ids {np.mean(diffs):.4f}, "
          f"max |dlogit| at top-1 {max_top1:.4f}, max |dlogsumexp| {max_lse:.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="~/.cache/clover-engine/models/SmolLM2-135M-Instruct")
    ap.add_argument("--heads-dir", default="assets/smollm2-135m-instruct")
    ap.add_argument("--out", default="tests/fixtures/reference_heads.json")
    ap.add_argument("--check-base", help="reference_logits.json to compare the base forward with")
    args = ap.parse_args()
    model_dir = os.path.expanduser(args.model_dir)

    from tokenizers import Tokenizer
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    tok_cfg = json.load(open(os.path.join(model_dir, "tokenizer_config.json")))
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    model_path = os.path.join(model_dir, "model.safetensors")
    w = read_safetensors(model_path)
    if "lm_head.weight" not in w:  # tied embeddings
        w["lm_head.weight"] = w["model.embed_tokens.weight"]
    W_lm = w["lm_head.weight"]
    E = w["model.embed_tokens.weight"]  # = W_lm (tied): Clover's E and EAGLE's Emb coincide here

    if args.check_base:
        check_base(cfg, w, args.check_base)

    heads = {}
    for kind in ("clover2", "eagle"):
        d = os.path.join(args.heads_dir, kind)
        hcfg = json.load(open(os.path.join(d, "config.json")))
        if float(hcfg.get("rope_theta", DRAFT_ROPE_BASE)) != DRAFT_ROPE_BASE:
            print(f"note: {kind} config rope_theta {hcfg['rope_theta']} ignored (spec: base 10000)")
        draft_ids = np.asarray(json.load(open(os.path.join(d, "draft_vocab.json")))["token_ids"])
        heads[kind] = {
            "cfg": hcfg, "w": read_safetensors(os.path.join(d, "model.safetensors")),
            "draft_ids": draft_ids, "W_draft": W_lm[draft_ids],
            "sha256": sha256(os.path.join(d, "model.safetensors")),
            "vocab_sha256": sha256(os.path.join(d, "draft_vocab.json")),
        }

    def raw(text):
        return tok.encode(text, add_special_tokens=False).ids

    def chat(question):
        return raw(render_chat(tok_cfg, [{"role": "user", "content": question}]))

    cases = [
        ("english_prose", raw("The old lighthouse keeper climbed the spiral stairs every evening to "
                              "light the lamp, and from the top he could see")),
        ("python_code", raw("def fibonacci(n):\n    if n < 2:\n        return n\n    return")),
        ("chat_capital", chat("What is the capital of France?")),
        ("chat_photosynthesis", chat("Explain in two sentences how photosynthesis works.")),
    ]

    out_cases = []
    for name, ids in cases:
        u, h, logits = base_forward(cfg, w, ids)
        last = logits[-1]
        root = int(np.argmax(last))
        root_top = np.argsort(-last, kind="stable")[:ROOT_TOP_K]
        pair_tokens = np.asarray(ids[1:] + [root])  # x_{t+1}, t = 0..P-1, x_P = root
        case = {"name": name, "token_ids": [int(i) for i in ids], "root": root,
                "root_top_ids": [int(i) for i in root_top],
                "root_top_logits": [round(float(last[i]), 5) for i in root_top]}
        for kind, hd in heads.items():
            fn = clover2_chain if kind == "clover2" else eagle_chain
            feats = u if kind == "clover2" else h
            depths = fn(hd["cfg"], hd["w"], E, hd["W_draft"], hd["draft_ids"], feats, pair_tokens)
            case[kind] = summarize(depths, hd["draft_ids"])
        out_cases.append(case)
        print(f"[{name}] P={len(ids)} root {tok.decode([root])!r}  base top: "
              f"{[tok.decode([int(i)]) for i in root_top[:4]]}")
        for kind in heads:
            chain = case[kind]["chain"]
            print(f"    {kind:8s} chain {chain}  {[tok.decode([c]) for c in chain]}  "
                  f"-> {tok.decode([root] + chain)!r}")

    fixture = {
        "source": "tools/reference_heads.py: independent numpy f64 reference (written from "
                  "spec/clover2.md and spec/eagle.md) of the shipped draft heads on the bf16 "
                  "HF-layout base model; token ids from Python tokenizers on tokenizer.json",
        "conventions": __doc__.split("What is fed (also written into the fixture as \"conventions\"):\n")[1]
                              .split("\nUsage:")[0].strip(),
        "model": {"path": "~/.cache/clover-engine/models/SmolLM2-135M-Instruct/model.safetensors",
                  "sha256": sha256(model_path)},
        "heads": {k: v["sha256"] for k, v in heads.items()},
        "draft_vocab_sha256": {k: v["vocab_sha256"] for k, v in heads.items()},
        "depths": DEPTHS, "top_k": TOP_K,
        "cases": out_cases,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    sys.exit(main())
