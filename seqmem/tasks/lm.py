"""Language modelling: a text corpus cut into contiguous streams, served in order.

Consecutive batches continue the same streams, so the model carries its hidden state from one
window to the next (truncated BPTT, as in pytorch/examples word_language_model).
"""

import codecs
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Literal, Optional

import datasets
import torch
from torch.utils.data import IterableDataset
from typing_extensions import override

from seqmem.errors import ConfigError, quote, require, shorten
from seqmem.tasks.spec import BatchShape, TaskDataModule, TaskSpec, batch_loader

SPLITS = ("train", "validation", "test")
#: The splits each stage reads.
STAGE_SPLITS = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",), "predict": ("test",)}
UNK, EOS = "<unk>", "<eos>"
#: Seconds the Hub may take to answer before an lm run without data.path gives up (datasets retries for minutes).
HUB_PROBE_TIMEOUT = 5.0


def corpus_files(corpus: Path) -> dict[str, Path]:
    """The file of each split: a folder's train.txt, valid.txt and test.txt (valid.txt again when absent), or
    a single file as "train" (split by ``val_fraction`` later)."""
    if not corpus.is_dir():
        return {"train": corpus}
    test = corpus / "test.txt" if (corpus / "test.txt").is_file() else corpus / "valid.txt"
    return {"train": corpus / "train.txt", "validation": corpus / "valid.txt", "test": test}


