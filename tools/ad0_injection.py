#!/usr/bin/env python3
"""How strongly a Clover-2 head's AD0 cell injects the next token into the base feature.

AD0(u, y) = u + concat_h(cos(q_h, k_h) * v_h), q from RMSNorm(u), k and v from y = E[x_{t+1}]
(clover2.md section 3). This prints, per head file, the median over positions of
|injection| / |u| on a few gen-data conversations, the rms of AD0's Wv (the figures behind
`distill --lr-scale` / `--init-scale` in README.md, "Trained heads"), and per attention head the
mean |cos(q_h, k_h)|: how open the cosine gate is (about 0.1 for unrelated vectors of this size).

Independent of the engine: numpy only, safetensors read by hand (8-byte header length, JSON
header, raw little-endian data).

Usage:
    python3 tools/ad0_injection.py --model MODEL_DIR --data GEN_DATA_DIR HEAD.safetensors [...]
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


def read_safetensors(path, wanted):
    """The tensors of `path` whose names start with one of `wanted`, as numpy arrays (bf16 widened)."""
    out = {}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        for name, meta in header.items():
            if name == "__metadata__" or not any(name.startswith(w) for w in wanted):
                continue
            start, end = meta["data_offsets"]
            f.seek(8 + n + start)
            raw = f.read(end - start)
            if meta["dtype"] == "BF16":
                values = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                values = np.frombuffer(raw, DTYPES[meta["dtype"]])
            out[name] = values.reshape(meta["shape"]).astype(np.float32 if values.dtype.kind == "f" else values.dtype)
    return out


def rmsnorm(x, gain, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * gain


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="base model folder (config.json, model.safetensors)")
    p.add_argument("--data", required=True, help="gen-data folder (shard-00000.safetensors)")
    p.add_argument("--conversations", type=int, default=4, help="conversations of the first shard")
    p.add_argument("heads", nargs="+", help="Clover-2 head safetensors files")
    a = p.parse_args()

    config = json.load(open(os.path.join(a.model, "config.json")))
    eps, heads = config["rms_norm_eps"], config["num_attention_heads"]
    base = read_safetensors(os.path.join(a.model, "model.safetensors"), ["lm_head.", "model.embed_tokens."])
    emb = base.get("lm_head.weight", base.get("model.embed_tokens.weight"))  # E = rows of lm_head
    shard = read_safetensors(os.path.join(a.data, "shard-00000.safetensors"), ["c"])
    ids = sorted({k.split(".")[0] for k in shard}, key=lambda c: int(c[1:]))[: a.conversations]
    if not ids:
        sys.exit(f"error: no conversation in {a.data}/shard-00000.safetensors")

    for path in a.heads:
        w = read_safetensors(path, ["clover_head_mlp_rnn."])
        if not w:
            sys.exit(f"error: {path} has no clover_head_mlp_rnn.* tensors (not a Clover-2 head)")
        g = lambda n: w["clover_head_mlp_rnn." + n]
        ratios, gates = [], []
        for c in ids:
            u = shard[c + ".hidden_state_prenorm"][:-1]  # u_t pairs with x_{t+1}
            y = emb[shard[c + ".input_ids"][1:]]
            q = rmsnorm(u, g("input_layernorm.weight"), eps) @ g("q.weight").T + g("q.bias")
            k = y @ g("k.weight").T + g("k.bias")
            v = y @ g("v.weight").T + g("v.bias")
            t = len(u)
            qh, kh, vh = (m.reshape(t, heads, -1) for m in (q, k, v))
            cos = (qh * kh).sum(-1) / np.maximum(np.linalg.norm(qh, axis=-1), eps) / np.maximum(
                np.linalg.norm(kh, axis=-1), eps
            )
            gates.append(np.abs(cos))
            injected = (cos[:, :, None] * vh).reshape(t, -1)
            ratios.append(np.linalg.norm(injected, axis=1) / np.linalg.norm(u, axis=1))
        ratios = np.concatenate(ratios)
        print(f"{path}: median |injection|/|u| {np.median(ratios):.4f} over {len(ratios)} positions, "
              f"Wv rms {g('v.weight').std():.4f}")
        gate = np.concatenate(gates).mean(0)
        print(f"  mean |cos(q_h, k_h)| per head: {' '.join(f'{x:.2f}' for x in gate)}")


if __name__ == "__main__":
    main()
