"""Pronoun–verb agreement: after reading a clause, predict whether the verb takes the -s form.

The subject pronoun sits ``distance`` tokens before the verb slot, with filler words and object
pronouns in between. An object pronoun of the opposite number is an *attractor* ("he ... them ___"),
as in Linzen et al. (2016). The number of every intervening pronoun is drawn independently of the
subject: were attractors always opposite, "them" would give the answer away without any memory.
Earlier clauses ("I work , he works ,") show the agreement rule in context.
"""

import functools
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import torch

from seqmem.errors import ConfigError, quote, require, shorten
from seqmem.tasks.spec import BatchShape, SyntheticTask, TaskSpec

PAD = "<pad>"
#: The lexicon shipped inside the package, next to this module (package data in pyproject.toml).
PACKAGED_LEXICON = "agreement_lexicon.json"


@dataclass(frozen=True)
class AgreementLexicon:
    """Token-id tables of a lexicon; id 0 is the padding token.

    Args:
        vocab: word of each token id.
        subjects: (S,) ids of the subject pronouns.
        subject_3sg: (S,) bool, the pronoun takes the 3rd-person-singular verb form.
        verbs: (V, 2) ids of each verb's base form and 3sg form.
        objects_sg: ids of the singular object pronouns.
        objects_pl: ids of the plural object pronouns.
        fillers: ids of the words that may stand between subject and verb.
        comma: id of ",", which ends each context clause.
    """

    vocab: tuple[str, ...]
    subjects: torch.Tensor
    subject_3sg: torch.Tensor
    verbs: torch.Tensor
    objects_sg: torch.Tensor
    objects_pl: torch.Tensor
    fillers: torch.Tensor
    comma: int

    @functools.cached_property
    def subject_classes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices into ``subjects`` of the 3sg pronouns and of the others; built once, as the generator runs on
        every training step beside a step of a small model."""
        return self.subject_3sg.nonzero().squeeze(1), (~self.subject_3sg).nonzero().squeeze(1)


def load_lexicon(path: Optional[Path] = None) -> AgreementLexicon:
    """Read a lexicon json (keys ``subjects``, ``verbs``, ``objects``, ``fillers``) into id tables.

    Args:
        path: a lexicon of your own; None reads the one packaged with seqmem (``seqmem/tasks/agreement_lexicon.json``,
            found through ``importlib.resources``, so it works from an installed wheel).

    Raises:
        ConfigError: naming ``data.lexicon`` when the file is missing, unreadable, not UTF-8 json or incomplete.
    """
    if path is None:
        return parse_lexicon(resources.files(__package__).joinpath(PACKAGED_LEXICON).read_text(encoding="utf-8"))
    require(path.is_file(), f"data.lexicon must be an existing json file, got {quote(str(path))}")
    try:
        text = path.read_text(encoding="utf-8")  # json is UTF-8 by definition
    except UnicodeDecodeError as err:
        raise ConfigError(f"data.lexicon {quote(str(path))} is not UTF-8 json text: {shorten(str(err))}") from None
    except OSError as err:
        raise ConfigError(f"data.lexicon {quote(str(path))} cannot be read: {shorten(str(err))}") from None
    return parse_lexicon(text, str(path))


def parse_lexicon(text: str, source: str = PACKAGED_LEXICON) -> AgreementLexicon:
    """Id tables of a lexicon json's text; ``source`` names it in errors."""
    try:
        raw = json.loads(text)
        subjects, verbs, objects, fillers = raw["subjects"], raw["verbs"], raw["objects"], raw["fillers"]
        words = [s["word"] for s in subjects] + [w for pair in verbs for w in pair]
        words += [o["word"] for o in objects] + list(fillers) + [","]
        vocab = tuple(dict.fromkeys([PAD] + words))  # dedupe, keep order: pad stays id 0
        ids = {w: i for i, w in enumerate(vocab)}
        lexicon = AgreementLexicon(
            vocab=vocab,
            subjects=torch.tensor([ids[s["word"]] for s in subjects]),
            subject_3sg=torch.tensor([s["person"] == 3 and s["number"] == "sg" for s in subjects]),
            verbs=torch.tensor([[ids[base], ids[third]] for base, third in verbs]),
            objects_sg=torch.tensor([ids[o["word"]] for o in objects if o["number"] == "sg"]),
            objects_pl=torch.tensor([ids[o["word"]] for o in objects if o["number"] == "pl"]),
            fillers=torch.tensor([ids[w] for w in fillers]),
            comma=ids[","],
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"data.lexicon {quote(source)} is not a valid agreement lexicon: {quote(err)}") from None
    require(
        bool(lexicon.subject_3sg.any() and (~lexicon.subject_3sg).any())
        and len(lexicon.objects_sg) > 0
        and len(lexicon.objects_pl) > 0,
        f"data.lexicon {quote(source)} needs 3sg and non-3sg subjects and singular and plural objects",
    )
    return lexicon


