#!/usr/bin/env python3
"""Independent numpy reference forward of a llama-architecture GGUF model.

Written from scratch and sharing nothing with the Rust engine: weights are read
straight from the GGUF with `gguf.GGUFReader` + `gguf.quants.dequantize`, so the
engine's importer (un-permutation of q/k rows, bf16 conversion) is NOT used.

llama.cpp's converter permutes the q/k rows into the interleaved RoPE layout, so
here RoPE is applied the GGML "normal" / GPT-J way on adjacent pairs
(x[2i], x[2i+1]). The engine un-permutes and uses rotate-half; if both agree,
that un-permutation is checked independently.

Usage (sanity check, greedy answer to a chat-templated question):
    python3 tools/reference_forward.py --gguf PATH [--tokenizer tokenizer.json]
"""
import argparse
import sys

import numpy as np

try:
    import gguf
except ImportError:  # clear error instead of a traceback deep inside
    sys.exit("error: python package 'gguf' missing; pip install -r tools/requirements.txt")


# ---------------------------------------------------------------- weights ----

def field_value(reader, key, default=None):
    """Scalar/string/array value of a GGUF metadata key (None if absent)."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_config(reader):
    """Hyper-parameters from the `llama.*` metadata keys."""
    arch = field_value(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"reference supports arch 'llama' only, GGUF says {arch!r}")
    g = lambda k: field_value(reader, f"llama.{k}")
    n_embd, n_head = int(g("embedding_length")), int(g("attention.head_count"))
    return {
        "n_layer": int(g("block_count")),
        "n_embd": n_embd,
        "n_head": n_head,
        "n_head_kv": int(g("attention.head_count_kv")),
        "head_dim": n_embd // n_head,
        "n_ff": int(g("feed_forward_length")),
        "rope_theta": float(g("rope.freq_base")),
        "rms_eps": float(g("attention.layer_norm_rms_epsilon")),
    }


def round_to_bf16(x):
    """Round f32 -> bf16 (round-to-nearest-even) -> f32, like a bf16 safetensors export."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # add 0x7FFF plus the lowest kept bit, then truncate: round half to even
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def load_weights(gguf_path, bf16=False):
    """Dequantize every tensor to f32 numpy arrays in HF orientation ([out, in]).

    bf16=True rounds every tensor to bf16 afterwards, simulating the engine's
    bf16 import, to measure how much of the logit error budget that rounding costs.
    """
    reader = gguf.GGUFReader(gguf_path)
    cfg = read_config(reader)
    weights = {}
    for t in reader.tensors:
        # dequantize returns the row-major array with GGUF dims reversed: [rows, cols]
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])
        weights[t.name] = round_to_bf16(w) if bf16 else w
    if "output.weight" not in weights:  # tied embeddings: embedding table is the lm_head
        weights["output.weight"] = weights["token_embd.weight"]
    return cfg, weights, reader


# ---------------------------------------------------------------- forward ----

def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_interleaved(x, theta):
    """GPT-J style RoPE on adjacent pairs. x: [T, n_heads, head_dim], position t = row t."""
    T, _, d = x.shape
    inv_freq = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)          # [d/2]
    ang = np.arange(T, dtype=np.float64)[:, None] * inv_freq[None, :]       # [T, d/2]
    cos = np.cos(ang)[:, None, :].astype(x.dtype)
    sin = np.sin(ang)[:, None, :].astype(x.dtype)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def attention(x, w, cfg, layer):
    """Causal grouped-query self-attention for one layer. x: normed [T, n_embd]."""
    T = x.shape[0]
    hd, nh, nkv = cfg["head_dim"], cfg["n_head"], cfg["n_head_kv"]
    p = f"blk.{layer}."
    q = (x @ w[p + "attn_q.weight"].T).reshape(T, nh, hd)
    k = (x @ w[p + "attn_k.weight"].T).reshape(T, nkv, hd)
    v = (x @ w[p + "attn_v.weight"].T).reshape(T, nkv, hd)
    q, k = rope_interleaved(q, cfg["rope_theta"]), rope_interleaved(k, cfg["rope_theta"])
    group = nh // nkv  # query head h reads kv head h // group
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
    scores = scores + np.triu(np.full((T, T), -np.inf, dtype=x.dtype), k=1)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", probs, v).reshape(T, nh * hd)
    return out @ w[p + "attn_output.weight"].T


