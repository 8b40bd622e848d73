"""Task generators and loaders, the contracts the layout tests leave open: each batch is a pure function of its
generator, the drawn distances and lengths follow their distributions, the smallest options work, the loader
serves batches in order and resumes where it stopped, and the text splits come from where they should."""

import json
import math
from pathlib import Path

import pytest
import torch

from seqmem.errors import ConfigError
from seqmem.tasks import (
    AddingData,
    AgreementData,
    CopyData,
    LMData,
    SyntheticBatches,
    adding_problem,
    agreement,
    agreement_batch,
    batch_loader,
    copy_memory,
    unigram_entropy,
)
from seqmem.tasks.agreement import load_lexicon
from seqmem.tasks.lm import Windows

LEXICON = Path(agreement.__file__).parent / "agreement_lexicon.json"  # the packaged one


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


GENERATORS = {
    "adding": lambda g: adding_problem(8, 12, g),
    "copy": lambda g: copy_memory(8, 5, g, num_symbols=4, num_copy=3),
    "agreement fixed distance": lambda g: agreement_batch(8, load_lexicon(LEXICON), 6, 12, 4, 0.5, g),
    "agreement drawn distance": lambda g: agreement_batch(8, load_lexicon(LEXICON), 6, 12, None, 0.5, g),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_a_batch_is_a_pure_function_of_its_generator(name):
    # The global random state differs between the two calls: nothing may be drawn from it.
    make = GENERATORS[name]
    torch.manual_seed(1)
    first = make(gen(5))
    torch.manual_seed(2)
    second = make(gen(5))
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert not torch.equal(make(gen(6))["x"], first["x"])


# ---- agreement: distances, lengths and buckets ----------------------------------------------------------------


def test_agreement_with_drawn_distances():
    """No attractors: everything after the subject is a filler, so the distance can be read off each row."""
    lexicon = load_lexicon(LEXICON)
    batch = agreement_batch(4000, lexicon, 6, 12, None, 0.0, gen(3))
    vocab = lexicon.vocab
    fillers = {vocab[i] for i in lexicon.fillers.tolist()}
    subjects = [vocab[i] for i in lexicon.subjects.tolist()]
    third_singular = {w for w, sg3 in zip(subjects, lexicon.subject_3sg.tolist(), strict=True) if sg3}
    lengths, distances = [], []
    for row, label, bucket in zip(batch["x"].tolist(), batch["y"].tolist(), batch["bucket"].tolist(), strict=True):
        words = [vocab[i] for i in row]
        length = sum(w != "<pad>" for w in words)
        distance = 1
        while words[-distance] in fillers:
            distance += 1
        subject = words[-distance]
        assert subject in subjects and label == int(subject in third_singular)
        assert 1 <= distance <= length and bucket == distance.bit_length() - 1
        # The subject opens the row, or follows a finished clause or the padding.
        assert distance == len(words) or words[-distance - 1] in {",", "<pad>"}
        lengths.append(length)
        distances.append(distance)
    # Lengths uniform on 6..12 (571 expected each), distances uniform on 1..length.
    counts = torch.bincount(torch.tensor(lengths), minlength=13)[6:]
    assert counts.min() > 450 and counts.max() < 700, counts
    ratio = torch.tensor(distances, dtype=torch.float64) / torch.tensor(lengths)
    assert ratio.mean().item() == pytest.approx(0.5 + 0.5 / 9, abs=0.02)  # E[d / n] = (n + 1) / 2n
    assert {1, 12} <= set(distances) and all(d <= n for d, n in zip(distances, lengths, strict=True))


def test_agreement_draws_every_word_of_each_table_independently_per_row():
    lexicon = load_lexicon(LEXICON)
    batch = agreement_batch(2000, lexicon, 12, 12, 6, 0.5, gen(4))
    x, y = batch["x"], batch["y"]
    subject = x[:, -6]  # (B,)
    between = x[:, -5:]  # (B, 5) fillers and object pronouns
    context = x[:, :-6]  # (B, 6) two clauses "PRON VERB ,"
    # Every subject of each class, every filler and object pronoun, every context pronoun and verb occurs.
    for label in (0, 1):
        expected = set(lexicon.subjects[lexicon.subject_3sg == bool(label)].tolist())
        assert set(subject[y == label].tolist()) == expected
    objects = set(lexicon.objects_sg.tolist()) | set(lexicon.objects_pl.tolist())
    assert set(between.flatten().tolist()) == set(lexicon.fillers.tolist()) | objects
    assert set(context[:, [0, 3]].flatten().tolist()) == set(lexicon.subjects.tolist())
    assert set(context[:, [1, 4]].flatten().tolist()) == set(lexicon.verbs.flatten().tolist())
    # Independently per row: at any one position the rows hold different fillers and different pronouns.
    singular = set(lexicon.objects_sg.tolist())
    for position in range(5):
        column = between[:, position].tolist()
        assert len(set(column)) > 10 and len(singular & set(column)) == len(singular)


def test_agreement_clauses_draw_their_verbs_independently():
    # Distance 1 in 12 tokens: 4 clauses before the subject; two neighbours share a verb in about 1 row in 20.
    lexicon = load_lexicon(LEXICON)
    x = agreement_batch(2000, lexicon, 12, 12, 1, 0.3, gen(6))["x"]
    back = x[:, :-1].flip(1)  # (B, 11) from the subject backwards: ",", VERB, PRON, ",", VERB, PRON, ...
    lemma = {t: row for row, pair in enumerate(lexicon.verbs.tolist()) for t in pair}
    verbs = [[lemma[t] for t in row] for row in back[:, [1, 4, 7, 10]].tolist()]  # (B, 4) clause 0..3
    for clause in range(3):
        same = sum(row[clause] == row[clause + 1] for row in verbs) / len(verbs)
        assert same < 0.1, clause


def test_agreement_context_fills_long_sentences_from_the_start():
    # Distance 1 in 50 tokens: 16 context clauses before the subject, every one "PRON VERB ," and agreeing.
    lexicon = load_lexicon(LEXICON)
    x = agreement_batch(64, lexicon, 50, 50, 1, 0.3, gen(5))["x"]
    comma = lexicon.comma
    subjects = lexicon.subjects.tolist()
    third = dict(zip(subjects, lexicon.subject_3sg.tolist(), strict=True))
    forms = {t: form for pair in lexicon.verbs.tolist() for form, t in enumerate(pair)}
    for row in x.tolist():
        clauses = row[:-1][::-1]  # read backwards from the subject: ",", VERB, PRON, ",", VERB, PRON, ...
        for k, token in enumerate(clauses):
            role = k % 3
            if role == 0:
                assert token == comma
            elif role == 1:
                pronoun = clauses[k + 1] if k + 1 < len(clauses) else None
                assert pronoun is None or forms[token] == int(third[pronoun])
            else:
                assert token in subjects


def test_agreement_attractor_probability_zero_and_one():
    lexicon = load_lexicon(LEXICON)
    objects = set(lexicon.objects_sg.tolist()) | set(lexicon.objects_pl.tolist())
    never = agreement_batch(500, lexicon, 10, 10, 8, 0.0, gen(1))["x"][:, -7:]
    always = agreement_batch(500, lexicon, 10, 10, 8, 1.0, gen(1))["x"][:, -7:]  # the 7 tokens after the subject
    assert not any(t in objects for t in never.flatten().tolist())
    assert all(t in objects for t in always.flatten().tolist())


def test_agreement_smallest_sentences():
    data = AgreementData(min_len=2, max_len=2, distance=2, batch_size=1, train_batches=1, val_batches=1, seed=0)
    batch = next(iter(data.train_dataloader()))
    words = [data.lexicon.vocab[i] for i in batch["x"][0].tolist()]
    assert len(words) == 2 and words[0] in [data.lexicon.vocab[i] for i in data.lexicon.subjects.tolist()]
    assert data.spec.bucket_names == ("d1", "d2-3") and batch["bucket"].tolist() == [1]


@pytest.mark.parametrize("attractor_prob", [0.0, 1.0])
def test_agreement_extremes_are_accepted(attractor_prob):
    # The subject right before the verb slot, and no or only object pronouns in between.
    data = AgreementData(min_len=3, max_len=3, distance=1, attractor_prob=attractor_prob, batch_size=4)
    batch = next(iter(data.train_dataloader()))
    subjects = set(data.lexicon.subjects.tolist())
    assert all(t in subjects for t in batch["x"][:, -1].tolist()) and batch["bucket"].tolist() == [0] * 4


def test_the_default_lexicon_is_the_packaged_one_from_any_working_directory(workdir):
    assert not (workdir / "data").exists()
    assert AgreementData().lexicon.vocab == load_lexicon(LEXICON).vocab == load_lexicon().vocab


def write_lexicon(path: Path, **changes) -> Path:
    raw = json.loads(LEXICON.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))
    return path


