#!/usr/bin/python3
"""Independent float64 numpy reference of Hugging Face transformers decoder-only models.

Supported architectures (config.json "architectures"[0]):
    LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (q/k/v bias), Qwen3ForCausalLM (q/k norm)
    and, as an extra used for cross-checks, the sparse-MoE variants MixtralForCausalLM and
    Qwen3MoeForCausalLM (router softmax -> top-k experts -> renormalise (Mixtral always, Qwen3-MoE when
    norm_topk_prob) -> weighted sum of SwiGLU experts)

Semantics (as in transformers' modeling_llama / _mistral / _qwen2 / _qwen3):
    x = embed_tokens[ids]
    per layer:
        h = RMSNorm(x; input_layernorm)                 RMSNorm(x) = x / sqrt(mean(x^2) + eps) * w
        q, k, v = h Wq^T (+bq), h Wk^T (+bk), h Wv^T (+bv)   (a bias is used whenever the checkpoint has it)
        Qwen3: q, k = RMSNorm per head over head_dim (q_norm / k_norm weights, shape [head_dim])
        RoPE, rotate_half convention: x*cos + rotate_half(x)*sin, rotate_half(x) = [-x2, x1],
            angle(pos, j) = pos * inv_freq[j mod d/2], inv_freq[i] = 1 / theta^(2i/d)
            rope_scaling: none | linear (inv_freq / factor == positions / factor) |
                          llama3 (Llama 3.1 frequency-dependent scaling)
        GQA: kv head j // (n_heads / n_kv_heads) serves query head j (repeat_kv)
        causal softmax(q k^T / sqrt(head_dim)) v   (Mistral: + sliding window if configured)
        x = x + attn Wo^T (+bo)
        h = RMSNorm(x; post_attention_layernorm)
        x = x + (silu(h Wg^T) * (h Wu^T)) Wd^T
    logits = RMSNorm(x; model.norm) lm_head^T     (lm_head = embed_tokens when tied / absent)

No KV cache: every call recomputes the whole sequence, so this does not share any design with the
engine. Greedy decoding = argmax (lowest id on exact ties), full recompute per step.

CLI:
    reference.py MODEL_DIR --prompt 1,403,407,261,378 [--greedy 32] [--stop-ids 1,2]
                 [--logits full|top5|none] [--out result.json]
"""

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_np import Checkpoint  # noqa: E402

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
             "MixtralForCausalLM", "Qwen3MoeForCausalLM")


