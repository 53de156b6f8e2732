#!/usr/bin/python3
"""Write a Hugging Face checkpoint directory with random weights at a given architecture/shape.

Output (in --out):
    config.json, generation_config.json,
    model.safetensors                      (or model-0000k-of-0000n.safetensors + model.safetensors.index.json)
    tokenizer files copied from the preset's / --tokenizer-dir directory (+ a synthesized
    tokenizer_config.json / special_tokens_map.json for SentencePiece-only tokenizer dirs)

Weights are deterministic from --seed: every tensor has its own random stream seeded from
(seed, crc32(tensor name)), so a tensor's values do not depend on sharding, on the dtype's
write order or on which other tensors exist (changing num_hidden_layers keeps layers 0..k).
Values (float32 draws, then converted):
    linear weights / embeddings   std * N(0, 1)        (embed_tokens / lm_head use embed_std)
    biases                        bias_std * N(0, 1)
    RMSNorm weights (incl. q/k)   1 + norm_jitter * N(0, 1)
BF16 = round-to-nearest-even of the float32 bits; F16 = numpy's (round-to-nearest-even) cast.

Tensors are generated and written chunk by chunk (4 Mi elements), so memory stays small even for
multi-GB checkpoints.

Examples:
    tools/gen_checkpoint.py --preset tinyllama-1.1b --dtype BF16 --out models-gen/tinyllama-1.1b-bf16
    tools/gen_checkpoint.py --preset qwen3-0.6b --shard-size 500MB --out models-gen/qwen3-0.6b
    tools/gen_checkpoint.py --preset tiny-qwen3 --out /tmp/tq3 --override num_hidden_layers=3
    tools/gen_checkpoint.py --preset qwen3-30b-a3b-2l --out models-gen/qwen3-30b-a3b-2l-bf16
    tools/gen_checkpoint.py --list-presets

MoE architectures (mixtral, qwen2_moe, qwen3_moe) write a router and num_experts experts per sparse
layer under the Hugging Face names (block_sparse_moe.gate / experts.E.w1,w2,w3 for Mixtral;
mlp.gate / mlp.experts.E.{gate,up,down}_proj, plus shared_expert.* and shared_expert_gate for
Qwen2-MoE); layers in mlp_only_layers or off the decoder_sparse_step keep a dense MLP.
"""

import argparse
import json
import os
import re
import shutil
import sys
import time
import zlib

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shared_dir():
    """The read-only shared data dir: $DPSERVE_SHARED, <repo>/shared or <repo>/../shared."""
    for cand in (os.environ.get("DPSERVE_SHARED"), os.path.join(REPO_ROOT, "shared"),
                 os.path.join(REPO_ROOT, "..", "shared")):
        if cand and os.path.isdir(os.path.join(cand, "models")):
            return os.path.normpath(cand)
    return os.path.normpath(os.path.join(REPO_ROOT, "..", "shared"))


# Tokenizer sources (relative to the shared dir). "spm_llama": the dir only has a SentencePiece
# tokenizer.model, so tokenizer_config.json / special_tokens_map.json are synthesized.
TOKENIZERS = {
    "llama2-32k": {"dir": "models/llama2-tokenizer-32k", "spm_llama": True},
    "qwen3": {"dir": "tokenizers/qwen3"},
    "stories260K": {"dir": "models/stories260K"},
    "llama3": {"dir": "tokenizers/llama3"},
}
# Files copied from a tokenizer dir (whatever of these exists).
TOKENIZER_FILES = ["tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json"]