def test_a_relative_lexicon_is_read_from_the_working_directory(workdir):
    (workdir / "data").mkdir()
    write_lexicon(workdir / "data" / "agreement_lexicon.json", fillers=["often"])
    assert AgreementData(lexicon="data/agreement_lexicon.json").lexicon.vocab[-2:] == ("often", ",")
    assert AgreementData().lexicon.vocab == load_lexicon().vocab  # none given: the packaged one, not the local file


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"subjects": []}),  # keys missing
        json.dumps({"subjects": 1, "verbs": [], "objects": [], "fillers": []}),  # wrong types
    ],
    ids=["not json", "missing keys", "wrong types"],
)
def test_an_invalid_lexicon_is_a_config_error(tmp_path, content):
    path = tmp_path / "lexicon.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=r"^data\.lexicon .* is not a valid agreement lexicon") as err:
        load_lexicon(path)
    assert repr(str(path)) in str(err.value)  # the message names the file


def test_a_missing_lexicon_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "none.json"
    with pytest.raises(ConfigError) as err:
        load_lexicon(path)
    assert str(err.value) == f"data.lexicon must be an existing json file, got {str(path)!r}"


def test_one_object_pronoun_of_each_number_is_enough(tmp_path):
    objects = [{"word": "him", "number": "sg"}, {"word": "them", "number": "pl"}]
    lexicon = load_lexicon(write_lexicon(tmp_path / "lexicon.json", objects=objects))
    assert [lexicon.vocab[i] for i in (*lexicon.objects_sg.tolist(), *lexicon.objects_pl.tolist())] == ["him", "them"]


