"""Cells bring their own options: declared on the class, offered by the CLI, kept in checkpoints — a new cell with a
new option is one row in MODELS and nothing else; checkpoints in the flat layout load as before."""

from pathlib import Path
from typing import Literal, Optional

import pytest
import torch
import yaml
from conftest import QUIET, fit_args

from seqmem.cli import main, run_cli
from seqmem.models import LSTM, MODELS, OrthogonalRNN, VanillaRNN, registered_options
from seqmem.models.options import declared_options, gather_options
from seqmem.module import SequenceModel
from seqmem.tasks import AddingData

TINY_ADDING = [
    *"--config adding --model.hidden_size 8 --data.seq_len 6 --data.batch_size 4".split(),
    *"--data.train_batches 2 --data.val_batches 1 --trainer.max_steps 2".split(),
]


class ScaledRNN(VanillaRNN):
    """tanh RNN whose initial W_h is PyTorch's times a factor: a cell of a test's own, with an option of its own.

    Args:
        input_size: features per time step of the input.
        hidden_size: units per layer.
        num_layers: stacked recurrent layers.
        dropout: dropout between layers.
        w_h_scale: factor on every initial W_h.
    """

    options = ("w_h_scale",)

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, w_h_scale: float = 1.0
    ):
        super().__init__(input_size, hidden_size, num_layers, dropout)
        with torch.no_grad():
            for layer in range(num_layers):
                self.layer_weights(layer)[1].mul_(w_h_scale)  # (H, H)


@pytest.fixture
def scaled(monkeypatch: pytest.MonkeyPatch) -> None:
    """ScaledRNN registered the documented way: a row in MODELS."""
    monkeypatch.setitem(MODELS, "scaled", ScaledRNN)


def test_the_options_are_those_the_cells_declare():
    options = registered_options()
    assert list(options) == [
        "spectral_radius",
        "activation",
        "orthogonal_init",
        "orthogonal_map",
        "irnn_scale",
        "forget_bias",
        "complex_units",
        "r_min",
        "r_max",
        "max_phase",
        "input_normalization",
    ]
    assert options["forget_bias"].defaults == {"lstm": 1.0}
    assert options["r_max"].defaults == {"lru": 0.999} and options["input_normalization"].type is bool
    assert options["forget_bias"].type == Optional[float]
    assert options["activation"].type == Literal["tanh", "modrelu"]
    assert options["orthogonal_map"].defaults == {"orthogonal": "cayley"}
    assert options["forget_bias"].help.startswith("lstm only — initial forget-gate bias")
    assert options["forget_bias"].help.endswith("When not given: 1.0.")
    assert "When not given" not in options["spectral_radius"].help  # None: nothing to say


def test_an_option_several_cells_take_is_one_entry_naming_them_all():
    option = gather_options({"plain": VanillaRNN, "other": type("Other", (VanillaRNN,), {})})["spectral_radius"]
    assert option.defaults == {"plain": None, "other": None}
    assert option.help.startswith("plain / other only — rescale every initial W_h")


def test_one_option_with_two_types_is_refused():
    class FloatActivation(OrthogonalRNN):
        """Orthogonal cell with a float activation.

        Args:
            activation: not a name.
        """

        options = ("activation",)

        def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                     activation: float = 1.0):  # fmt: skip
            super().__init__(input_size, hidden_size, num_layers, dropout)

    with pytest.raises(TypeError, match=r"model\.activation: b takes <class 'float'>"):
        gather_options({"a": OrthogonalRNN, "b": FloatActivation})


class Untyped(LSTM):
    """LSTM with an option that has no type.

    Args:
        input_size: features per time step of the input.
        hidden_size: units per layer.
        num_layers: stacked recurrent layers.
        dropout: dropout between layers.
        scale: untyped.
    """

    options = ("scale",)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0, scale=1.0):
        super().__init__(input_size, hidden_size, num_layers, dropout)


class Undocumented(LSTM):
    """LSTM with an option its docstring leaves out."""

    options = ("scale",)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, scale: float = 1.0):
        super().__init__(input_size, hidden_size, num_layers)


class NotAnArgument(LSTM):
    """LSTM that declares an option its constructor does not take (its parent's constructor does not either)."""

    options = ("forget_bias", "momentum")


@pytest.mark.parametrize(
    "cls, reason",
    [
        (Untyped, "'scale': its type and its docstring entry are needed"),
        (Undocumented, "'scale': its type and its docstring entry are needed"),
        (NotAnArgument, "'momentum': not a constructor argument with a default"),
        (type("Sized", (LSTM,), {"options": ("hidden_size",)}), "'hidden_size': not a constructor argument"),
    ],
)
def test_a_declared_option_must_be_a_typed_documented_constructor_argument(cls, reason):
    with pytest.raises(TypeError, match=f"{cls.__name__}.options names {reason}"):
        declared_options(cls)