def bucket_names(max_len: int) -> tuple[str, ...]:
    """Names of the distance buckets floor(log2(distance)) up to ``max_len``: d1, d2-3, d4-7, ..."""
    return tuple("d1" if b == 0 else f"d{2**b}-{2 ** (b + 1) - 1}" for b in range(max_len.bit_length()))


def _uniform_pick(table: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``table`` entries chosen uniformly by ``u`` ~ U[0, 1) (any shape)."""
    return table[(u * len(table)).long()]


def agreement_batch(
    batch_size: int,
    lexicon: AgreementLexicon,
    min_len: int,
    max_len: int,
    distance: Optional[int],
    attractor_prob: float,
    generator: torch.Generator,
) -> dict:
    """One batch of pronoun–verb agreement sequences, left-padded with id 0 to ``max_len``.

    Args:
        batch_size: number of sequences B.
        lexicon: token-id tables from :func:`load_lexicon`.
        min_len: shortest sequence (tokens before the verb slot).
        max_len: longest sequence; every row is left-padded to this length L.
        distance: tokens from the subject to the verb slot (1: the subject is the last token);
            ``None`` draws it uniformly in ``1..length`` per sequence.
        attractor_prob: probability that each intervening token is an object pronoun (of either
            number, so an attractor half of the time).
        generator: source of randomness; the batch is a pure function of it.

    Returns:
        ``x``: (B, L) long token ids, ``y``: (B,) long (1: the verb takes the 3sg form),
        ``bucket``: (B,) long floor(log2(distance)), indexing :func:`bucket_names`.
    """
    g, B, L = generator, batch_size, max_len
    lengths = torch.randint(min_len, max_len + 1, (B,), generator=g)  # (B,)
    if distance is None:
        dist = (torch.rand(B, generator=g) * lengths).long() + 1  # (B,) uniform in 1..length
    else:
        dist = torch.full((B,), distance)  # (B,)

    # Balanced classes first, then a pronoun uniform within the class.
    y = (torch.rand(B, generator=g) < 0.5).long()  # (B,)
    pick = torch.rand(B, generator=g)  # (B,)
    third, other = lexicon.subject_classes
    subject_idx = torch.where(y == 1, _uniform_pick(third, pick), _uniform_pick(other, pick))  # (B,) into subjects
    subject = lexicon.subjects[subject_idx]  # (B,)

    # Intervening material: fillers, or object pronouns whose number is a fair coin independent of
    # the subject — half of them are attractors, and none carries information about the label.
    filler = _uniform_pick(lexicon.fillers, torch.rand(B, L, generator=g))  # (B, L)
    u = torch.rand(B, L, generator=g)  # (B, L)
    object_plural = torch.rand(B, L, generator=g) < 0.5  # (B, L)
    pronoun_between = torch.where(
        object_plural, _uniform_pick(lexicon.objects_pl, u), _uniform_pick(lexicon.objects_sg, u)
    )  # (B, L)
    is_pronoun = torch.rand(B, L, generator=g) < attractor_prob  # (B, L)
    between = torch.where(is_pronoun, pronoun_between, filler)  # (B, L)

    # Context clauses "PRON VERB ," read backwards from the subject: k = 0 is the comma before it.
    back = torch.arange(L - 1, -1, -1)  # (L,) tokens from the end: 0 is the last position
    k = (back[None, :] - dist[:, None]).clamp(min=0)  # (B, L)
    clauses = L // 3 + 1
    clause_subject = torch.randint(0, len(lexicon.subjects), (B, clauses), generator=g)  # (B, C)
    clause_verb = torch.randint(0, len(lexicon.verbs), (B, clauses), generator=g)  # (B, C)
    cs = clause_subject.gather(1, k // 3)  # (B, L)
    cv = clause_verb.gather(1, k // 3)  # (B, L)
    verb_form = lexicon.verbs[cv, lexicon.subject_3sg[cs].long()]  # (B, L) correctly agreeing
    role = k % 3  # (B, L) 0 comma, 1 verb, 2 pronoun
    pronoun = lexicon.subjects[cs]  # (B, L)
    context = torch.where(role == 0, lexicon.comma, torch.where(role == 1, verb_form, pronoun))  # (B, L)

    x = torch.where(back[None, :] < lengths[:, None], context, 0)  # (B, L) pad id 0 on the left
    x = torch.where(back[None, :] == dist[:, None] - 1, subject[:, None], x)  # (B, L)
    x = torch.where(back[None, :] < dist[:, None] - 1, between, x)  # (B, L)
    return {"x": x, "y": y, "bucket": _bucket_of(max_len)[dist]}


@functools.lru_cache(maxsize=8)
def _bucket_of(max_len: int) -> torch.Tensor:
    """(max_len + 1,) floor(log2(d)) of every distance d (index 0 unused); built once per length, not per batch."""
    return torch.tensor([d.bit_length() - 1 for d in range(max_len + 1)])


class AgreementData(SyntheticTask):
    """Pronoun–verb agreement: classify whether the next verb takes the 3rd-person-singular form.

    Args:
        min_len: shortest sequence in tokens (the short regime is 6-12).
        max_len: longest sequence in tokens; batches are left-padded to it.
        distance: fixed subject-to-verb distance (1: subject is the last token); None draws it
            uniformly per sequence. The stretched regime is min_len=max_len=50, distance=30.
        attractor_prob: probability that each intervening token is an object pronoun (of either
            number, so an attractor half of the time).
        lexicon: a lexicon json of your own (the packaged seqmem/tasks/agreement_lexicon.json shows the
            keys); None: the packaged one.
        batch_size: sequences per batch.
        train_batches: batches per training epoch (the same batches every epoch).
        val_batches: batches per validation (and test) run.
        seed: seed of the training stream; validation and test use disjoint streams derived from it.
    """

    def __init__(
        self,
        min_len: int = 6,
        max_len: int = 12,
        distance: Optional[int] = None,
        attractor_prob: float = 0.3,
        lexicon: Optional[str] = None,
        batch_size: int = 128,
        train_batches: int = 1000,
        val_batches: int = 10,
        seed: int = 0,
    ):
        super().__init__(batch_size, train_batches, val_batches, seed)
        require(min_len >= 2, f"data.min_len must be >= 2, got {min_len}")
        require(max_len >= min_len, f"data.max_len must be >= data.min_len ({min_len}), got {max_len}")
        if distance is not None:
            require(distance >= 1, f"data.distance must be >= 1 or null, got {distance}")
            require(
                distance <= min_len,
                f"data.distance ({distance}) is longer than the sequence: it must be <= data.min_len ({min_len})",
            )
        require(0 <= attractor_prob <= 1, f"data.attractor_prob must be in [0, 1], got {attractor_prob}")
        self.save_hyperparameters()
        self.lexicon = load_lexicon(None if lexicon is None else Path(lexicon).expanduser())

    @property
    def spec(self) -> TaskSpec:
        names = bucket_names(self.hparams.max_len)
        return TaskSpec(
            name="agreement",
            input_size=len(self.lexicon.vocab),
            output_size=2,
            loss="ce",
            readout="last",
            baseline=math.log(2),  # the classes are balanced
            input_tokens=True,
            accuracy_steps=1,
            bucket_names=names,
            solved_metric="val/acc",
            solved_threshold=0.99,
            solved_mode="max",
        )

    def batch_shape(self) -> BatchShape:
        B, L = self.hparams.batch_size, self.hparams.max_len
        return BatchShape(B, L, "data.max_len", L, tensor_bytes=B * L * 8 + 2 * B * 8)  # x (B, L), y and bucket (B,)

    def make_batch(self, generator: torch.Generator) -> dict:
        hp = self.hparams
        return agreement_batch(
            hp.batch_size, self.lexicon, hp.min_len, hp.max_len, hp.distance, hp.attractor_prob, generator
        )
