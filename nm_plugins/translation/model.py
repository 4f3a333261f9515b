"""A Transformer encoder-decoder (Vaswani et al. 2017) whose attention projections and FFN layers are plain
``nn.Linear`` modules, so that :func:`nm_plugins.core.sparsify` turns every one of them into an N:M layer.

torch's ``nn.MultiheadAttention`` multiplies its packed ``in_proj_weight`` directly inside
``F.multi_head_attention_forward``, so it would never go through a sparse layer: the attention here has
separate q/k/v/out projections. The token embedding is shared by encoder, decoder and the output projection
(``generator``, an ``nn.Linear`` whose weight *is* the embedding) and stays dense, as do the LayerNorms.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nm_plugins.core import sparsify

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Attention(nn.Module):
    """Multi-head scaled dot-product attention with separate q/k/v/out ``nn.Linear`` projections."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"model.d_model {d_model} is not divisible by model.heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v, self.out = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None, cache: dict | None = None,
                static: bool = False) -> torch.Tensor:
        """``x`` (B, T, d) attends to ``memory`` (B, S, d); ``mask`` (B or 1, 1, T or 1, S) is True where allowed.
        With a ``cache`` (incremental decoding) the keys/values are kept: appended to for self-attention,
        computed once for ``static`` (encoder) memory."""
        b, t, d = x.shape
        split = lambda y: y.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q = split(self.q(x))
        if cache is not None and static and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            k, v = split(self.k(memory)), split(self.v(memory))
            if cache is not None:
                if "k" in cache:
                    k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """Position-wise FFN: Linear, ReLU, dropout, Linear."""

    def __init__(self, d_model: int, ffn: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2, self.dropout = nn.Linear(d_model, ffn), nn.Linear(ffn, d_model), nn.Dropout(dropout)

    def forward(self, x):
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class _Block(nn.Module):
    """Residual sub-layers with LayerNorm before (pre-norm) or after (post-norm, the original) each."""

    def __init__(self, d_model, ffn, heads, dropout, attn_dropout, pre_norm, cross: bool):
        super().__init__()
        self.pre_norm = pre_norm
        self.self_attn = Attention(d_model, heads, attn_dropout)
        self.cross_attn = Attention(d_model, heads, attn_dropout) if cross else None
        self.ffn = FeedForward(d_model, ffn, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3 if cross else 2))
        self.drop = nn.Dropout(dropout)

    def _sub(self, i, x, fn):
        if self.pre_norm:
            return x + self.drop(fn(self.norms[i](x)))
        return self.norms[i](x + self.drop(fn(x)))

    def forward(self, x, self_mask, memory=None, memory_mask=None, cache=None):
        sc, cc = (None, None) if cache is None else (cache.setdefault("self", {}), cache.setdefault("cross", {}))
        x = self._sub(0, x, lambda h: self.self_attn(h, h, self_mask, sc))
        if self.cross_attn is not None:
            x = self._sub(1, x, lambda h: self.cross_attn(h, memory, memory_mask, cc, static=True))
        return self._sub(len(self.norms) - 1, x, self.ffn)