@pytest.mark.parametrize(
    "changes",
    [
        {"subjects": [{"word": "he", "person": 3, "number": "sg"}]},  # no non-3sg subject
        {"subjects": [{"word": "we", "person": 1, "number": "pl"}]},  # no 3sg subject
        {"objects": [{"word": "me", "number": "sg"}]},  # no plural object
        {"objects": [{"word": "us", "number": "pl"}]},  # no singular object
    ],
    ids=["only 3sg", "no 3sg", "no plural object", "no singular object"],
)
def test_a_lexicon_that_cannot_make_both_labels_and_attractors_is_refused(tmp_path, changes):
    path = write_lexicon(tmp_path / "lexicon.json", **changes)
    with pytest.raises(ConfigError) as err:
        load_lexicon(path)
    message = f"data.lexicon {str(path)!r} needs 3sg and non-3sg subjects and singular and plural objects"
    assert str(err.value) == message


# ---- the smallest options --------------------------------------------------------------------------------------


def test_adding_of_length_two_marks_both_steps():
    data = AddingData(seq_len=2, batch_size=1, train_batches=1, val_batches=1, seed=0)
    batch = next(iter(data.train_dataloader()))
    assert batch["x"][0, :, 1].tolist() == [1.0, 1.0]
    assert batch["y"].item() == pytest.approx(batch["x"][0, :, 0].sum().item())


def test_copy_of_one_symbol_from_two():
    data = CopyData(seq_len=1, num_symbols=2, num_copy=1, batch_size=64)
    batch = next(iter(data.train_dataloader()))
    assert batch["x"].shape == (64, 3)
    assert set(batch["x"][:, 0].tolist()) == {1, 2} and (batch["x"][:, 1] == 3).all() and (batch["x"][:, 2] == 0).all()
    assert torch.equal(batch["y"][:, 2], batch["x"][:, 0]) and (batch["y"][:, :2] == 0).all()
    spec = data.spec
    assert (spec.input_size, spec.output_size, spec.accuracy_steps) == (4, 3, 1)
    assert spec.baseline == pytest.approx(math.log(2) / 3)


