"""Task generators and datamodules: shapes, exact targets, seeding, baselines and config errors."""

import itertools
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from conftest import SHARED_DATA

from seqmem.errors import QUOTE_LIMIT, ConfigError, quote
from seqmem.tasks import (
    AddingData,
    AgreementData,
    CopyData,
    LMData,
    adding_problem,
    agreement_batch,
    batchify,
    build_vocab,
    copy_memory,
    load_lexicon,
)
from seqmem.tasks.lm import HUB_PROBE_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
WIKITEXT = SHARED_DATA / "wikitext-2"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def first_batch(dm, split: str = "train") -> dict:
    return next(iter(getattr(dm, f"{split}_dataloader")()))


def assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def batches_differ(a: dict, b: dict) -> bool:
    return not torch.equal(a["x"], b["x"])


# --- adding ---------------------------------------------------------------------------------


def test_adding_shapes_markers_and_target():
    B, T = 256, 37
    batch = adding_problem(B, T, gen())
    x, y = batch["x"], batch["y"]
    assert x.shape == (B, T, 2) and x.dtype == torch.float32
    assert y.shape == (B,) and y.dtype == torch.float32
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(markers.unique().tolist()) <= {0.0, 1.0}
    half = T // 2
    assert (markers[:, :half].sum(1) == 1).all() and (markers[:, half:].sum(1) == 1).all()
    torch.testing.assert_close(y, (values * markers).sum(1))


def test_adding_baseline_monte_carlo():
    dm = AddingData(seq_len=10)
    y = adding_problem(200_000, 10, gen(1))["y"]
    assert dm.spec.baseline == pytest.approx(1 / 6)
    assert ((y - 1) ** 2).mean().item() == pytest.approx(dm.spec.baseline, abs=0.005)
    assert dm.spec.loss == "mse" and dm.spec.readout == "last" and dm.spec.input_size == 2


def test_adding_datamodule_seeding_and_disjoint_splits():
    dm = AddingData(seq_len=20, batch_size=8, train_batches=3, val_batches=2, seed=5)
    assert_batches_equal(first_batch(dm), first_batch(AddingData(seq_len=20, batch_size=8, seed=5)))
    assert batches_differ(first_batch(dm), first_batch(AddingData(seq_len=20, batch_size=8, seed=6)))
    train = [b["x"] for b in dm.train_dataloader()]
    held_out = [b["x"] for b in dm.val_dataloader()] + [b["x"] for b in dm.test_dataloader()]
    assert len(train) == 3 and len(held_out) == 4
    for v in held_out:
        assert not any(torch.equal(v, t) for t in train)
    assert not torch.equal(held_out[0], held_out[2])  # val and test differ too
    # Neighbouring seeds must not share streams across splits either.
    assert not torch.equal(first_batch(AddingData(seq_len=20, batch_size=8, seed=6))["x"], held_out[0])


# --- copy -----------------------------------------------------------------------------------


def test_copy_layout():
    B, T = 64, 30
    batch = copy_memory(B, T, gen())
    x, y = batch["x"], batch["y"]
    assert x.shape == y.shape == (B, T + 20) and x.dtype == y.dtype == torch.long
    symbols = x[:, :10]
    assert ((symbols >= 1) & (symbols <= 8)).all()
    assert (x[:, 10 : T + 9] == 0).all()
    assert (x[:, T + 9] == 9).all()  # the marker, right after T-1 blanks
    assert (x[:, T + 10 :] == 0).all()
    assert torch.equal(y[:, -10:], symbols)
    assert (y[:, : T + 10] == 0).all()


def test_copy_spec_and_seeding():
    dm = CopyData(seq_len=100, batch_size=4)
    spec = dm.spec
    assert spec.baseline == pytest.approx(10 * math.log(8) / 120)
    assert (spec.input_size, spec.output_size, spec.accuracy_steps) == (10, 9, 10)
    assert spec.input_tokens and spec.loss == "ce" and spec.readout == "all"
    assert_batches_equal(first_batch(dm), first_batch(CopyData(seq_len=100, batch_size=4)))
    assert batches_differ(first_batch(dm), first_batch(CopyData(seq_len=100, batch_size=4, seed=1)))
    assert batches_differ(first_batch(dm), first_batch(dm, "val"))


