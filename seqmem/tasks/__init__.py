"""Tasks: pure seeded generators and the thin datamodules that serve them."""

from seqmem.tasks.adding import AddingData, adding_problem
from seqmem.tasks.agreement import AgreementData, AgreementLexicon, agreement_batch, bucket_names, load_lexicon
from seqmem.tasks.copy import CopyData, copy_memory
from seqmem.tasks.lm import LMData, batchify, build_vocab, tokenize, unigram_entropy
from seqmem.tasks.spec import SyntheticBatches, SyntheticTask, TaskDataModule, TaskSpec, batch_loader

__all__ = [
    "AddingData",
    "AgreementData",
    "AgreementLexicon",
    "CopyData",
    "LMData",
    "SyntheticBatches",
    "SyntheticTask",
    "TaskDataModule",
    "TaskSpec",
    "adding_problem",
    "agreement_batch",
    "batch_loader",
    "batchify",
    "bucket_names",
    "build_vocab",
    "copy_memory",
    "load_lexicon",
    "tokenize",
    "unigram_entropy",
]