def rms_norm(x, w, eps):
    """x / sqrt(mean(x^2, last axis) + eps) * w"""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1.0 + np.exp(-x))


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope_inv_freq(head_dim, theta, rope_scaling):
    """Inverse frequencies [head_dim/2] including rope_scaling (none / linear / llama3)."""
    inv_freq = 1.0 / (float(theta) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if not rope_scaling:
        return inv_freq
    kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if kind in (None, "default"):
        return inv_freq
    factor = float(rope_scaling["factor"])
    if kind == "linear":
        # positions / factor  <=>  inv_freq / factor
        return inv_freq / factor
    if kind == "llama3":
        low_ff = float(rope_scaling["low_freq_factor"])
        high_ff = float(rope_scaling["high_freq_factor"])
        old_ctx = float(rope_scaling["original_max_position_embeddings"])
        low_freq_wavelen = old_ctx / low_ff    # wavelengths above this: divide the frequency by factor
        high_freq_wavelen = old_ctx / high_ff  # wavelengths below this: keep
        wavelen = 2.0 * math.pi / inv_freq
        out = np.empty_like(inv_freq)
        for i, (f, wl) in enumerate(zip(inv_freq, wavelen)):
            if wl < high_freq_wavelen:
                out[i] = f
            elif wl > low_freq_wavelen:
                out[i] = f / factor
            else:  # medium band: interpolate between f/factor and f
                smooth = (old_ctx / wl - low_ff) / (high_ff - low_ff)
                out[i] = (1.0 - smooth) * f / factor + smooth * f
        return out
    raise NotImplementedError(f"rope_scaling type {kind!r} not supported by the reference")


def rope_cos_sin(positions, inv_freq):
    """cos, sin tables [T, head_dim] (the d/2 angles duplicated, as in HF: cat(freqs, freqs))."""
    ang = np.outer(np.asarray(positions, dtype=np.float64), inv_freq)
    ang = np.concatenate([ang, ang], axis=-1)
    return np.cos(ang), np.sin(ang)


class Model:
    def __init__(self, model_dir, cache_weights=None):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.config = c = json.load(f)
        arch = (c.get("architectures") or ["?"])[0]
        if arch not in SUPPORTED:
            raise NotImplementedError(f"architecture {arch} not supported (supported: {SUPPORTED})")
        self.arch = arch
        if c.get("hidden_act", "silu") != "silu":
            raise NotImplementedError(f"hidden_act {c['hidden_act']}")
        self.H = c["hidden_size"]
        self.L = c["num_hidden_layers"]
        self.nh = c["num_attention_heads"]
        self.nkv = c.get("num_key_value_heads") or self.nh
        self.hd = c.get("head_dim") or self.H // self.nh
        self.V = c["vocab_size"]
        self.eps = float(c["rms_norm_eps"])
        self.tied = c.get("tie_word_embeddings", False)
        self.qk_norm = arch in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM")
        # sliding window: Mistral/Mixtral use it whenever set; Qwen2/3 only with use_sliding_window (unsupported)
        self.sliding_window = c.get("sliding_window") if arch in ("MistralForCausalLM", "MixtralForCausalLM") else None
        if arch.startswith("Qwen") and c.get("use_sliding_window"):
            raise NotImplementedError("use_sliding_window=true is not supported by the reference")
        self.inv_freq = rope_inv_freq(self.hd, c.get("rope_theta", 10000.0), c.get("rope_scaling"))
        self.ckpt = Checkpoint(model_dir)
        nparams = sum(int(np.prod(self.ckpt.shape(n))) for n in self.ckpt.names())
        # keep float64 copies for small models; convert on every use for big ones (memory)
        self.cache = {} if (cache_weights if cache_weights is not None else nparams <= 50_000_000) else None
        self._check_shapes()

    def w(self, name):
        if self.cache is not None:
            if name not in self.cache:
                self.cache[name] = self.ckpt.get(name)
            return self.cache[name]
        return self.ckpt.get(name)

    def _check_shapes(self):
        H, hd, nh, nkv = self.H, self.hd, self.nh, self.nkv
        exp = {"model.embed_tokens.weight": (self.V, H), "model.norm.weight": (H,)}
        for i in range(self.L):
            p = f"model.layers.{i}."
            exp[p + "self_attn.q_proj.weight"] = (nh * hd, H)
            exp[p + "self_attn.k_proj.weight"] = (nkv * hd, H)
            exp[p + "self_attn.v_proj.weight"] = (nkv * hd, H)
            exp[p + "self_attn.o_proj.weight"] = (H, nh * hd)
            exp[p + "input_layernorm.weight"] = (H,)
            exp[p + "post_attention_layernorm.weight"] = (H,)
            if not self.is_moe_layer(i):
                exp[p + "mlp.gate_proj.weight"] = (self.intermediate(), H)
                exp[p + "mlp.up_proj.weight"] = (self.intermediate(), H)
                exp[p + "mlp.down_proj.weight"] = (H, self.intermediate())
            if self.qk_norm:
                exp[p + "self_attn.q_norm.weight"] = (hd,)
                exp[p + "self_attn.k_norm.weight"] = (hd,)
        for n, s in exp.items():
            if n not in self.ckpt:
                raise ValueError(f"missing tensor {n}")
            if self.ckpt.shape(n) != s:
                raise ValueError(f"tensor {n}: shape {self.ckpt.shape(n)}, expected {s}")
        if not self.tied and "lm_head.weight" not in self.ckpt:
            raise ValueError("tie_word_embeddings is false but lm_head.weight is missing")

    def intermediate(self):
        return self.config["intermediate_size"]

    def is_moe_layer(self, i):
        c = self.config
        if self.arch == "MixtralForCausalLM":
            return True
        if self.arch == "Qwen3MoeForCausalLM":
            return (i not in (c.get("mlp_only_layers") or [])) and c.get("num_experts", 0) > 0 \
                and (i + 1) % c.get("decoder_sparse_step", 1) == 0
        return False

    def mlp(self, i, h):
        """SwiGLU MLP of layer i (dense, or sparse MoE for Mixtral / Qwen3-MoE)."""
        p = f"model.layers.{i}."
        if not self.is_moe_layer(i):
            return self.linear(silu(self.linear(h, p + "mlp.gate_proj")) * self.linear(h, p + "mlp.up_proj"),
                               p + "mlp.down_proj")
        c = self.config
        if self.arch == "MixtralForCausalLM":
            pre, n_exp, k, renorm = p + "block_sparse_moe.", c["num_local_experts"], c["num_experts_per_tok"], True
            names = ("w1", "w3", "w2")  # gate, up, down
        else:
            pre, n_exp, k, renorm = p + "mlp.", c["num_experts"], c["num_experts_per_tok"], c.get("norm_topk_prob", False)
            names = ("gate_proj", "up_proj", "down_proj")
        router = h @ self.w(pre + "gate.weight").T                        # [T, E]
        router = np.exp(router - router.max(axis=-1, keepdims=True))
        router /= router.sum(axis=-1, keepdims=True)                      # softmax over experts
        out = np.zeros_like(h)
        for t in range(h.shape[0]):
            top = np.lexsort((np.arange(n_exp), -router[t]))[:k]          # k best (ties: lower id)
            wts = router[t, top] / (router[t, top].sum() if renorm else 1.0)
            for e, wt in zip(top, wts):
                ep = pre + f"experts.{e}."
                g = self.linear(h[t], ep + names[0])
                u = self.linear(h[t], ep + names[1])
                out[t] += wt * self.linear(silu(g) * u, ep + names[2])
        return out

    def linear(self, x, name):
        """x W^T (+ b if the checkpoint has name.bias)."""
        y = x @ self.w(name + ".weight").T
        if name + ".bias" in self.ckpt:
            y = y + self.w(name + ".bias")
        return y

    def forward(self, ids):
        """Logits [T, vocab] (float64) for token ids at positions 0..T-1."""
        ids = np.asarray(ids, dtype=np.int64)
        T = len(ids)
        nh, nkv, hd = self.nh, self.nkv, self.hd
        x = self.w("model.embed_tokens.weight")[ids]                      # [T, H]
        cos, sin = rope_cos_sin(np.arange(T), self.inv_freq)              # [T, hd]
        cos, sin = cos[:, None, :], sin[:, None, :]                       # broadcast over heads
        qi = np.arange(T)[:, None]
        ki = np.arange(T)[None, :]
        allowed = ki <= qi                                                # causal
        if self.sliding_window:
            allowed &= ki > qi - int(self.sliding_window)
        for i in range(self.L):
            p = f"model.layers.{i}."
            h = rms_norm(x, self.w(p + "input_layernorm.weight"), self.eps)
            q = self.linear(h, p + "self_attn.q_proj").reshape(T, nh, hd)
            k = self.linear(h, p + "self_attn.k_proj").reshape(T, nkv, hd)
            v = self.linear(h, p + "self_attn.v_proj").reshape(T, nkv, hd)
            if self.qk_norm:
                q = rms_norm(q, self.w(p + "self_attn.q_norm.weight"), self.eps)
                k = rms_norm(k, self.w(p + "self_attn.k_norm.weight"), self.eps)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            rep = nh // nkv
            k = np.repeat(k, rep, axis=1)                                 # [T, nh, hd]: head j <- kv j//rep
            v = np.repeat(v, rep, axis=1)
            scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)      # [nh, T, T]
            scores = np.where(allowed[None], scores, -np.inf)
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            attn = np.einsum("hqk,khd->qhd", probs, v).reshape(T, nh * hd)
            x = x + self.linear(attn, p + "self_attn.o_proj")
            h = rms_norm(x, self.w(p + "post_attention_layernorm.weight"), self.eps)
            x = x + self.mlp(i, h)
        x = rms_norm(x, self.w("model.norm.weight"), self.eps)
        head = "lm_head.weight" if (not self.tied and "lm_head.weight" in self.ckpt) else "model.embed_tokens.weight"
        return x @ self.w(head).T

    def greedy(self, prompt, n, stop_ids=()):
        """Greedy continuation: up to n new ids (stops after emitting a stop id), full recompute.
        Returns (ids, margins) where margins[i] = top1 - top2 logit at that step."""
        ids = list(prompt)
        out, margins = [], []
        for _ in range(n):
            logits = self.forward(ids)[-1]
            nxt = int(np.argmax(logits))
            top2 = np.partition(logits, -2)[-2:]
            margins.append(float(top2[1] - top2[0]))
            out.append(nxt)
            ids.append(nxt)
            if nxt in stop_ids:
                break
        return out, margins