def test_an_option_no_cell_declares_is_refused():
    with pytest.raises(Exception, match=r"model\.w_h_scale is not an option; the cells' options are: spectral_radius"):
        SequenceModel(AddingData().spec, cell="vanilla", w_h_scale=0.5)


def test_a_new_cell_with_a_new_option_trains_through_the_cli(scaled, workdir, capsys):
    args = fit_args(workdir, *TINY_ADDING, "--model.cell", "scaled", "--model.w_h_scale", "0.5")
    cli = run_cli(args[1:], run=False)  # built, not run: the initial weights
    torch.manual_seed(0)  # the seed of the shipped defaults, as the CLI set it before building the model
    reference = SequenceModel(cli.datamodule.spec, cell="scaled", hidden_size=8)  # w_h_scale not given: 1.0
    assert isinstance(cli.model.net, ScaledRNN) and cli.model.hparams.w_h_scale == 0.5
    torch.testing.assert_close(cli.model.net.rnn.weight_hh_l0, 0.5 * reference.net.rnn.weight_hh_l0, rtol=0, atol=0)

    fit = run_cli(args)
    assert fit.trainer.global_step == 2
    run = Path(fit.trainer.log_dir)
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["w_h_scale"] == 0.5
    # The option is part of the architecture a checkpoint must match.
    last = run / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit):
        main(["validate", "--trainer.default_root_dir", str(workdir), *QUIET, *TINY_ADDING, "--model.cell", "scaled",
              "--model.w_h_scale", "0.25", "--ckpt_path", str(last)])  # fmt: skip
    assert "trained with model.w_h_scale 0.5, this command gives 0.25" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--model.w_h_scale W_H_SCALE scaled only — factor on every initial W_h. When not given: 1.0." in help_text
    with pytest.raises(SystemExit):
        main(fit_args(workdir, *TINY_ADDING, "--model.cell", "lstm", "--model.w_h_scale", "0.5"))
    assert "seqmem: error: model.w_h_scale applies only to cell scaled, not 'lstm'" in capsys.readouterr().err


#: The hyperparameters a checkpoint of the CLI holds, in the flat layout SequenceModel has always written: its
#: arguments and every cell option of seqmem's five cells, by name, in this order, and Lightning's instantiator.
FLAT_LAYOUT = (
    "task", "cell", "hidden_size", "num_layers", "dropout", "embedding_size", "activation", "orthogonal_init",
    "orthogonal_map", "orthogonal_lr_scale", "irnn_scale", "spectral_radius", "forget_bias", "cell_options",
    "tbptt_steps", "gradient_clip_val", "gradient_clip_algorithm", "_instantiator",
)  # fmt: skip


@pytest.fixture(scope="module")
def flat_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """last.ckpt of a 2-step LSTM run with forget bias 3, its hyperparameters rewritten in the flat layout:
    "flat" holds every key of :data:`FLAT_LAYOUT`, "older" lacks spectral_radius (written before the option)."""
    root = tmp_path_factory.mktemp("flat")
    run_cli(fit_args(root, *TINY_ADDING, "--model.cell", "lstm", "--model.forget_bias", "3"))
    saved = torch.load(root / "lightning_logs/version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    hp = saved["hyper_parameters"]
    assert hp["_instantiator"] == "lightning.pytorch.cli.instantiate_module"
    paths = {}
    for name, keys in {"flat": FLAT_LAYOUT, "older": tuple(k for k in FLAT_LAYOUT if k != "spectral_radius")}.items():
        saved["hyper_parameters"] = {key: hp[key] for key in keys}
        paths[name] = root / f"{name}.ckpt"
        torch.save(saved, paths[name])
    return paths


@pytest.mark.parametrize("layout", ["flat", "older"])
def test_a_checkpoint_in_the_flat_layout_loads(layout, flat_checkpoints, workdir, capsys):
    path = flat_checkpoints[layout]
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = SequenceModel.load_from_checkpoint(path)
    assert isinstance(model.net, LSTM) and model.hparams.forget_bias == 3.0
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, saved["state_dict"][name], rtol=0, atol=0)

    command = ["validate", "--trainer.default_root_dir", str(workdir), *QUIET, *TINY_ADDING, "--model.cell", "lstm"]
    validate = run_cli([*command, "--model.forget_bias", "3", "--ckpt_path", str(path)])
    assert "val/loss" in validate.trainer.callback_metrics
    with pytest.raises(SystemExit):
        main([*command, "--model.forget_bias", "2", "--ckpt_path", str(path)])
    assert "trained with model.forget_bias 3.0, this command gives 2.0" in capsys.readouterr().err