# ---------------------------------------------------------------------------------------------
# Presets. Keys: arch (llama | mistral | qwen2 | qwen3 | mixtral | qwen2_moe | qwen3_moe) +
# config.json fields + generator knobs (dtype, std, embed_std, bias_std, norm_jitter, router_std,
# tokenizer, tokenizer_files, num_shards).
# ---------------------------------------------------------------------------------------------
PRESETS = {
    # --- real shapes, for benchmarks (speed does not depend on the values) ---
    "tinyllama-1.1b": dict(
        arch="llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, vocab_size=32000, rope_theta=10000.0,
        rms_norm_eps=1e-5, max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, tokenizer="llama2-32k", dtype="F32", std=0.02),
    "qwen3-0.6b": dict(
        arch="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
        rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=40960,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
        generation_eos_token_id=[151645, 151643], pad_token_id=151643,
        tokenizer="qwen3", dtype="BF16", std=0.02),
    # SmolLM2-135M shapes. Its own tokenizer (49152 BPE) is not available offline, so the Llama-2
    # 32k SentencePiece tokenizer is used; vocab_size stays 49152 (real shape), ids >= 32000 are
    # simply never produced by the tokenizer (the model may still generate them: they decode to "").
    "smollm2-135m": dict(
        arch="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0,
        rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, tokenizer="llama2-32k", dtype="BF16", std=0.02),
    # Qwen3-30B-A3B's layer geometry (hidden 2048, 32 heads / 4 KV heads of 128, 128 experts of
    # 768 features, 8 active, real vocab) with 2 of its 48 layers, so that it fits a small machine
    # (3.7 GB in BF16); --override num_hidden_layers=N for more.
    "qwen3-30b-a3b-2l": dict(
        arch="qwen3_moe", hidden_size=2048, intermediate_size=6144, num_hidden_layers=2,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, vocab_size=151936,
        num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True,
        decoder_sparse_step=1, mlp_only_layers=[], rope_theta=1000000.0, rms_norm_eps=1e-6,
        max_position_embeddings=40960, tie_word_embeddings=False, bos_token_id=151643,
        eos_token_id=151645, generation_eos_token_id=[151645, 151643], pad_token_id=151643,
        tokenizer="qwen3", dtype="BF16", std=0.02, router_std=0.5),

    # --- tiny test models (tests/fixtures/models/), vocab 512 = stories260K tokenizer ---
    # Shapes are small (hidden 32) so that each fixture dir stays < 300 KB; std 0.3 makes the
    # attention patterns and logits clearly non-uniform (sensitive tests).
    "tiny-qwen2": dict(
        arch="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=512, rope_theta=1000000.0,
        rms_norm_eps=1e-6, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, tokenizer="stories260K", tiny=True, dtype="F32",
        std=0.3, embed_std=0.3, bias_std=0.2),
    "tiny-qwen3": dict(
        arch="qwen3", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512,
        rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, tokenizer="stories260K",
        tiny=True, dtype="F32", std=0.3, embed_std=0.3, norm_jitter=0.2),
    # head_dim 16 with theta 500000 and original_max_position_embeddings 64 puts the 8 RoPE
    # frequencies into all three llama3 bands (1 high-frequency kept, 1 smoothed, 6 divided by 8).
    "tiny-llama3-rope": dict(
        arch="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, vocab_size=512, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        rms_norm_eps=1e-5, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, tokenizer="stories260K", tiny=True, dtype="F32",
        std=0.3, embed_std=0.3),
    "tiny-llama-linear-rope": dict(
        arch="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, vocab_size=512, rope_theta=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        rms_norm_eps=1e-5, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, tokenizer="stories260K", tiny=True, dtype="F32",
        std=0.3, embed_std=0.3),
    "tiny-mistral-bf16-sharded": dict(
        arch="mistral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=512, rope_theta=10000.0,
        rms_norm_eps=1e-5, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, tokenizer="stories260K", tiny=True, dtype="BF16",
        num_shards=3, std=0.3, embed_std=0.3),
    "tiny-llama-f16": dict(
        arch="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=512, rope_theta=10000.0,
        rms_norm_eps=1e-5, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, tokenizer="stories260K", tiny=True, dtype="F16",
        std=0.3, embed_std=0.3),
}

# Generator-only keys (not written to config.json).
GEN_KEYS = {"arch", "dtype", "std", "embed_std", "bias_std", "norm_jitter", "router_std",
            "tokenizer", "tiny", "num_shards", "generation_eos_token_id", "pad_token_id"}