def topk(logits_row, k):
    """(ids, values) of the k largest logits, descending (ties: lower id first)."""
    order = np.lexsort((np.arange(len(logits_row)), -logits_row))[:k]
    return [int(i) for i in order], [float(logits_row[i]) for i in order]


def sig6(x):
    """Round to 6 significant digits (as a float)."""
    return float(f"{x:.6g}")


def parse_ids(s):
    return [int(t) for t in s.replace(" ", "").split(",") if t != ""]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--prompt", required=True, help="comma-separated token ids (include BOS yourself)")
    ap.add_argument("--greedy", type=int, default=0, help="number of greedy tokens to generate")
    ap.add_argument("--stop-ids", default="", help="comma-separated ids that end greedy decoding")
    ap.add_argument("--logits", default="full", help="full | topK (e.g. top5) | none  (per prompt position)")
    ap.add_argument("--out", help="write JSON here instead of stdout")
    args = ap.parse_args()

    model = Model(args.model_dir)
    prompt = parse_ids(args.prompt)
    for t in prompt:
        if not 0 <= t < model.V:
            ap.error(f"token id {t} out of range [0, {model.V})")
    logits = model.forward(prompt)
    res = {"model_dir": args.model_dir, "architecture": model.arch, "prompt_ids": prompt}
    if args.logits == "full":
        res["logits"] = [[sig6(v) for v in row] for row in logits]
    elif args.logits.startswith("top"):
        k = int(args.logits[3:])
        res["logits_top"] = []
        for pos, row in enumerate(logits):
            ids, vals = topk(row, k)
            res["logits_top"].append({"position": pos, "ids": ids, "logits": [sig6(v) for v in vals]})
    if args.greedy:
        ids, margins = model.greedy(prompt, args.greedy, set(parse_ids(args.stop_ids)))
        res["greedy_ids"] = ids
        res["greedy_min_margin"] = min(margins)
    text = json.dumps(res, separators=(",", ":")) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