# --- agreement ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agreement():
    return AgreementData(min_len=6, max_len=12, batch_size=4096)


def words_of(dm: AgreementData, ids: torch.Tensor) -> list[str]:
    return [dm.lexicon.vocab[i] for i in ids.tolist()]


def test_agreement_labels_attractors_and_padding(agreement):
    dm, lex = agreement, agreement.lexicon
    distance = 5
    batch = agreement_batch(2000, lex, 6, 12, distance, 0.5, gen())
    x, y = batch["x"], batch["y"]
    assert x.shape == (2000, 12) and x.dtype == y.dtype == torch.long and y.shape == (2000,)
    third = {"he", "she", "it"}
    singular_objects, plural_objects = {"me", "him", "her"}, {"us", "them"}
    fillers = set(words_of(dm, lex.fillers))
    # counts[label][object is plural]: intervening pronouns must carry no information about the label.
    counts = {0: [0, 0], 1: [0, 0]}
    for row, label in zip(x, y.tolist(), strict=True):
        words = words_of(dm, row)
        length = sum(w != "<pad>" for w in words)
        assert 6 <= length <= 12
        assert all(w == "<pad>" for w in words[: 12 - length])  # padding only on the left
        subject = words[-distance]
        assert label == int(subject in third)
        for w in words[-distance + 1 :]:
            if w in singular_objects | plural_objects:
                counts[label][w in plural_objects] += 1
            else:
                assert w in fillers
    pronouns = sum(map(sum, counts.values()))
    assert abs(pronouns / (2000 * (distance - 1)) - 0.5) < 0.03  # attractor_prob = 0.5
    for label in (0, 1):
        # Attractors (opposite number) and congruent pronouns equally likely whatever the subject.
        assert abs(counts[label][1] / sum(counts[label]) - 0.5) < 0.05


def test_agreement_context_clauses_agree(agreement):
    lex = agreement.lexicon
    batch = agreement_batch(500, lex, 12, 12, 1, 0.3, gen(2))
    base_of = {agreement.lexicon.vocab[t]: "base" for t in lex.verbs[:, 0].tolist()}
    base_of.update({agreement.lexicon.vocab[t]: "3sg" for t in lex.verbs[:, 1].tolist()})
    for row in batch["x"]:
        words = words_of(agreement, row)
        assert words[-2] == ","  # the subject follows a finished clause
        subjects = set(words_of(agreement, lex.subjects))
        for pronoun, verb in itertools.pairwise(words):
            if pronoun in subjects:
                assert base_of[verb] == ("3sg" if pronoun in {"he", "she", "it"} else "base")


def test_agreement_balance_buckets_and_spec(agreement):
    batch = first_batch(agreement)
    assert batch["y"].float().mean().item() == pytest.approx(0.5, abs=0.03)
    spec = agreement.spec
    assert spec.bucket_names == ("d1", "d2-3", "d4-7", "d8-15")
    assert spec.input_size == len(agreement.lexicon.vocab) and agreement.lexicon.vocab[0] == "<pad>"
    assert spec.output_size == 2 and spec.baseline == pytest.approx(math.log(2))
    # The distance is recoverable from the bucket: the subject sits in [2^b, 2^(b+1)) from the end.
    x, bucket = batch["x"], batch["bucket"]
    subjects = set(agreement.lexicon.subjects.tolist())
    for row, b in zip(x[:200], bucket[:200].tolist(), strict=True):
        window = row.flip(0)[2**b - 1 : 2 ** (b + 1) - 1].tolist()
        assert any(t in subjects for t in window)
    assert set(bucket.tolist()) == {0, 1, 2, 3}