# ---- streams and the loader ----------------------------------------------------------------------------------


def test_val_and_test_streams_never_meet_the_training_stream_of_any_seed():
    firsts = {}
    for seed in range(6):
        data = AddingData(seq_len=4, batch_size=2, train_batches=2, val_batches=2, seed=seed)
        for split in ("train", "val", "test"):
            loader = getattr(data, f"{split}_dataloader")()
            firsts[seed, split] = [batch["x"] for batch in loader]
    pairs = list(firsts.items())
    for i, (key_a, a) in enumerate(pairs):
        for key_b, b in pairs[i + 1 :]:
            assert not any(torch.equal(x, y) for x in a for y in b), (key_a, key_b)


def numbered(generator: torch.Generator) -> dict:
    return {"x": torch.randint(0, 10**6, (1,), generator=generator)}


def test_the_loader_serves_batches_in_order_without_touching_the_global_random_state():
    dataset = SyntheticBatches(numbered, num_batches=5, seed=3)
    loader = batch_loader(dataset)
    state = torch.get_rng_state()
    served = [batch["x"] for batch in loader]
    assert torch.equal(torch.get_rng_state(), state)
    assert [x.item() for x in served] == [dataset[i]["x"].item() for i in range(5)]
    assert len({x.item() for x in served}) == 5


def test_the_loader_resumes_at_the_next_unseen_batch():
    dataset = SyntheticBatches(numbered, num_batches=5, seed=3)
    expected = [dataset[i]["x"].item() for i in range(5)]
    loader = batch_loader(dataset)
    assert loader.state_dict() == {"served": 0}  # a checkpoint before the first batch resumes at the first
    iterator = iter(loader)
    next(iterator), next(iterator)
    assert loader.state_dict() == {"served": 2}
    resumed = batch_loader(dataset)
    resumed.load_state_dict(loader.state_dict())
    assert [b["x"].item() for b in resumed] == expected[2:]
    assert resumed.state_dict() == {"served": 5}
    assert [b["x"].item() for b in resumed] == expected  # the next pass starts from the beginning
    after_epoch = batch_loader(dataset)
    after_epoch.load_state_dict({"served": 5})  # stopped after the last batch: the next epoch starts at 0
    assert [b["x"].item() for b in after_epoch] == expected


def test_windows_need_one_token_beyond_each_window():
    streams = torch.arange(24).view(2, 12)  # (S, M), M = 3 windows of 4 with no target after the last
    windows = list(Windows(streams, 4))
    assert len(Windows(streams, 4)) == len(windows) == 2
    assert torch.equal(windows[1]["x"], streams[:, 4:8]) and torch.equal(windows[1]["y"], streams[:, 5:9])
    assert len(Windows(torch.arange(26).view(2, 13), 4)) == 3


def test_unigram_entropy_in_nats_in_double_precision():
    exact = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert unigram_entropy(list("aabc")) == pytest.approx(exact, rel=1e-15)
    assert unigram_entropy(list("aaaa")) == 0.0


# ---- lm text sources ----------------------------------------------------------------------------------------


