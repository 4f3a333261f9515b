"""Translation scores with sacrebleu: detokenized BLEU and chrF (with their signatures) and the tokenized
BLEU of the WMT14 literature (Vaswani et al. report BLEU on tokenized, compound-split text)."""
from __future__ import annotations

import re

_COMPOUND = re.compile(r"(?<=\w)-(?=\w)")


def tokenize_for_bleu(text: str) -> str:
    """The text as the tokenized-BLEU convention sees it: sacrebleu's 13a tokenizer (standing in for the
    Moses tokenizer) and compound splitting (``a-b`` -> ``a ##AT##-##AT## b``, as tensor2tensor's
    get_ende_bleu.sh does)."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    return " ".join(_COMPOUND.sub(" ##AT##-##AT## ", Tokenizer13a()(text)).split())


def translation_scores(hyps: list[str], refs: list[str]) -> dict:
    """sacrebleu BLEU (13a, detokenized), chrF and the tokenized BLEU, each with sacrebleu's signature."""
    import sacrebleu
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    tok = sacrebleu.metrics.BLEU(tokenize="none", force=True)
    b = bleu.corpus_score(hyps, [refs])
    c = chrf.corpus_score(hyps, [refs])
    t = tok.corpus_score([tokenize_for_bleu(h) for h in hyps], [[tokenize_for_bleu(r) for r in refs]])
    return {"bleu": b.score, "chrf": c.score, "bleu_tok": t.score, "bleu_bp": b.bp, "sys_len": b.sys_len,
            "ref_len": b.ref_len, "sentences": len(hyps),
            "signatures": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature()),
                           "bleu_tok": str(tok.get_signature()) + "|pre:13a+compound-split"}}
