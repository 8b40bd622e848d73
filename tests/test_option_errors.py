"""Bad options of the diagnostics and the lm data: one line naming the option, the rule and the value given; and
the values right at each bound, which are accepted."""

import functools
import math
import re

import pytest
import torch

from seqmem.callbacks import InputSensitivity, RecurrentSpectrum, TimestepGradients
from seqmem.errors import ConfigError
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData, CopyData, LMData

DIAGNOSTIC_ERRORS = [
    (lambda: RecurrentSpectrum(every_n_steps=0), "every_n_steps of RecurrentSpectrum must be >= 1, got 0"),
    (lambda: TimestepGradients(every_n_steps=-1), "every_n_steps of TimestepGradients must be >= 1, got -1"),
    (lambda: TimestepGradients(probe_batch_size=0), "probe_batch_size of TimestepGradients must be >= 1, got 0"),
    (lambda: InputSensitivity(lags=(1, 0)), "lags of InputSensitivity must all be >= 1, got [1, 0]"),
    (lambda: TimestepGradients(threshold=0.0), "threshold of TimestepGradients must be in (0, 1), got 0.0"),
    (lambda: TimestepGradients(threshold=1.0), "threshold of TimestepGradients must be in (0, 1), got 1.0"),
    (lambda: InputSensitivity(threshold=1.5), "threshold of InputSensitivity must be in (0, 1), got 1.5"),
    (lambda: InputSensitivity(decades=0.0), "decades of InputSensitivity must be > 0, got 0.0"),
    (lambda: InputSensitivity(projections=0), "projections of InputSensitivity must be >= 1, got 0"),
    (lambda: TimestepGradients(loss="mean"), "loss of TimestepGradients must be one of last, task; got 'mean'"),
]


@pytest.mark.parametrize("make, message", DIAGNOSTIC_ERRORS, ids=[m for _, m in DIAGNOSTIC_ERRORS])
def test_a_bad_diagnostic_option_names_itself_its_rule_and_the_value(make, message):
    with pytest.raises(ConfigError) as err:
        make()
    assert str(err.value) == message


def test_diagnostic_options_at_their_bounds_are_accepted():
    probe = TimestepGradients(every_n_steps=1, probe_batch_size=1, lags=(1,), threshold=0.999, decades=0.5)
    assert (probe.every_n_steps, probe.probe_batch_size, probe.lags, probe.threshold, probe.decades) == (
        1,
        1,
        (1,),
        0.999,
        0.5,
    )
    assert InputSensitivity(projections=1, threshold=1e-9).projections == 1
    assert RecurrentSpectrum(every_n_steps=1).every_n_steps == 1


@pytest.mark.parametrize(
    "options, option, value",
    [
        ({"level": "byte"}, "data.level", "'byte'"),
        ({"batch_size": 0}, "data.batch_size", "0"),
        ({"seq_len": 0}, "data.seq_len", "0"),
        ({"val_fraction": 0.0}, "data.val_fraction", "0.0"),
        ({"val_fraction": 1.0}, "data.val_fraction", "1.0"),
    ],
)
def test_a_bad_lm_option_names_itself_and_the_value(options, option, value):
    with pytest.raises(ConfigError) as err:
        LMData(**options)
    message = str(err.value)
    assert message.startswith(f"{option} must ") and message.endswith(f"got {value}")


@pytest.mark.parametrize(
    "make, option, value",
    [
        (lambda: CopyData(num_symbols=1), "data.num_symbols", "1"),
        (lambda: CopyData(num_copy=0), "data.num_copy", "0"),
        (lambda: AddingData(seed=-1), "data.seed", "-1"),
        (lambda: AddingData(train_batches=0), "data.train_batches", "0"),
        (lambda: CopyData(val_batches=0), "data.val_batches", "0"),
        (lambda: CopyData(batch_size=0), "data.batch_size", "0"),
    ],
)
def test_a_bad_synthetic_task_option_names_itself_and_the_value(make, option, value):
    with pytest.raises(ConfigError) as err:
        make()
    message = str(err.value)
    assert message.startswith(f"{option} must ") and message.endswith(f"got {value}")


def test_a_one_character_corpus_is_not_empty(tmp_path):
    corpus = tmp_path / "one.txt"
    corpus.write_text("a")
    LMData(path=str(corpus), cache_dir=str(tmp_path / "cache"))  # refused only when a window cannot be cut


@pytest.mark.parametrize(
    "optimizer, message",
    [
        # A plain callable: its values are read from the optimizer it builds.
        (lambda p: torch.optim.SGD(p, lr=math.inf), "model.optimizer.lr must be finite and >= 0"),
        (functools.partial(torch.optim.Adam, eps=-1e-8), "model.optimizer.eps must be finite and >= 0, got -1e-08"),
        # What torch alone refuses: its reason, for the option named.
        (functools.partial(torch.optim.Adam, betas=(1.5, 0.9)), "model.optimizer: Invalid beta parameter at index 0"),
    ],
)
def test_optimizer_arguments_torch_would_refuse_only_in_training_are_refused_by_the_model(optimizer, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        SequenceModel(AddingData(seq_len=4).spec, hidden_size=4, optimizer=optimizer)


def test_a_learning_rate_of_zero_is_allowed():
    model = SequenceModel(AddingData(seq_len=4).spec, hidden_size=4, optimizer=functools.partial(torch.optim.SGD, lr=0))
    assert model.configure_optimizers().defaults["lr"] == 0
