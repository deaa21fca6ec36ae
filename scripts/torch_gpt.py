#!/usr/bin/python3
# torch_gpt.py: the PyTorch reference GPT-2 (nanoGPT-equivalent) that scripts/make-fixtures and
# scripts/bench-torch import. Parameter names equal nanoGPT's state-dict names, so the C side
# (gpt_) and HF/nanoGPT exports read the same keys. Single-threaded use; torch owns its threads.
# Run with /usr/bin/python3: it has torch 1.13 (CPU) and h5py; the pyenv python3 on PATH has not.
"""GPT-2 in PyTorch, written to be read next to train/gpt.c.

Model (shapes follow llm.c: B batch, T time, C channels, V vocab, NH heads, hs = C / NH):
    x = wte[idx] + wpe[0:T]                                  (B, T, C)
    for each block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    logits = ln_f(x) @ wte^T                                 (B, T, V), lm_head tied, no bias
    loss = mean over all B*T positions of cross-entropy(logits, targets)
attn: qkv = c_attn(x) (B, T, 3C) packed q|k|v; per head att = softmax(q k^T / sqrt(hs)) with
positions t' > t masked to -inf; y = att v, heads re-joined, then c_proj. No dropout anywhere.
mlp: c_proj(gelu_tanh(c_fc(x))), c_fc (4C, C). LayerNorm eps 1e-5, with weight and bias.
Linear weights are stored (out, in) as in torch (y = x W^T + b).

Incremental decoding (forward_cached, the baseline of infer/kv.c): a cache holds, per layer, the
keys and values of every position fed so far, (B, NH, block_size, hs) each. A call feeds the
tokens at positions pos .. pos+T-1, writes their keys and values into the cache, lets each attend
to positions 0 .. its own, and returns the logits of the last new token only.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-5


class GPTConfig:
    """Plain hyper-parameters; n_embd must be divisible by n_head."""

    def __init__(self, n_layer, n_head, n_embd, block_size, vocab_size):
        if min(n_layer, n_head, n_embd, block_size, vocab_size) < 1:
            raise ValueError("GPTConfig: every size must be >= 1")
        if n_embd % n_head != 0:
            raise ValueError(f"GPTConfig: n_embd {n_embd} not divisible by n_head {n_head}")
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_embd = n_embd
        self.block_size = block_size
        self.vocab_size = vocab_size


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)   # weight (3C, C): q, k, v packed
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)       # weight (C, C)
        # (1, 1, T, T) lower-triangular mask; non-persistent so it stays out of the state dict.
        mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool))
        self.register_buffer("mask", mask.view(1, 1, cfg.block_size, cfg.block_size),
                             persistent=False)

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)             # each (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)     # (B, NH, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, NH, T, T)
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = att @ v                                           # (B, NH, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)     # heads side by side again
        return self.c_proj(y)

    def forward_cached(self, x, kv, pos):
        """x (B, T, C) at positions pos .. pos+T-1; kv = (k, v), each (B, NH, block_size, hs),
        receives this call's keys and values. Returns (B, T, C) like forward."""
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)     # (B, NH, T, hs)
        kc, vc = kv
        kc[:, :, pos:pos + T] = k.view(B, T, self.n_head, hs).transpose(1, 2)
        vc[:, :, pos:pos + T] = v.view(B, T, self.n_head, hs).transpose(1, 2)
        k, v = kc[:, :, :pos + T], vc[:, :, :pos + T]        # (B, NH, pos+T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, NH, T, pos+T)
        att = att.masked_fill(~self.mask[:, :, pos:pos + T, :pos + T], float("-inf"))
        y = F.softmax(att, dim=-1) @ v                        # (B, NH, T, hs)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)     # weight (4C, C)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)   # weight (C, 4C)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=LN_EPS)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))   # pre-LN residual
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x, kv, pos):
        x = x + self.attn.forward_cached(self.ln_1(x), kv, pos)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 whose named_parameters()/state_dict() keys are exactly nanoGPT's minus the tied
    lm_head.weight (the head is wte itself, applied with F.linear) and minus attention masks."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),     # (V, C), also the lm_head
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),     # (block_size, C)
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, eps=LN_EPS),
        ))
        self.reset_parameters()

    def reset_parameters(self):
        """nanoGPT's init: N(0, 0.02) weights, zero biases, LN 1/0, and the residual
        projections (c_proj) at 0.02/sqrt(2L). Tests overwrite this with larger values."""
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * self.config.n_layer))
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif ".ln_" in name and name.endswith(".weight"):
                nn.init.ones_(p)                              # LayerNorm gain
            else:
                nn.init.zeros_(p)                             # biases

    def forward(self, idx, targets=None):
        """idx (B, T) int64 -> logits (B, T, V); with targets (B, T) also the mean loss."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"GPT: T={T} exceeds block_size={self.config.block_size}")
        tr = self.transformer
        pos = torch.arange(T, device=idx.device)
        x = tr.wte(idx) + tr.wpe(pos)                         # (B, T, C), wpe broadcasts over B
        for block in tr.h:
            x = block(x)
        x = tr.ln_f(x)
        logits = F.linear(x, tr.wte.weight)                   # (B, T, V), tied head, no bias
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))
        return logits, loss

    def new_cache(self, B):
        """An empty KV cache for B sequences: per layer (k, v), each (B, NH, block_size, hs)."""
        c = self.config
        shape = (B, c.n_head, c.block_size, c.n_embd // c.n_head)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(c.n_layer)]

    def forward_cached(self, idx, cache, pos):
        """idx (B, T) int64: the tokens at positions pos .. pos+T-1 of sequences whose first pos
        keys and values are in cache (from new_cache). Adds these T and returns the logits of the
        last one, (B, V). Call under torch.no_grad()."""
        B, T = idx.shape
        if pos + T > self.config.block_size:
            raise ValueError(f"GPT: position {pos + T} exceeds block_size={self.config.block_size}")
        tr = self.transformer
        x = tr.wte(idx) + tr.wpe(torch.arange(pos, pos + T, device=idx.device))
        for block, kv in zip(tr.h, cache):
            x = block.forward_cached(x, kv, pos)
        return F.linear(tr.ln_f(x[:, -1]), tr.wte.weight)     # (B, V)

    def num_params(self, exclude_wpe=False):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if exclude_wpe else n


def param_names(model):
    """Parameter names in registration order (the order every script writes them in)."""
    return [n for n, _ in model.named_parameters()]


def configure_optimizer(model, lr, betas, eps, weight_decay):
    """AdamW with nanoGPT's two groups: every tensor with dim >= 2 (wte, wpe and all matmul
    weights) decays, 1-D tensors (biases, LayerNorm) do not. foreach=False pins the plain
    per-tensor update, which is:
        p *= 1 - lr*wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)"""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=False)


def train_step(model, opt, x, y, grad_clip):
    """One nanoGPT step: zero_grad, forward, backward, clip, AdamW. clip_grad_norm_ scales every
    grad by grad_clip / (norm + 1e-6) when that is < 1. Returns (loss, pre-clip global norm)."""
    opt.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item(), norm.item()
