"""What a bare constructor gives: the setups the README and the docstrings document. The shipped configs name only
what differs from these (copy.yaml never sets the 10 symbols from 8, lm.yaml never sets the 90/10 split), so a
changed default would silently change a shipped experiment."""

import pytest
import torch

from seqmem.callbacks import InputSensitivity, NonFiniteGuard, RecurrentSpectrum, TimestepGradients
from seqmem.measures import gradient_horizon, hidden_grad_norms, input_sensitivity, timestep_grad_norms
from seqmem.models import LSTM, MODELS, OrthogonalRNN, build_model
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData, AgreementData, CopyData, LMData, copy_memory

SYNTHETIC = {"batch_size": 128, "train_batches": 1000, "val_batches": 10, "seed": 0}


def test_task_defaults():
    assert dict(AddingData().hparams) == {"seq_len": 100, **SYNTHETIC}
    assert dict(CopyData().hparams) == {
        "seq_len": 100,
        "num_symbols": 8,
        "num_copy": 10,
        **SYNTHETIC,
    }  # Arjovsky et al.
    assert dict(AgreementData().hparams) == {  # the short regime, 6 to 12 tokens, distances drawn
        "min_len": 6,
        "max_len": 12,
        "distance": None,
        "attractor_prob": 0.3,
        "lexicon": None,  # the packaged lexicon
        **SYNTHETIC,
    }
    assert dict(LMData().hparams) == {  # WikiText-2 from the Hub, or a file split 90/10; characters
        "path": None,
        "hub_dataset": "wikitext",
        "hub_config": "wikitext-2-raw-v1",
        "level": "char",
        "seq_len": 128,
        "batch_size": 32,
        "val_fraction": 0.1,
        "cache_dir": "data/cache",
        "encoding": "utf-8",
    }


def test_copy_memory_defaults_to_ten_symbols_from_eight():
    batch = copy_memory(64, 5, torch.Generator().manual_seed(0))
    assert batch["x"].shape == (64, 5 + 20)
    assert set(batch["x"][:, :10].flatten().tolist()) == set(range(1, 9)) and (batch["x"][:, 14] == 9).all()


@pytest.mark.parametrize("cell", sorted(MODELS))
def test_cells_default_to_one_layer_without_dropout(cell):
    for net in (MODELS[cell](3, 4), build_model(cell, 3, 4)):
        assert (net.num_layers, net.dropout) == (1, 0.0)
        _, state = net(torch.randn(2, 3, 3))
        width = 8 if cell == "lru" else 4  # the LRU's state: its 4 complex units as real pairs
        assert all(part.shape == (1, 2, width) for part in (state if isinstance(state, tuple) else (state,)))


def test_lstm_forget_bias_defaults_to_one():
    torch.manual_seed(0)
    _, _, b_in, b_h = LSTM(3, 4).layer_weights(0)
    torch.testing.assert_close(b_in[4:8] + b_h[4:8], torch.ones(4), rtol=0, atol=0)


def test_orthogonal_cell_defaults_to_tanh_henaff_and_cayley():
    net = OrthogonalRNN(3, 4)
    assert net.activation == "tanh" and not hasattr(net, "modrelu_bias")
    parametrization = net.recurrent[0].parametrizations.weight[0]
    assert parametrization.orthogonal_map.name == "cayley"
    w = net.recurrent[0].weight.detach()
    assert torch.count_nonzero(w[:2, 2:]) == 0 and torch.count_nonzero(w[2:, :2]) == 0  # henaff: 2×2 rotations


def test_diagnostic_defaults():
    probe = TimestepGradients()
    # loss None: the model's own default, "last" for a SequenceModel (next test), the training loss for others.
    assert (probe.every_n_steps, probe.probe_batch_size, probe.loss) == (200, 32, None)
    assert (probe.lags, probe.threshold, probe.decades) == ((1, 10, 30, 100), 1e-3, 8.0)
    sensitivity = InputSensitivity()
    assert (sensitivity.probe_batch_size, sensitivity.projections) == (32, 2)
    assert (sensitivity.lags, sensitivity.threshold, sensitivity.decades) == ((1, 10, 30, 100), 1e-3, 8.0)
    assert RecurrentSpectrum().every_n_steps == 100
    assert NonFiniteGuard().max_consecutive == 10


def test_function_defaults_are_the_documented_horizon_probe_loss_and_seed():
    curve = 0.7 ** torch.arange(39, -1, -1.0)  # 0.7^19 ≥ 1e-3 > 0.7^20
    assert gradient_horizon(curve).item() == 19
    torch.manual_seed(0)
    model = SequenceModel(CopyData(seq_len=4).spec, cell="gru", hidden_size=4).eval()
    batch = copy_memory(3, 4, torch.Generator().manual_seed(0))
    last = timestep_grad_norms(model, batch["x"], batch["y"], "last")
    assert torch.equal(timestep_grad_norms(model, batch["x"], batch["y"]), last)
    assert torch.equal(hidden_grad_norms(model.diagnostic_view(), batch)[""], last)  # TimestepGradients' loss None
    assert not torch.equal(timestep_grad_norms(model, batch["x"], batch["y"], "task"), last)
    seeded = input_sensitivity(model, batch["x"], projections=2, seed=0)
    assert torch.equal(input_sensitivity(model, batch["x"], projections=2), seeded)
    assert not torch.equal(input_sensitivity(model, batch["x"], projections=2, seed=1), seeded)