ARCHS = {
    "llama": ("LlamaForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "mixtral": ("MixtralForCausalLM", "mixtral"),
    "qwen2_moe": ("Qwen2MoeForCausalLM", "qwen2_moe"),
    "qwen3_moe": ("Qwen3MoeForCausalLM", "qwen3_moe"),
}
MOE_ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe")

DTYPES = {  # safetensors name -> (bytes per element, torch_dtype string)
    "F32": (4, "float32"),
    "BF16": (2, "bfloat16"),
    "F16": (2, "float16"),
}

CHUNK = 1 << 22  # elements generated per step (fixed: the random stream does not depend on it anyway)


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------
def make_config(p, dtype):
    """HF config.json contents for preset dict p (key order like transformers writes them)."""
    arch_cls, model_type = ARCHS[p["arch"]]
    c = {"architectures": [arch_cls], "model_type": model_type}
    if p["arch"] in ("llama", "qwen3", "qwen3_moe"):
        c["attention_bias"] = False
    c["attention_dropout"] = 0.0
    c["bos_token_id"] = p["bos_token_id"]
    c["eos_token_id"] = p["eos_token_id"]
    if "head_dim" in p:
        c["head_dim"] = p["head_dim"]
    c["hidden_act"] = "silu"
    c["hidden_size"] = p["hidden_size"]
    c["initializer_range"] = 0.02
    c["intermediate_size"] = p["intermediate_size"]
    c["max_position_embeddings"] = p["max_position_embeddings"]
    if p["arch"] in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe"):
        c["max_window_layers"] = p["num_hidden_layers"]
    if p["arch"] == "llama":
        c["mlp_bias"] = False
    c["num_attention_heads"] = p["num_attention_heads"]
    c["num_hidden_layers"] = p["num_hidden_layers"]
    c["num_key_value_heads"] = p["num_key_value_heads"]
    if p["arch"] == "llama":
        c["pretraining_tp"] = 1
    c["rms_norm_eps"] = p["rms_norm_eps"]
    c["rope_scaling"] = p.get("rope_scaling")
    c["rope_theta"] = p["rope_theta"]
    if p["arch"] in ("mistral", "qwen2", "qwen3") + MOE_ARCHS:
        c["sliding_window"] = None
    c["tie_word_embeddings"] = p["tie_word_embeddings"]
    c["torch_dtype"] = DTYPES[dtype][1]
    c["transformers_version"] = "4.51.0"
    c["use_cache"] = True
    if p["arch"] in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe"):
        c["use_sliding_window"] = False
    c["vocab_size"] = p["vocab_size"]
    # any extra config keys given via --override that are not known above
    for k, v in p.items():
        if k not in c and k not in GEN_KEYS:
            c[k] = v
    return c


# ---------------------------------------------------------------------------------------------
# tensor list
# ---------------------------------------------------------------------------------------------
def is_moe_layer(p, i):
    """Hugging Face's rule: Mixtral layers are all sparse; Qwen MoE layers unless in
    mlp_only_layers, every decoder_sparse_step-th."""
    if p["arch"] == "mixtral":
        return True
    if p["arch"] not in MOE_ARCHS:
        return False
    return i not in p.get("mlp_only_layers", []) and (i + 1) % p.get("decoder_sparse_step", 1) == 0


def moe_specs(p, pre):
    """Router, experts (and Qwen2-MoE's shared expert) of one sparse layer."""
    H = p["hidden_size"]
    if p["arch"] == "mixtral":
        E, I = p["num_local_experts"], p["intermediate_size"]
        out = [(pre + "block_sparse_moe.gate.weight", (E, H), "router")]
        for e in range(E):
            q = pre + f"block_sparse_moe.experts.{e}."
            out += [(q + "w1.weight", (I, H), "linear"), (q + "w2.weight", (H, I), "linear"),
                    (q + "w3.weight", (I, H), "linear")]
        return out
    E, I = p["num_experts"], p["moe_intermediate_size"]
    out = [(pre + "mlp.gate.weight", (E, H), "router")]
    for e in range(E):
        q = pre + f"mlp.experts.{e}."
        out += [(q + "gate_proj.weight", (I, H), "linear"), (q + "up_proj.weight", (I, H), "linear"),
                (q + "down_proj.weight", (H, I), "linear")]
    if p["arch"] == "qwen2_moe":
        S = p["shared_expert_intermediate_size"]
        q = pre + "mlp.shared_expert."
        out += [(q + "gate_proj.weight", (S, H), "linear"), (q + "up_proj.weight", (S, H), "linear"),
                (q + "down_proj.weight", (H, S), "linear"),
                (pre + "mlp.shared_expert_gate.weight", (1, H), "linear")]
    return out


def tensor_specs(p):
    """[(name, shape, kind)] in module order; kind: 'embed' | 'linear' | 'bias' | 'norm' | 'router'."""
    H = p["hidden_size"]
    I = p["intermediate_size"]
    V = p["vocab_size"]
    nh = p["num_attention_heads"]
    nkv = p["num_key_value_heads"]
    hd = p.get("head_dim") or H // nh
    qkv_bias = p["arch"] in ("qwen2", "qwen2_moe")
    qk_norm = p["arch"] in ("qwen3", "qwen3_moe")
    specs = [("model.embed_tokens.weight", (V, H), "embed")]
    for i in range(p["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        specs.append((pre + "input_layernorm.weight", (H,), "norm"))
        for proj, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
            specs.append((pre + f"self_attn.{proj}_proj.weight", (rows, H), "linear"))
            if qkv_bias:
                specs.append((pre + f"self_attn.{proj}_proj.bias", (rows,), "bias"))
        specs.append((pre + "self_attn.o_proj.weight", (H, nh * hd), "linear"))
        if qk_norm:
            specs.append((pre + "self_attn.q_norm.weight", (hd,), "norm"))
            specs.append((pre + "self_attn.k_norm.weight", (hd,), "norm"))
        specs.append((pre + "post_attention_layernorm.weight", (H,), "norm"))
        if is_moe_layer(p, i):
            specs.extend(moe_specs(p, pre))
            continue
        specs.append((pre + "mlp.gate_proj.weight", (I, H), "linear"))
        specs.append((pre + "mlp.up_proj.weight", (I, H), "linear"))
        specs.append((pre + "mlp.down_proj.weight", (H, I), "linear"))
    specs.append(("model.norm.weight", (H,), "norm"))
    if not p["tie_word_embeddings"]:
        specs.append(("lm_head.weight", (V, H), "embed"))
    return specs


# ---------------------------------------------------------------------------------------------
# value generation / conversion
# ---------------------------------------------------------------------------------------------
def f32_to_bf16_bits(x):
    """float32 array -> uint16 bfloat16 bits, round to nearest, ties to even (NaN stays NaN)."""
    u = x.view(np.uint32)
    rounding = (u >> 16) & np.uint32(1)
    rounding += np.uint32(0x7FFF)
    out = ((u + rounding) >> 16).astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)  # quiet NaN, keep sign
    return out


def convert(x, dtype):
    """float32 chunk -> array with the on-disk element type."""
    if dtype == "F32":
        return x
    if dtype == "F16":
        return x.astype(np.float16)
    if dtype == "BF16":
        return f32_to_bf16_bits(x)
    raise ValueError(dtype)


def tensor_chunks(name, shape, kind, seed, p):
    """Yield the tensor's float32 values in order, CHUNK elements at a time."""
    n = int(np.prod(shape))
    # independent stream per tensor: (seed, crc32(name))
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode())])))
    std = p["std"]
    for start in range(0, n, CHUNK):
        k = min(CHUNK, n - start)
        x = rng.standard_normal(k, dtype=np.float32)
        if kind == "norm":
            x *= np.float32(p.get("norm_jitter", 0.1))
            x += np.float32(1.0)
        elif kind == "embed":
            x *= np.float32(p.get("embed_std", std))
        elif kind == "bias":
            x *= np.float32(p.get("bias_std", std))
        elif kind == "router":
            x *= np.float32(p.get("router_std", std))
        else:
            x *= np.float32(std)
        yield x


