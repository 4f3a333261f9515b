"""The N:M Transformer: every attention projection and FFN linear really N:M, dense tied embedding, beam
search vs greedy, BLEU/chrF equal to sacrebleu's, Params/FLOPs."""
import pytest
import sacrebleu
import torch

from nm_plugins.core import SparseLinear, is_valid_nm_mask, sparse_layers
from nm_plugins.translation.config import load_config
from nm_plugins.translation.metrics import tokenize_for_bleu, translation_scores
from nm_plugins.translation.model import BOS, EOS, PAD, Attention, build_model
from nm_plugins.translation.search import beam_search, greedy, length_penalty
from nm_plugins.translation.train import params_flops

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see tests/conftest.py


TINY = ["model.d_model=32", "model.ffn=64", "model.heads=4", "model.enc_layers=2", "model.dec_layers=2",
        "model.dropout=0.0", "model.max_positions=64"]


def tiny(method="srste", pattern="2:4", pre_norm=True):
    cfg = load_config(None, TINY + [f"sparsity.method={method}", f"sparsity.pattern='{pattern}'", f"model.pre_norm={pre_norm}"])
    return build_model(cfg, 50).eval()


def batch(b=6, s=7, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 50, (b, s), generator=g)
    src[0, -2:] = PAD  # a padded source
    tgt = torch.randint(4, 50, (b, t), generator=g)
    tgt[:, 0] = BOS
    return src, tgt


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_every_projection_and_ffn_is_nm_and_embedding_dense(pattern):
    model = tiny("srste", pattern)
    names = {n for n, _ in sparse_layers(model)}
    expected = {f"encoder.{i}.{m}" for i in range(2) for m in ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.out", "ffn.fc1", "ffn.fc2")}
    expected |= {f"decoder.{i}.{a}.{p}" for i in range(2) for a in ("self_attn", "cross_attn") for p in "qkvo" if p != "o"}
    expected |= {f"decoder.{i}.{a}.out" for i in range(2) for a in ("self_attn", "cross_attn")}
    expected |= {f"decoder.{i}.ffn.{f}" for i in range(2) for f in ("fc1", "fc2")}
    assert names == expected
    plain = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    assert plain == ["generator"]  # the only dense linear: the tied output projection
    assert model.generator.weight is model.embed.weight
    for name, layer in sparse_layers(model):
        assert is_valid_nm_mask(layer.mask(), pattern), name
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())


def test_every_sparse_linear_runs_and_only_kept_weights_count():
    """Each N:M layer's forward runs, and scaling its pruned weights (which keeps the mask) leaves the output
    unchanged while the same change to a dense-method model changes it: the masks are really applied."""
    torch.manual_seed(0)
    model = tiny("srste")
    src, tgt = batch()
    calls = {}
    hooks = [layer.register_forward_hook(lambda m, i, o, n=name: calls.__setitem__(n, calls.get(n, 0) + 1))
             for name, layer in sparse_layers(model)]
    with torch.no_grad():
        ref = model(src, tgt)
    assert set(calls) == {n for n, _ in sparse_layers(model)} and all(v == 1 for v in calls.values())
    for h in hooks:
        h.remove()
    for name, layer in sparse_layers(model):
        mask = layer.mask().clone()
        with torch.no_grad():
            layer.weight[~mask] *= 0.5  # smaller magnitude: the N:M mask stays the same
            assert torch.equal(layer.mask(), mask), name
            assert torch.allclose(model(src, tgt), ref, atol=1e-6), f"{name}: pruned weights reach the output"
            layer.weight[~mask] *= 2.0
    dense = tiny("dense")
    dense.load_state_dict(model.state_dict())
    with torch.no_grad():
        out_dense = dense(src, tgt)
        assert not torch.allclose(out_dense, ref, atol=1e-4)  # the masks matter
        layer = dict(sparse_layers(dense))["decoder.1.ffn.fc2"]
        layer.weight[~layer.mask()] *= 0.5
        assert not torch.allclose(dense(src, tgt), out_dense, atol=1e-6)


def test_torch_multihead_attention_would_bypass_sparsify():
    """Why the model has its own attention: sparsify cannot see nn.MultiheadAttention's packed in_proj_weight."""
    from nm_plugins.core import sparsify
    mha = torch.nn.Sequential(torch.nn.MultiheadAttention(32, 4))
    report = sparsify(mha, "2:4", keep_classifier_dense=False)
    assert report.sparse_layers == [] and not isinstance(mha[0].out_proj, SparseLinear)  # all of it stays dense
    ours = torch.nn.Sequential(Attention(32, 4, 0.0))
    assert len(sparsify(ours, "2:4", keep_classifier_dense=False).sparse_layers) == 4


@pytest.mark.parametrize("pre_norm", [True, False])
def test_causal_decoder_and_padding(pre_norm):
    model = tiny("srste", pre_norm=pre_norm)
    src, tgt = batch()
    with torch.no_grad():
        full = model(src, tgt)
        prefix = model(src, tgt[:, :3])
        assert torch.allclose(full[:, :3], prefix, atol=1e-5)  # no peeking at later target tokens
        longer = torch.cat([src, torch.full((src.shape[0], 3), PAD)], 1)
        assert torch.allclose(model(longer, tgt), full, atol=1e-5)  # padding is ignored