def sinusoids(length: int, d_model: int) -> torch.Tensor:
    """The fixed sinusoidal position encodings of Vaswani et al. (length, d_model)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * inv), torch.cos(pos * inv)
    return pe


class Transformer(nn.Module):
    """Encoder-decoder Transformer with a shared (tied) source/target/output embedding."""

    def __init__(self, vocab_size: int, d_model: int = 512, ffn: int = 2048, heads: int = 8, enc_layers: int = 6,
                 dec_layers: int = 6, dropout: float = 0.1, attn_dropout: float = 0.0, pre_norm: bool = False,
                 max_positions: int = 1024):
        super().__init__()
        self.d_model = d_model
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, 0.0, d_model ** -0.5)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
        self.register_buffer("positions", sinusoids(max_positions, d_model), persistent=False)
        self.encoder = nn.ModuleList(_Block(d_model, ffn, heads, dropout, attn_dropout, pre_norm, False)
                                     for _ in range(enc_layers))
        self.decoder = nn.ModuleList(_Block(d_model, ffn, heads, dropout, attn_dropout, pre_norm, True)
                                     for _ in range(dec_layers))
        self.enc_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.dec_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.generator = nn.Linear(d_model, vocab_size, bias=False)
        self.generator.weight = self.embed.weight  # tied: one dense matrix
        for name, p in self.named_parameters():
            if p.dim() == 2 and not name.startswith("embed"):
                nn.init.xavier_uniform_(p)

    def get_classifier(self) -> nn.Module:
        """The output projection (kept dense by :func:`sparsify`)."""
        return self.generator

    def _embed(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        end = start + tokens.shape[1]
        if end > self.positions.shape[0]:
            raise ValueError(f"sequence of {end} tokens is longer than model.max_positions {self.positions.shape[0]}")
        return self.drop(self.embed(tokens) * math.sqrt(self.d_model) + self.positions[start:end])

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory (B, S, d), memory mask (B, 1, 1, S), True at real tokens) of source tokens (B, S)."""
        mask = (src != PAD)[:, None, None, :]
        x = self._embed(src)
        for block in self.encoder:
            x = block(x, mask)
        return self.enc_norm(x), mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the next token after each prefix of ``tgt_in`` (B, T), causally masked."""
        t = tgt_in.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).tril()[None, None]
        x = self._embed(tgt_in)
        for block in self.decoder:
            x = block(x, causal, memory, memory_mask)
        return self.generator(self.dec_norm(x))

    def decode_step(self, last: torch.Tensor, step: int, memory: torch.Tensor, memory_mask: torch.Tensor,
                    cache: list) -> torch.Tensor:
        """Logits (B, V) of the token after position ``step`` given its token ``last`` (B, 1), reusing the
        keys/values of earlier positions kept in ``cache`` (a list with one dict per decoder layer, filled
        here; start with ``[{} for _ in model.decoder]``). Equal to ``decode(...)[:, -1]`` on the prefix."""
        x = self._embed(last, step)
        for block, c in zip(self.decoder, cache):
            x = block(x, None, memory, memory_mask, c)
        return self.generator(self.dec_norm(x))[:, -1]

    @staticmethod
    def reorder_cache(cache: list, rows: torch.Tensor) -> list:
        """The cache of ``decode_step`` for the hypotheses ``rows`` (beam search reordering)."""
        return [{part: {k: v.index_select(0, rows) for k, v in kv.items()} for part, kv in c.items()} for c in cache]

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, V)."""
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)


def build_model(cfg: dict, vocab_size: int) -> Transformer:
    """The Transformer of ``cfg["model"]`` with every attention projection and FFN linear made N:M by
    ``sparsify`` (method ``dense`` keeps them dense but tracks their masks for SAD); the embedding and the
    tied output projection stay dense. The report is kept as ``model.nm_report``."""
    m, sp = cfg["model"], cfg["sparsity"]
    model = Transformer(vocab_size, d_model=m["d_model"], ffn=m["ffn"], heads=m["heads"], enc_layers=m["enc_layers"],
                        dec_layers=m["dec_layers"], dropout=m["dropout"], attn_dropout=m["attn_dropout"],
                        pre_norm=m["pre_norm"], max_positions=m["max_positions"])
    report = sparsify(model, pattern=sp["pattern"], method=sp["method"], decay=sp["decay"],
                      keep_classifier_dense=True, method_args=sp.get("method_args") or None)
    expected = 4 * (m["enc_layers"] + 2 * m["dec_layers"]) + 2 * (m["enc_layers"] + m["dec_layers"])
    if len(report.sparse_layers) != expected:
        raise ValueError(f"sparsify made {len(report.sparse_layers)} layers N:M, expected every attention projection "
                         f"and FFN linear ({expected}); dense: {report.dense_layers}")
    model.nm_report = report
    model.nm_config = {"method": sp["method"], "pattern": sp["pattern"], "decay": sp["decay"],
                       "method_args": dict(report.method_args)}
    return model