def check_text(path: Path, encoding: str, chunk_size: int = 1 << 20) -> None:
    """Raise :class:`ConfigError` naming ``data.path`` unless ``path`` is ``encoding`` text without NUL characters.

    Read in chunks through an incremental decoder, so a large corpus never sits in memory twice.
    """
    where = quote(str(path))
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with path.open("rb") as file:
        try:
            while chunk := file.read(chunk_size):
                text = decoder.decode(chunk)
                require("\0" not in text, f"data.path file {where} holds NUL characters: a binary file, not text")
                offset += len(chunk)
            decoder.decode(b"", final=True)  # a multi-byte character cut off at the end
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"data.path file {where} is not {encoding} text ({shorten(err.reason)} near byte "
                f"{offset + err.start}): a binary file, or text in another encoding — pass it as --data.encoding "
                "(e.g. latin-1)"
            ) from None


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the Hugging Face Hub (``datasets.config.HF_ENDPOINT``) answers within ``timeout`` seconds.

    Any HTTP reply counts, an error status too; proxies in the environment are honoured, as ``datasets`` does.
    """
    try:
        urllib.request.urlopen(datasets.config.HF_ENDPOINT, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):  # URLError, timeouts, refused connections; a malformed endpoint
        return False
    return True


def tokenize(text: str, level: str) -> list[str]:
    """Characters, or whitespace-separated words with ``<eos>`` at each line end."""
    if level == "char":
        return list(text)
    return [word for line in text.splitlines() for word in line.split() + [EOS]]


def count_tokens(text: str, level: str) -> int:
    """``len(tokenize(text, level))``, without building the list."""
    if level == "char":
        return len(text)
    return sum(len(line.split()) + 1 for line in text.splitlines())


def build_vocab(tokens: list[str]) -> list[str]:
    """The distinct tokens, sorted so that the same corpus always gives the same ids."""
    return sorted(set(tokens))


def unigram_entropy(tokens: list[str]) -> float:
    """Entropy in nats of the token frequencies: the loss of the best context-free predictor."""
    counts = torch.tensor(list(Counter(tokens).values()), dtype=torch.float64)  # (V,)
    p = counts / counts.sum()  # (V,)
    return float(-(p * p.log()).sum())


def batchify(ids: torch.Tensor, num_streams: int) -> torch.Tensor:
    """(N,) ids -> (num_streams, N // num_streams); stream b is the b-th contiguous slice."""
    length = len(ids) // num_streams
    return ids[: num_streams * length].view(num_streams, length)  # (S, N//S)


class Windows(IterableDataset):
    """Consecutive windows of ``seq_len`` steps over every stream; y is x shifted by one.

    Iterable (not indexable) so that Lightning never wraps it in a shuffling or distributed sampler:
    order matters because the model carries its state from one window to the next.
    """

    def __init__(self, streams: torch.Tensor, seq_len: int):
        self.streams = streams  # (S, M)
        self.seq_len = seq_len

    def __len__(self) -> int:
        # The last window's targets need one token beyond it; a shorter tail window is dropped.
        return (self.streams.size(1) - 1) // self.seq_len

    @override
    def __iter__(self):
        T = self.seq_len
        for i in range(len(self)):
            x = self.streams[:, i * T : (i + 1) * T]  # (S, T)
            y = self.streams[:, i * T + 1 : (i + 1) * T + 1]  # (S, T)
            yield {"x": x, "y": y}


def check_corpus(corpus: Path, encoding: str) -> None:
    """Raise :class:`ConfigError` naming ``data.path`` unless ``corpus`` is a non-empty text file, or a folder with
    train.txt and valid.txt, whose files are ``encoding`` text."""
    where = quote(str(corpus))
    if corpus.is_dir():
        for name in ("train.txt", "valid.txt"):
            require(
                (corpus / name).is_file(),
                f"data.path folder {where} must hold train.txt and valid.txt (test.txt optional); {name} is missing",
            )
    else:
        require(corpus.is_file(), f"data.path must be a text file or a folder with train.txt, got missing {where}")
        require(corpus.stat().st_size > 0, f"data.path must be a non-empty text file, got empty {where}")
    for file in dict.fromkeys(corpus_files(corpus).values()):
        check_text(file, encoding)


class LMData(TaskDataModule):
    """Character- or word-level language modelling on a local text corpus or a Hub dataset.

    Args:
        path: a text file (its first 1 - val_fraction of characters train, the rest validate and
            test) or a folder holding train.txt, valid.txt and optionally test.txt (WikiText layout).
            None loads ``hub_dataset`` from the Hugging Face Hub.
        hub_dataset: Hub dataset name, used only when path is None: its train, validation and test splits,
            each the concatenation of its "text" column (``lm.yaml``: ``karpathy/tiny_shakespeare``, whose splits
            are the first 90 %, the next 5 % and the last 5 % of the text).
        hub_config: Hub dataset configuration (None: the dataset's only one), used only when path is None.
        level: "char" tokens are characters; "word" tokens are whitespace-separated words with
            "<eos>" at each line end. Tokens unseen in training map to "<unk>".
        seq_len: window length in tokens (the truncated-BPTT chunk).
        batch_size: number of parallel contiguous streams per device.
        val_fraction: share of a single text file held out for validation and test.
        cache_dir: cache folder of the datasets library.
        encoding: text encoding of the files of ``path`` (a Python codec name, e.g. utf-8, latin-1, utf-16).
    """

    def __init__(
        self,
        path: Optional[str] = None,
        hub_dataset: str = "wikitext",
        hub_config: Optional[str] = "wikitext-2-raw-v1",
        level: Literal["char", "word"] = "char",
        seq_len: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        cache_dir: str = "data/cache",
        encoding: str = "utf-8",
    ):
        super().__init__()
        require(level in ("char", "word"), f"data.level must be 'char' or 'word', got {quote(level)}")
        require(seq_len >= 1, f"data.seq_len must be >= 1, got {seq_len}")
        require(batch_size >= 1, f"data.batch_size must be >= 1, got {batch_size}")
        require(0 < val_fraction < 1, f"data.val_fraction must be in (0, 1), got {val_fraction}")
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ConfigError(
                f"data.encoding must be a text encoding (utf-8, latin-1, ...), got {quote(encoding)}"
            ) from None
        if path is not None:
            check_corpus(Path(path).expanduser(), encoding)
        self.save_hyperparameters()
        self._texts: Optional[dict[str, str]] = None
        self._vocab: Optional[list[str]] = None
        self._baseline: Optional[float] = None
        self._streams: dict[str, torch.Tensor] = {}
        self._world_size, self._rank = 1, 0

    def _load_texts(self) -> dict[str, str]:
        """The raw text of each split, read through ``datasets`` (cached in ``cache_dir``)."""
        hp = self.hparams
        if hp.path is None:
            # Offline mode (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE) reads the cache at once; otherwise a short probe
            # first: with the Hub out of reach, datasets would retry for minutes before failing.
            require(
                datasets.config.HF_HUB_OFFLINE or hub_reachable(),
                f"data.path is not set and the Hugging Face Hub ({datasets.config.HF_ENDPOINT}) cannot be reached to "
                f"load data.hub_dataset {quote(hp.hub_dataset)}: pass data.path (a text file, or a folder with "
                "train.txt and valid.txt), or set HF_HUB_OFFLINE=1 to use a cached copy",
            )
            try:
                hub = datasets.load_dataset(hp.hub_dataset, hp.hub_config, cache_dir=hp.cache_dir)
            except Exception as err:  # offline, unknown name, ...: the datasets library raises many kinds
                config = "" if hp.hub_config is None else f" ({quote(hp.hub_config)})"
                raise ConfigError(
                    f"data.hub_dataset {quote(hp.hub_dataset)}{config} could not be loaded from the Hugging Face Hub "
                    f"or its cache in data.cache_dir {quote(hp.cache_dir)} ({type(err).__name__}); offline, pass "
                    "data.path: a text file or a folder with train.txt and valid.txt"
                ) from err
            return {split: "".join(hub[split]["text"]) for split in SPLITS}
        corpus = Path(hp.path).expanduser()
        files = corpus_files(corpus)
        # One document per file keeps the text exactly as written, line breaks included.
        loaded = datasets.load_dataset(
            "text",
            data_files={k: str(v) for k, v in files.items()},
            sample_by="document",
            cache_dir=hp.cache_dir,
            encoding=hp.encoding,
        )
        texts = {split: "".join(loaded[split]["text"]) for split in files}
        if not corpus.is_dir():
            cut = int(len(texts["train"]) * (1 - hp.val_fraction))
            held_out = texts["train"][cut:]
            texts = {"train": texts["train"][:cut], "validation": held_out, "test": held_out}
        return texts

    def _tokens(self, split: str) -> list[str]:
        if self._texts is None:
            self._texts = self._load_texts()
        return tokenize(self._texts[split], self.hparams.level)

    @property
    def vocab(self) -> list[str]:
        """Token of each id, built on the training split on first use."""
        if self._vocab is None:
            train = self._tokens("train")
            require(self._texts["train"].strip() != "", f"data.path {quote(self.hparams.path)} has no training text")
            vocab = build_vocab(train)
            held_out = set(self._tokens("validation")) | set(self._tokens("test"))
            if UNK not in vocab and not held_out <= set(vocab):
                vocab.append(UNK)
            self._vocab, self._baseline = vocab, unigram_entropy(train)
        return self._vocab

    @property
    def spec(self) -> TaskSpec:
        size = len(self.vocab)
        return TaskSpec(
            name="lm",
            input_size=size,
            output_size=size,
            loss="ce",
            readout="all",
            baseline=self._baseline,
            input_tokens=True,
            perplexity=True,
            char_level=self.hparams.level == "char",
            stateful=True,
            # No default solved criterion: a good bpc or perplexity depends on the corpus. Set one where
            # it is known, e.g. StepsToSolve(metric="val/bpc", threshold=2.0, mode="min").
        )

    @override
    def batch_shape(self) -> BatchShape:
        # A batch's windows are views of the streams, which hold the corpus once: only the model's activations grow.
        hp = self.hparams
        return BatchShape(hp.batch_size, hp.seq_len, "data.seq_len", hp.seq_len, tensor_bytes=0)

    @override
    def check_stage(self, stage: str, world_size: int) -> None:
        for split in STAGE_SPLITS.get(stage, ()):
            if self._texts is None:
                self._texts = self._load_texts()
            self.check_windows(split, count_tokens(self._texts[split], self.hparams.level), world_size)

    def check_windows(self, split: str, tokens: int, world_size: int) -> None:
        """Raise :class:`ConfigError` naming ``data.seq_len`` unless ``split``, ``tokens`` long, cut into
        ``data.batch_size`` streams on each of ``world_size`` processes, leaves every stream longer than a window
        (the last window's targets reach one token beyond it)."""
        hp = self.hparams
        streams = hp.batch_size * world_size
        require(
            tokens // streams > hp.seq_len,
            f"data.seq_len ({hp.seq_len}) is too long: the {split} split has {tokens} tokens, too few for "
            f"{streams} streams longer than a window; lower data.seq_len or data.batch_size",
        )

    @override
    def state_dict(self) -> dict:
        """The vocabulary and baseline, saved in checkpoints so a resumed run keeps the same ids."""
        return {"vocab": list(self.vocab), "baseline": self._baseline}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self._vocab, self._baseline = list(state_dict["vocab"]), state_dict["baseline"]
        # Lightning restores after setup(): streams encoded with the old ids must be rebuilt.
        self._streams = {}

    @override
    def setup(self, stage: str) -> None:
        # Each rank keeps its own contiguous streams; all ranks get the same number of batches.
        if self.trainer is not None:
            self._world_size, self._rank = self.trainer.world_size, self.trainer.global_rank
        self._streams = {}

    def streams(self, split: str) -> torch.Tensor:
        """(batch_size, M) token ids of this rank's contiguous streams of ``split``."""
        if split not in self._streams:
            hp = self.hparams
            ids_of = {token: i for i, token in enumerate(self.vocab)}
            unk = ids_of.get(UNK)
            tokens = self._tokens(split)
            require(
                unk is not None or all(t in ids_of for t in set(tokens)),
                f"data.path {quote(hp.path)} holds tokens missing from the restored vocabulary",
            )
            ids = torch.tensor([ids_of.get(t, unk) for t in tokens], dtype=torch.long)  # (N,)
            self.check_windows(split, len(ids), self._world_size)
            everyone = batchify(ids, hp.batch_size * self._world_size)  # (B*W, N//(B*W))
            rows = slice(self._rank * hp.batch_size, (self._rank + 1) * hp.batch_size)
            self._streams[split] = everyone[rows]  # (B, M)
        return self._streams[split]

    @override
    def train_dataloader(self):
        return batch_loader(Windows(self.streams("train"), self.hparams.seq_len))

    @override
    def val_dataloader(self):
        return batch_loader(Windows(self.streams("validation"), self.hparams.seq_len))

    @override
    def test_dataloader(self):
        return batch_loader(Windows(self.streams("test"), self.hparams.seq_len))