@pytest.mark.parametrize("pre_norm", [True, False])
def test_incremental_decoding_equals_full_decoding(pre_norm):
    model = tiny("srste", pre_norm=pre_norm)
    src, tgt = batch()
    with torch.no_grad():
        memory, mask = model.encode(src)
        full = model.decode(tgt, memory, mask)
        cache = [{} for _ in model.decoder]
        steps = [model.decode_step(tgt[:, t:t + 1], t, memory, mask, cache) for t in range(tgt.shape[1])]
        assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)
        rows = torch.tensor([2, 2, 0, 5, 1, 3])  # reordering the cache = decoding the reordered prefixes
        cache = model.reorder_cache(cache, rows)
        nxt = torch.randint(4, 50, (6, 1))
        inc = model.decode_step(nxt, tgt.shape[1], memory[rows], mask[rows], cache)
        ref = model.decode(torch.cat([tgt[rows], nxt], 1), memory[rows], mask[rows])[:, -1]
        assert torch.allclose(inc, ref, atol=1e-5)


def _copy_trained(steps=120):
    """A tiny model trained briefly to copy variable-length sources: it ends some outputs with EOS."""
    torch.manual_seed(1)
    model = tiny("srste").train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        lens = torch.randint(1, 6, (32,), generator=g)
        src = torch.full((32, 6), PAD)
        tgt = torch.full((32, 7), PAD)
        for i, n in enumerate(lens.tolist()):
            seq = torch.randint(4, 50, (n,), generator=g)
            src[i, :n], tgt[i, :n], tgt[i, n] = seq, seq, EOS
        tin = torch.cat([torch.full((32, 1), BOS), tgt[:, :-1]], 1)
        loss = torch.nn.functional.cross_entropy(model(src, tin).flatten(0, 1), tgt.flatten(), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def copy_model():
    return _copy_trained()


def test_beam_one_equals_greedy(copy_model):
    src, _ = batch(b=16, s=6, seed=2)
    g = greedy(copy_model, src, 1.0, 2)
    b = beam_search(copy_model, src, beam=1, alpha=0.6, max_len_a=1.0, max_len_b=2)
    assert g == b
    assert len({len(x) for x in g}) > 1 and any(x[-1] == EOS for x in g) and any(x[-1] != EOS for x in g)


def test_beam_search_finds_hypotheses_at_least_as_good_as_greedy(copy_model):
    model = copy_model
    src, _ = batch(b=8, s=6, seed=3)

    def score(i, seq):
        tokens = torch.tensor([[BOS] + seq[:-1]])
        with torch.no_grad():
            logp = model(src[i:i + 1], tokens).log_softmax(-1)[0]
        return float(logp[torch.arange(len(seq)), torch.tensor(seq)].sum()) / length_penalty(len(seq), 0.6)

    g = greedy(model, src, 1.0, 2)
    b = beam_search(model, src, beam=4, alpha=0.6, max_len_a=1.0, max_len_b=2)
    compared = 0
    for i in range(len(g)):
        if g[i][-1] == EOS and b[i][-1] == EOS:
            assert score(i, b[i]) >= score(i, g[i]) - 1e-5
            compared += 1
    assert compared > 0


def test_scores_equal_sacrebleu():
    hyps = ["The cat sat on the well-known mat.", "Hello there, world!", "It is a nice day today."]
    refs = ["The cat sat on the well-known mat.", "Hello, world!", "Today is a nice day."]
    s = translation_scores(hyps, refs)
    assert s["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert s["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    tok_h = ["The cat sat on the well ##AT##-##AT## known mat .", "Hello there , world !", "It is a nice day today ."]
    assert [tokenize_for_bleu(h) for h in hyps] == tok_h
    tok_r = [tokenize_for_bleu(r) for r in refs]
    assert s["bleu_tok"] == pytest.approx(sacrebleu.corpus_bleu(tok_h, [tok_r], tokenize="none").score, abs=1e-9)
    assert translation_scores(refs, refs)["bleu"] == pytest.approx(100.0)
    assert "tok:13a" in s["signatures"]["bleu"] and "nc:6" in s["signatures"]["chrf"]
    with pytest.raises(ValueError, match="3 hypotheses for 2 references"):
        translation_scores(hyps, refs[:2])


def test_params_and_flops_count_kept_weights():
    dense, sparse = tiny("dense"), tiny("srste", "2:4")
    d, s = params_flops(dense, 10), params_flops(sparse, 10)
    nm_weights = sum(layer.weight.numel() for _, layer in sparse_layers(sparse))
    assert d["params"] - s["params"] == nm_weights // 2
    assert d["params"] == sum(p.numel() for p in dense.parameters())  # tied embedding counted once
    assert d["flops_output_projection"] == 50 * 32 * 10
    # per 10+10 tokens: every N:M weight once per source or target token (+ cross-attn k/v over the source)
    assert d["flops"] - s["flops"] == (nm_weights // 2) * 10