def test_agreement_stretched_regime_and_seeding():
    dm = AgreementData(min_len=50, max_len=50, distance=30, batch_size=16)
    batch = first_batch(dm)
    assert batch["x"].shape == (16, 50) and (batch["x"] != 0).all()
    assert (batch["bucket"] == 4).all() and dm.spec.bucket_names[4] == "d16-31"
    assert_batches_equal(batch, first_batch(AgreementData(min_len=50, max_len=50, distance=30, batch_size=16)))
    assert batches_differ(batch, first_batch(dm, "val"))


# --- language modelling ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        yield tmp_path_factory.mktemp("hf_cache")


@pytest.fixture(scope="module")
def shakespeare(offline):
    if not SHAKESPEARE.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {SHAKESPEARE} (shared offline data sets)")
    return LMData(path=str(SHAKESPEARE), seq_len=50, batch_size=8, cache_dir=str(offline))


def test_pure_helpers():
    assert build_vocab(list("hello")) == ["e", "h", "l", "o"]
    streams = batchify(torch.arange(23), 4)
    assert torch.equal(streams, torch.arange(20).view(4, 5))


def test_lm_char_windows_are_contiguous(shakespeare):
    spec = shakespeare.spec
    assert spec.input_size == spec.output_size == 65 == len(shakespeare.vocab)
    assert spec.char_level and spec.stateful and spec.perplexity and spec.readout == "all"
    text = SHAKESPEARE.read_text()
    cut = int(len(text) * 0.9)
    decode = lambda ids: "".join(shakespeare.vocab[i] for i in ids.tolist())  # noqa: E731
    windows = list(shakespeare.train_dataloader())
    stream_len = cut // 8
    assert len(windows) == (stream_len - 1) // 50
    for a, b in zip(windows[:3], windows[1:4], strict=True):
        assert a["x"].shape == (8, 50) and a["x"].dtype == torch.long
        assert torch.equal(a["y"][:, :-1], a["x"][:, 1:])  # y is x shifted by one
        assert torch.equal(a["y"][:, -1], b["x"][:, 0])  # window i+1 continues window i
    for s in range(8):  # stream s is the s-th contiguous slice of the training text
        assert decode(windows[0]["x"][s]) == text[s * stream_len : s * stream_len + 50]
    val = first_batch(shakespeare, "val")["x"]
    assert decode(val[0]) == text[cut : cut + 50]


def test_lm_baseline_is_unigram_entropy(shakespeare):
    text = SHAKESPEARE.read_text()
    text = text[: int(len(text) * 0.9)]
    counts = torch.tensor([text.count(c) for c in set(text)], dtype=torch.float64)
    p = counts / counts.sum()
    assert shakespeare.spec.baseline == pytest.approx(float(-(p * p.log()).sum()))


def test_lm_vocab_round_trips_through_state_dict(shakespeare, offline):
    state = shakespeare.state_dict()
    fresh = LMData(path=str(SHAKESPEARE), seq_len=50, batch_size=8, cache_dir=str(offline))
    fresh.load_state_dict(state)
    assert fresh.vocab == shakespeare.vocab and fresh.spec == shakespeare.spec
    # A restored, different mapping is what the batches are encoded with, even after setup().
    shuffled = {"vocab": list(reversed(state["vocab"])), "baseline": state["baseline"]}
    fresh.setup("fit")
    fresh.load_state_dict(shuffled)
    x = first_batch(fresh)["x"]
    assert torch.equal(x, 64 - first_batch(shakespeare)["x"])


def test_lm_rank_sharding(shakespeare, offline):
    shards = []
    for rank in range(2):
        dm = LMData(path=str(SHAKESPEARE), seq_len=50, batch_size=8, cache_dir=str(offline))
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        dm.setup("fit")
        shards.append(dm.streams("train"))
    text = SHAKESPEARE.read_text()
    ids = torch.tensor([shakespeare.vocab.index(c) for c in text[: int(len(text) * 0.9)]])
    everyone = batchify(ids, 16)  # both ranks' streams, rank r owns rows 8r..8r+7
    assert shards[0].shape == shards[1].shape == (8, everyone.size(1))
    assert torch.equal(shards[0], everyone[:8]) and torch.equal(shards[1], everyone[8:])
    assert not torch.equal(shards[0], shards[1])