def test_a_folder_with_a_test_split_serves_it_as_test(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("abcabcabc" * 4)
    (corpus / "valid.txt").write_text("aaaaaaaaa")
    (corpus / "test.txt").write_text("bbbbbbbbb")
    data = LMData(path=str(corpus), seq_len=4, batch_size=1, cache_dir=str(tmp_path / "cache"))
    assert data.vocab == ["a", "b", "c"]  # held-out text uses only training characters: no <unk>
    b = data.vocab.index("b")
    assert (next(iter(data.test_dataloader()))["x"] == b).all()
    assert (next(iter(data.val_dataloader()))["x"] == data.vocab.index("a")).all()


def test_a_window_needs_a_stream_longer_than_it(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("abcdefghijk")  # 11 characters: one window of 10 and its last target
    (corpus / "valid.txt").write_text("abcdefghijk")
    data = LMData(path=str(corpus), seq_len=10, batch_size=1, cache_dir=str(tmp_path / "cache"))
    assert len(data.train_dataloader()) == 1
    too_long = LMData(path=str(corpus), seq_len=11, batch_size=1, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"data\.seq_len \(11\) is too long"):
        too_long.train_dataloader()
    two_streams = LMData(path=str(corpus), seq_len=5, batch_size=2, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as err:  # 2 streams of 5 characters: no window of 5 with its targets
        two_streams.train_dataloader()
    assert str(err.value) == (
        "data.seq_len (5) is too long: the train split has 11 tokens, too few for 2 streams longer than a window; "
        "lower data.seq_len or data.batch_size"
    )


def test_a_restored_vocabulary_missing_tokens_is_refused(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("abcabcabc")
    (corpus / "valid.txt").write_text("abcabcabc")
    data = LMData(path=str(corpus), seq_len=2, batch_size=1, cache_dir=str(tmp_path / "cache"))
    data.load_state_dict({"vocab": ["a", "b"], "baseline": 1.0})  # "c" has no id and there is no <unk>
    with pytest.raises(ConfigError, match="missing from the restored vocabulary"):
        data.train_dataloader()
    data.load_state_dict({"vocab": ["<unk>", "a", "b"], "baseline": 1.0})  # with <unk>, "c" maps to it
    assert next(iter(data.train_dataloader()))["x"].tolist() == [[1, 2]]


def test_a_local_corpus_is_converted_into_the_given_cache(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text("abcabcabcabc")
    cache = tmp_path / "cache"
    LMData(path=str(corpus), seq_len=2, batch_size=1, cache_dir=str(cache)).vocab
    assert cache.is_dir() and any(cache.iterdir())


def test_an_unreachable_hub_names_the_error_and_the_way_out(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr("seqmem.tasks.lm.datasets.load_dataset", offline)
    with pytest.raises(ConfigError) as err:
        LMData(hub_dataset="some/corpus", hub_config="raw", cache_dir=str(tmp_path)).vocab
    message = str(err.value)
    assert message.startswith("data.hub_dataset 'some/corpus' ('raw') could not be loaded")
    assert "(ConnectionError)" in message and message.endswith("a text file or a folder with train.txt and valid.txt")


def test_the_hub_dataset_is_read_split_by_split(tmp_path, monkeypatch):
    calls = []

    def load_dataset(name, config, cache_dir):
        calls.append((name, config, cache_dir))
        return {
            "train": {"text": ["ab\n", "ba\n"] * 10},
            "validation": {"text": ["ab\n"] * 5},
            "test": {"text": ["ba\n"] * 5},
        }

    monkeypatch.setattr("seqmem.tasks.lm.datasets.load_dataset", load_dataset)
    data = LMData(hub_dataset="some/corpus", hub_config="raw", seq_len=2, batch_size=1, cache_dir=str(tmp_path))
    assert data.vocab == ["\n", "a", "b"]
    assert calls == [("some/corpus", "raw", str(tmp_path))]
    decode = lambda ids: "".join(data.vocab[i] for i in ids)  # noqa: E731
    assert decode(next(iter(data.val_dataloader()))["x"][0].tolist()) == "ab"
    assert decode(next(iter(data.test_dataloader()))["x"][0].tolist()) == "ba"
    assert data.spec.baseline == pytest.approx(unigram_entropy(list("ab\nba\n" * 10)))


@pytest.mark.parametrize("val_fraction", [0.01, 0.99])
def test_any_held_out_fraction_inside_zero_one_is_accepted(val_fraction):
    LMData(val_fraction=val_fraction, seq_len=1, batch_size=1)  # nothing is read until it is needed


def test_a_batch_once_made_is_served_again_from_memory_up_to_the_cap():
    made = []

    def counted(generator: torch.Generator) -> dict:
        made.append(1)
        return numbered(generator)  # x: (1,) int64, 8 bytes

    fresh = SyntheticBatches(numbered, num_batches=4, seed=3, cache_bytes=0)  # the reference: made every time
    kept = SyntheticBatches(counted, num_batches=4, seed=3, cache_bytes=3 * 8)  # room for three of the four
    for _ in range(3):  # three epochs
        assert [kept[i]["x"].item() for i in range(4)] == [fresh[i]["x"].item() for i in range(4)]
    assert len(made) == 4 + 2 * 1  # every batch made once; the fourth, beyond the cap, made every epoch
    assert kept[0] is kept[0]