def mlp(x, w, layer):
    p = f"blk.{layer}."
    gate = x @ w[p + "ffn_gate.weight"].T
    up = x @ w[p + "ffn_up.weight"].T
    silu = gate / (1.0 + np.exp(-gate))
    return (silu * up) @ w[p + "ffn_down.weight"].T


def forward(cfg, weights, token_ids, dtype=np.float32):
    """Logits [T, V] for every position of token_ids (no KV cache: recomputed in full)."""
    w = weights if dtype == np.float32 else {k: v.astype(dtype) for k, v in weights.items()}
    eps = cfg["rms_eps"]
    h = w["token_embd.weight"][np.asarray(token_ids)].astype(dtype)
    for layer in range(cfg["n_layer"]):
        h = h + attention(rms_norm(h, w[f"blk.{layer}.attn_norm.weight"], eps), w, cfg, layer)
        h = h + mlp(rms_norm(h, w[f"blk.{layer}.ffn_norm.weight"], eps), w, layer)
    h = rms_norm(h, w["output_norm.weight"], eps)
    return h @ w["output.weight"].T


def greedy_generate(cfg, weights, token_ids, max_new, stop_ids=()):
    """Greedy decode; returns only the new token ids (stops after a stop id)."""
    ids, new = list(token_ids), []
    for _ in range(max_new):
        nxt = int(np.argmax(forward(cfg, weights, ids)[-1]))
        ids.append(nxt)
        new.append(nxt)
        if nxt in stop_ids:
            break
    return new


# ------------------------------------------------------------- tokenizer ----

def render_chat(reader, messages, add_generation_prompt=True):
    """Render the GGUF's own `tokenizer.chat_template` with jinja2."""
    try:
        import jinja2
    except ImportError:
        sys.exit("error: python package 'jinja2' missing; pip install -r tools/requirements.txt")
    template = field_value(reader, "tokenizer.chat_template")
    if template is None:
        raise ValueError("GGUF has no tokenizer.chat_template")
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as HF transformers does
    return env.from_string(template).render(messages=messages,
                                            add_generation_prompt=add_generation_prompt)


def tokenizer_from_gguf(reader):
    """Byte-level BPE tokenizer built from GGUF metadata (fallback / cross-check only).

    Mirrors llama.cpp's 'smollm' pre-tokenizer: individual digits, then ByteLevel regex.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    pre = field_value(reader, "tokenizer.ggml.pre")
    if pre != "smollm":
        raise ValueError(f"tokenizer_from_gguf supports pre='smollm' only, got {pre!r}")
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    types = field_value(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field_value(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    # type 3 = control (special), type 4 = user-defined (added, not special)
    added = [AddedToken(t, special=(ty == 3), normalized=False)
             for t, ty in zip(tokens, types) if ty in (3, 4)]
    tok.add_tokens(added)
    return tok


def load_tokenizer(path, reader):
    """Engine tokenizer.json if given, else one built from the GGUF."""
    if path:
        from tokenizers import Tokenizer
        return Tokenizer.from_file(path)
    return tokenizer_from_gguf(reader)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="llama-arch GGUF file")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: build from GGUF metadata)")
    ap.add_argument("--prompt", default="What is the capital of France?")
    ap.add_argument("--max-new", type=int, default=12)
    ap.add_argument("--bf16", action="store_true", help="round all weights to bf16 first")
    args = ap.parse_args()
    cfg, weights, reader = load_weights(args.gguf, bf16=args.bf16)
    tok = load_tokenizer(args.tokenizer, reader)
    text = render_chat(reader, [{"role": "user", "content": args.prompt}])
    ids = tok.encode(text, add_special_tokens=False).ids
    eos = int(field_value(reader, "tokenizer.ggml.eos_token_id"))
    new = greedy_generate(cfg, weights, ids, args.max_new, stop_ids=(eos,))
    print(f"prompt tokens: {len(ids)}; new ids: {new}")
    print(repr(tok.decode(new, skip_special_tokens=True)))


if __name__ == "__main__":
    main()