def test_lm_word_level_folder(tmp_path, offline):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("the cat sat\nthe dog ran\n" * 20)
    (corpus / "valid.txt").write_text("the bird sat\n" * 20)
    dm = LMData(path=str(corpus), level="word", seq_len=4, batch_size=2, cache_dir=str(offline))
    assert dm.vocab == ["<eos>", "cat", "dog", "ran", "sat", "the", "<unk>"]
    assert not dm.spec.char_level
    val = first_batch(dm, "val")["x"]
    words = [dm.vocab[i] for i in val[0].tolist()]
    assert words == ["the", "<unk>", "sat", "<eos>"]
    test = first_batch(dm, "test")["x"]  # no test.txt: the validation split doubles as test
    assert torch.equal(val, test)


# --- configuration errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "option"),
    [
        (lambda: AddingData(seq_len=1), "data.seq_len"),
        (lambda: AddingData(batch_size=0), "data.batch_size"),
        (lambda: CopyData(seq_len=0), "data.seq_len"),
        (lambda: CopyData(val_batches=0), "data.val_batches"),
        (lambda: AgreementData(min_len=1), "data.min_len"),
        (lambda: AgreementData(min_len=8, max_len=7), "data.max_len"),
        (lambda: AgreementData(min_len=6, max_len=12, distance=7), "data.distance"),
        (lambda: AgreementData(distance=0), "data.distance"),
        (lambda: AgreementData(attractor_prob=1.5), "data.attractor_prob"),
        (lambda: AgreementData(lexicon="no/such/lexicon.json"), "data.lexicon"),
        (lambda: LMData(path="no/such/corpus.txt"), "data.path"),
        (lambda: LMData(seq_len=0), "data.seq_len"),
        (lambda: LMData(val_fraction=1.0), "data.val_fraction"),
    ],
)
def test_config_errors_name_the_option(make, option):
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")) as err:
        make()
    assert "\n" not in str(err.value)


def test_distance_longer_than_sequence_message():
    with pytest.raises(ConfigError) as err:
        AgreementData(min_len=20, max_len=30, distance=30)
    message = str(err.value)
    assert "data.distance" in message and "data.min_len" in message and "longer than the sequence" in message


def test_empty_corpus_and_missing_train_split(tmp_path, offline):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"data\.path"):
        LMData(path=str(empty), cache_dir=str(offline))
    blank = tmp_path / "blank_words.txt"
    blank.write_text("   ")
    with pytest.raises(ConfigError, match=r"data\.path"):
        LMData(path=str(blank), level="word", val_fraction=0.5, cache_dir=str(offline)).spec
    no_train = WIKITEXT if WIKITEXT.is_dir() else tmp_path
    with pytest.raises(ConfigError, match=r"data\.path.*train\.txt"):
        LMData(path=str(no_train), cache_dir=str(offline))


def test_lm_too_short_for_a_window(tmp_path, offline):
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 3)
    dm = LMData(path=str(short), seq_len=10, batch_size=4, cache_dir=str(offline))
    with pytest.raises(ConfigError, match=r"data\.seq_len"):
        dm.train_dataloader()


def test_hub_dataset_unreachable_is_a_config_error(tmp_path):
    # Offline (conftest sets HF_DATASETS_OFFLINE=1) the Hub path cannot load: one line naming the
    # option, pointing at data.path, instead of the datasets library's traceback.
    data = LMData(hub_dataset="no-such-user/no-such-dataset", cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"data\.hub_dataset .*data\.path") as err:
        data.spec
    assert "\n" not in str(err.value)


