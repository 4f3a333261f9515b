"""Greedy decoding and beam search with the GNMT length penalty ((5 + len) / 6) ** alpha; both decode
incrementally (cached keys/values, one new position per step)."""
from __future__ import annotations

import torch

from .model import BOS, EOS, PAD


def _max_len(src: torch.Tensor, a: float, b: int) -> int:
    return int((src != PAD).sum(1).max()) * a + b


@torch.no_grad()
def greedy(model, src: torch.Tensor, max_len_a: float = 1.5, max_len_b: int = 10) -> list[list[int]]:
    """Arg-max decoding of a batch of sources (B, S); token ids without BOS, ending with EOS when produced."""
    memory, mask = model.encode(src)
    tokens = torch.full((src.shape[0], 1), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    cache = [{} for _ in model.decoder]
    for step in range(int(_max_len(src, max_len_a, max_len_b))):
        nxt = model.decode_step(tokens[:, -1:], step, memory, mask, cache).float().argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        done |= nxt == EOS
        if bool(done.all()):
            break
    return [[t for t in row[1:] if t != PAD] for row in tokens.tolist()]


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016)."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(model, src: torch.Tensor, beam: int = 4, alpha: float = 0.6, max_len_a: float = 1.5,
                max_len_b: int = 10) -> list[list[int]]:
    """Best hypothesis per source (token ids without BOS, ending with EOS when finished) by beam search:
    each step keeps the ``beam`` best unfinished continuations (by summed log-probability) among the 2 x
    ``beam`` best candidates; a candidate ending in EOS is finished with score / length_penalty. A sentence
    stops once ``beam`` hypotheses are finished; at the length limit the unfinished ones are finished too.
    With ``beam=1`` this is exactly :func:`greedy`."""
    b, k = src.shape[0], beam
    memory, mask = model.encode(src)
    memory = memory.repeat_interleave(k, 0)
    mask = mask.repeat_interleave(k, 0)
    tokens = torch.full((b * k, 1), BOS, dtype=torch.long, device=src.device)
    scores = torch.full((b, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0
    finished = [[] for _ in range(b)]
    done = [False] * b
    limit = int(_max_len(src, max_len_a, max_len_b))
    cache = [{} for _ in model.decoder]
    for step in range(limit):
        logp = model.decode_step(tokens[:, -1:], step, memory, mask, cache).float().log_softmax(-1)  # (b*k, V)
        vocab = logp.shape[1]
        cand = (scores.view(-1, 1) + logp).view(b, k * vocab)
        top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        new_rows, new_scores = [], []
        for i in range(b):
            rows, sc = [], []
            if not done[i]:
                for s, idx in zip(top_scores[i], top_idx[i]):
                    if s == float("-inf"):
                        break
                    origin, tok = divmod(idx, vocab)
                    if tok == EOS:
                        seq = tokens[i * k + origin, 1:].tolist() + [EOS]
                        finished[i].append((s / length_penalty(len(seq), alpha), seq))
                        if len(finished[i]) >= k:
                            break
                    else:
                        rows.append((i * k + origin, tok))
                        sc.append(s)
                        if len(rows) == k:
                            break
                if len(finished[i]) >= k or not rows:
                    done[i] = True
                elif step == limit - 1:  # the length limit: unfinished continuations count as finished (no EOS)
                    for (row, tok), s in zip(rows, sc):
                        seq = tokens[row, 1:].tolist() + [tok]
                        finished[i].append((s / length_penalty(len(seq), alpha), seq))
                    done[i] = True
            if done[i]:
                rows, sc = [(i * k, PAD)] * k, [float("-inf")] * k
            rows += [rows[-1]] * (k - len(rows))
            sc += [float("-inf")] * (k - len(sc))
            new_rows += rows
            new_scores += sc
        if all(done):
            break
        origin = torch.tensor([r for r, _ in new_rows], device=src.device)
        nxt = torch.tensor([t for _, t in new_rows], device=src.device)
        tokens = torch.cat([tokens[origin], nxt[:, None]], 1)
        cache = model.reorder_cache(cache, origin)
        scores = torch.tensor(new_scores, device=src.device).view(b, k)
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]
