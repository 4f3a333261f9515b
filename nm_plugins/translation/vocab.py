"""A joint source/target subword vocabulary (sentencepiece BPE) trained from the training text and cached."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .model import BOS, EOS, PAD, UNK


class Vocab:
    """Encode text to token ids (without BOS/EOS) and decode ids back to detokenized text."""

    def __init__(self, model_file: "str | Path"):
        import sentencepiece as spm
        self.path = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD, UNK, BOS, EOS):
            raise ValueError(f"vocabulary {self.path}: special ids (pad, unk, bos, eos) are {ids}, expected "
                             f"{(PAD, UNK, BOS, EOS)}; delete it to train a new one")

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text."""
        return self.sp.encode(list(texts))

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Text of each id list; stops at EOS and skips PAD/BOS."""
        out = []
        for seq in ids:
            seq = [int(i) for i in seq]
            if EOS in seq:
                seq = seq[:seq.index(EOS)]
            out.append(self.sp.decode([i for i in seq if i not in (PAD, BOS)]))
        return out


def train_vocab(texts_files: list[Path], vocab_size: int, cache_dir: "str | Path", max_sentences: int = 2_000_000,
                seed: int = 0) -> Vocab:
    """Train (or reuse from ``cache_dir``) a joint BPE vocabulary of ``vocab_size`` pieces on the lines of
    ``texts_files`` (both languages); the cache key is the files' content hash and the settings."""
    import sentencepiece as spm
    h = hashlib.sha256(f"bpe{vocab_size}:{max_sentences}:{seed}".encode())
    for f in texts_files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    prefix = cache_dir / f"spm_bpe{vocab_size}_{h.hexdigest()[:12]}"
    model = prefix.with_suffix(".model")
    if not model.is_file():
        tmp = cache_dir / f".tmp{os.getpid()}_{prefix.name}"
        spm.set_random_generator_seed(seed)  # the sentence sample of a large corpus
        spm.SentencePieceTrainer.train(
            input=",".join(str(f) for f in texts_files), model_prefix=str(tmp), vocab_size=vocab_size,
            model_type="bpe", character_coverage=1.0, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
            input_sentence_size=max_sentences, shuffle_input_sentence=True, seed_sentencepiece_size=max_sentences,
            hard_vocab_limit=False, num_threads=1, minloglevel=2)
        os.replace(f"{tmp}.model", model)
        os.replace(f"{tmp}.vocab", f"{prefix}.vocab")
    return Vocab(model)