def test_hub_out_of_reach_fails_fast_instead_of_retrying(tmp_path, monkeypatch):
    # Online mode with the Hub out of reach: a short probe fails at once; datasets would retry for minutes.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append(args))
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"data\.path is not set .*cannot be reached.*HF_HUB_OFFLINE=1") as err:
        LMData(cache_dir=str(tmp_path)).spec
    assert time.monotonic() - start < HUB_PROBE_TIMEOUT
    assert calls == [] and "\n" not in str(err.value)


def test_a_reachable_hub_goes_on_to_the_datasets_loader(tmp_path, monkeypatch):
    # Any HTTP answer counts (this server answers 501 to everything): the real loading path runs.
    server = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append(args)
        return {split: {"text": ["abcab\n" * 50]} for split in ("train", "validation", "test")}

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    try:
        assert LMData(cache_dir=str(tmp_path)).vocab == ["\n", "a", "b", "c"]
    finally:
        server.shutdown()
    assert calls == [("wikitext", "wikitext-2-raw-v1")]


def test_lm_reads_another_encoding_when_told(tmp_path, offline):
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("café naïve " * 200).encode("latin-1"))
    with pytest.raises(
        ConfigError, match=r"data\.path file .*latin\.txt.* is not utf-8 text .*--data\.encoding"
    ) as err:
        LMData(path=str(latin), cache_dir=str(offline))
    assert "\n" not in str(err.value)
    dm = LMData(path=str(latin), encoding="latin-1", seq_len=10, batch_size=2, cache_dir=str(offline))
    assert {"é", "ï"} <= set(dm.vocab)
    with pytest.raises(ConfigError, match=r"data\.encoding .*'no-such-codec'"):
        LMData(path=str(latin), encoding="no-such-codec")


def test_binary_corpus_is_one_line_naming_the_file(tmp_path):
    nul = tmp_path / "nul.bin"
    nul.write_bytes(b"abc\0def" * 100)  # valid UTF-8, but NUL characters: not text
    with pytest.raises(ConfigError, match=r"data\.path file .*nul\.bin.* NUL"):
        LMData(path=str(nul))
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.txt").write_text("plain text\n")
    (folder / "valid.txt").write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=r"data\.path file .*valid\.txt.* is not utf-8 text"):
        LMData(path=str(folder))


def test_the_agreement_lexicon_is_package_data_read_from_any_directory(workdir):
    # An installed wheel has no repository around the package: the default lexicon comes from inside it.
    packaged = resources.files("seqmem.tasks").joinpath("agreement_lexicon.json")
    assert packaged.is_file()
    dm = AgreementData()
    assert dm.hparams.lexicon is None
    assert dm.lexicon.vocab == load_lexicon(Path(str(packaged))).vocab


def test_every_data_file_of_the_package_is_declared_package_data():
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = REPO_ROOT / "seqmem"
    data_files = {
        path
        for path in package.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    declared = {path for pattern in patterns["seqmem"] for path in package.glob(pattern)}
    assert data_files == declared
    assert package / "tasks" / "agreement_lexicon.json" in declared


def test_a_binary_lexicon_is_one_short_line(tmp_path):
    binary = tmp_path / "lexicon.bin"
    binary.write_bytes(bytes(range(256)) * 2000)  # half a megabyte, like --data.lexicon /bin/ls
    with pytest.raises(ConfigError, match=r"data\.lexicon .*lexicon\.bin.* not UTF-8") as err:
        AgreementData(lexicon=str(binary))
    assert len(str(err.value)) < 3 * QUOTE_LIMIT and "\n" not in str(err.value)
    garbage = tmp_path / "lexicon.json"
    garbage.write_text('{"subjects": ' + '"x" ' * 100_000 + "}")
    with pytest.raises(ConfigError, match=r"data\.lexicon .* not a valid agreement lexicon") as err:
        AgreementData(lexicon=str(garbage))
    assert len(str(err.value)) < 3 * QUOTE_LIMIT


def test_quote_caps_what_an_error_repeats():
    assert quote("short") == "'short'"
    long = quote("x" * 100_000)
    assert len(long) == QUOTE_LIMIT and long.endswith("… (100002 chars)")
    assert "\n" not in quote("a\nb" * 1000)