# ---------------------------------------------------------------------------------------------
# safetensors writing
# ---------------------------------------------------------------------------------------------
def safetensors_header(entries, dtype):
    """entries: [(name, shape)] in data order -> header bytes (padded to 8 with spaces)."""
    item = DTYPES[dtype][0]
    header = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape in entries:
        nbytes = int(np.prod(shape)) * item
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((-len(hb)) % 8)
    return hb


def parse_size(s):
    """'5GB' / '500MB' / '100KB' / '12345' -> bytes (decimal units, like HF's max_shard_size)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?i?B?)\s*", s, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size: {s}")
    num = float(m.group(1))
    unit = m.group(2).upper().rstrip("B")
    mult = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    return int(num * mult)


def assign_shards(specs, dtype, shard_size=None, num_shards=None):
    """Split the tensor list (in order) into shards -> list of lists of specs."""
    item = DTYPES[dtype][0]
    sizes = [int(np.prod(s)) * item for _, s, _ in specs]
    total = sum(sizes)
    if num_shards and num_shards > 1:
        # tensor goes to the shard in which its first byte falls when the total is cut in N equal parts
        shards = [[] for _ in range(num_shards)]
        cum = 0
        for spec, sz in zip(specs, sizes):
            shards[min(num_shards - 1, cum * num_shards // total)].append(spec)
            cum += sz
        return [s for s in shards if s]
    if shard_size:
        # greedy packing like transformers' save_pretrained: start a new shard when it would overflow
        shards, cur, cur_size = [], [], 0
        for spec, sz in zip(specs, sizes):
            if cur and cur_size + sz > shard_size:
                shards.append(cur)
                cur, cur_size = [], 0
            cur.append(spec)
            cur_size += sz
        if cur:
            shards.append(cur)
        return shards
    return [specs]


class Progress:
    def __init__(self, total_bytes, quiet):
        self.total = total_bytes
        self.done = 0
        self.t0 = time.time()
        self.next_report = 0.0
        self.quiet = quiet

    def add(self, nbytes, what):
        self.done += nbytes
        frac = self.done / self.total if self.total else 1.0
        if not self.quiet and (frac >= self.next_report or self.done == self.total):
            dt = time.time() - self.t0
            print(f"  [{100 * frac:5.1f}%] {self.done / 1e9:7.3f} / {self.total / 1e9:.3f} GB"
                  f"  {dt:7.1f} s  {self.done / 1e6 / max(dt, 1e-9):7.1f} MB/s  {what}", flush=True)
            self.next_report = frac + 0.05


def write_weights(out, specs, p, dtype, seed, shard_size, num_shards, quiet):
    """Write model.safetensors or shards + index; returns list of written file names."""
    shards = assign_shards(specs, dtype, shard_size, num_shards)
    item = DTYPES[dtype][0]
    total = sum(int(np.prod(s)) * item for _, s, _ in specs)
    prog = Progress(total, quiet)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else \
        [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    weight_map = {}
    for fname, shard in zip(names, shards):
        hb = safetensors_header([(nm, sh) for nm, sh, _ in shard], dtype)
        with open(os.path.join(out, fname), "wb") as f:
            f.write(len(hb).to_bytes(8, "little"))
            f.write(hb)
            for name, shape, kind in shard:
                for x in tensor_chunks(name, shape, kind, seed, p):
                    y = convert(x, dtype)
                    f.write(memoryview(np.ascontiguousarray(y)).cast("B"))
                    prog.add(y.nbytes, name)
                weight_map[name] = fname
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
            f.write("\n")
    return names, total


# ---------------------------------------------------------------------------------------------
# tokenizer files
# ---------------------------------------------------------------------------------------------
# Zephyr-style chat format (the one TinyLlama-Chat uses), written out here:
#   <|system|>\n{content}</s>\n<|user|>\n{content}</s>\n<|assistant|>\n
LLAMA2_SPM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


def spm_llama_tokenizer_config(max_len):
    special = {}
    for i, tok in ((0, "<unk>"), (1, "<s>"), (2, "</s>")):
        special[str(i)] = {"content": tok, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": True}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": special,
        "bos_token": "<s>",
        "chat_template": LLAMA2_SPM_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": True,
        "model_max_length": max_len,
        "pad_token": None,
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


def spm_llama_special_tokens_map():
    def tok(s):
        return {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    return {"bos_token": tok("<s>"), "eos_token": tok("</s>"), "unk_token": tok("<unk>")}


def copy_tokenizer(out, tok_dir, spm_llama, max_len, only=None):
    copied = []
    for fn in TOKENIZER_FILES:
        if only is not None and fn not in only:
            continue
        src = os.path.join(tok_dir, fn)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(out, fn))
            copied.append(fn)
    if spm_llama:
        if "tokenizer_config.json" not in copied:
            write_json(os.path.join(out, "tokenizer_config.json"), spm_llama_tokenizer_config(max_len))
            copied.append("tokenizer_config.json (synthesized)")
        if "special_tokens_map.json" not in copied:
            write_json(os.path.join(out, "special_tokens_map.json"), spm_llama_special_tokens_map())
            copied.append("special_tokens_map.json (synthesized)")
    return copied


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", help="one of: " + ", ".join(PRESETS))
    ap.add_argument("--out", help="output directory (created; old model*.safetensors* in it are removed)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--dtype", choices=list(DTYPES), help="weight dtype (default: the preset's)")
    ap.add_argument("--shard-size", type=parse_size,
                    help="max bytes per shard (e.g. 2GB, 500MB, 100000): write model-0000k-of-0000n "
                         "shards + model.safetensors.index.json")
    ap.add_argument("--num-shards", type=int, help="split into exactly N shards of about equal size")
    ap.add_argument("--tokenizer-dir", help="copy tokenizer files from this dir instead of the preset's")
    ap.add_argument("--no-tokenizer", action="store_true", help="do not write tokenizer files")
    ap.add_argument("--std", type=float, help="override the init std of linear weights")
    ap.add_argument("--embed-std", type=float, help="override the init std of embed_tokens / lm_head")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                    help="override a preset/config field, e.g. num_hidden_layers=2 or "
                         "'rope_scaling={\"rope_type\":\"linear\",\"factor\":2.0}'")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--list-presets", action="store_true")
    args = ap.parse_args()

    if args.list_presets:
        for name, p in PRESETS.items():
            n = sum(int(np.prod(s)) for _, s, _ in tensor_specs(p))
            print(f"{name:28s} {ARCHS[p['arch']][0]:20s} {n / 1e6:10.3f} M params  default {p['dtype']}")
        return 0
    if not args.preset or not args.out:
        ap.error("--preset and --out are required")
    if args.preset not in PRESETS:
        ap.error(f"unknown preset {args.preset}; known: {', '.join(PRESETS)}")

    p = dict(PRESETS[args.preset])
    for ov in args.override:
        k, _, v = ov.partition("=")
        try:
            p[k] = json.loads(v)
        except json.JSONDecodeError:
            p[k] = v
    if args.std is not None:
        p["std"] = args.std
    if args.embed_std is not None:
        p["embed_std"] = args.embed_std
    dtype = args.dtype or p["dtype"]
    num_shards = args.num_shards if args.num_shards is not None else (
        None if args.shard_size else p.get("num_shards"))

    out = args.out
    os.makedirs(out, exist_ok=True)
    for fn in os.listdir(out):  # stale weights from an earlier run would confuse loaders
        if re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?", fn):
            os.remove(os.path.join(out, fn))

    t0 = time.time()
    specs = tensor_specs(p)
    nparams = sum(int(np.prod(s)) for _, s, _ in specs)
    if not args.quiet:
        print(f"{args.preset}: {ARCHS[p['arch']][0]}, {nparams:,} params, {dtype}, seed {args.seed} -> {out}",
              flush=True)

    config = make_config(p, dtype)
    write_json(os.path.join(out, "config.json"), config)
    gen = {"bos_token_id": p["bos_token_id"],
           "eos_token_id": p.get("generation_eos_token_id", p["eos_token_id"])}
    if "pad_token_id" in p:
        gen["pad_token_id"] = p["pad_token_id"]
    gen["transformers_version"] = config["transformers_version"]
    write_json(os.path.join(out, "generation_config.json"), gen)

    copied = []
    if not args.no_tokenizer:
        if args.tokenizer_dir:
            tok_dir = args.tokenizer_dir
            spm = not os.path.exists(os.path.join(tok_dir, "tokenizer_config.json")) and \
                os.path.exists(os.path.join(tok_dir, "tokenizer.model"))
        else:
            t = TOKENIZERS[p["tokenizer"]]
            tok_dir, spm = os.path.join(shared_dir(), t["dir"]), t.get("spm_llama", False)
        if not os.path.isdir(tok_dir):
            print(f"error: tokenizer dir {tok_dir} not found (use --tokenizer-dir or --no-tokenizer)",
                  file=sys.stderr)
            return 1
        # tiny fixtures with their default tokenizer: only the small HF files (tokenizer.json +
        # configs), no tokenizer.model; an explicit --tokenizer-dir is copied completely
        only = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"] \
            if p.get("tiny") and not args.tokenizer_dir else None
        copied = copy_tokenizer(out, tok_dir, spm, p["max_position_embeddings"], only)

    files, total = write_weights(out, specs, p, dtype, args.seed, args.shard_size, num_shards, args.quiet)
    dt = time.time() - t0
    if not args.quiet:
        print(f"wrote {len(files)} weight file(s), {total / 1e9:.3f} GB of tensor data, "
              f"tokenizer: {', '.join(copied) if copied else 'none'}; {dt:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
