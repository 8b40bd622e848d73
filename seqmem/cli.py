"""The ``seqmem`` command: LightningCLI with fit / validate / test / predict, and ``sweep``.

seqmem fit --config seqmem/configs/copy.yaml --model.cell orthogonal --data.seq_len 200
seqmem sweep agreement.yaml      # a grid of seeded fits on Ray Tune (seqmem/sweep/)
"""

import sys
from argparse import ArgumentError
from pathlib import Path
from typing import NoReturn, Optional

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from seqmem.callbacks.nonfinite import NonFiniteError
from seqmem.errors import ConfigError
from seqmem.module import SequenceModel
from seqmem.tasks import TaskDataModule

# Shared defaults (seed, logging cadence, the diagnostics) read before any --config.
DEFAULTS = Path(__file__).resolve().parent / "configs" / "defaults.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class SeqmemCLI(LightningCLI):
    """LightningCLI whose model receives the task's sizes from the datamodule."""

    def add_arguments_to_parser(self, parser) -> None:
        # The spec is a property of the instantiated datamodule (the lm vocabulary is built on first
        # access), so the link is applied at instantiation.
        parser.link_arguments("data", "model.task", compute_fn=lambda data: data.spec, apply_on="instantiate")
        # Always keep a last.ckpt, so that `seqmem fit ... --ckpt_path last` can resume any run.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})

    def before_fit(self) -> None:
        # The module checks again in on_fit_start; checking here comes before Lightning's own refusal of
        # Trainer clipping under truncated BPTT, which would be a traceback instead of one line.
        self.model.check_clipping(self.trainer)
        if self.config_init[self.subcommand].get("ckpt_path") == "last":
            self.config_init[self.subcommand]["ckpt_path"] = self._last_checkpoint()

    def _last_checkpoint(self) -> str:
        """The newest last*.ckpt of any earlier version of this logger, else "last" (Lightning's own).

        Lightning looks for "last" only in this run's checkpoint folder, which for a fresh process is
        a new, empty logger version: it would warn and silently start from scratch.
        """
        logger = self.trainer.logger
        root = Path(logger.root_dir if logger is not None else self.trainer.default_root_dir)
        found = sorted(root.glob("*/checkpoints/last*.ckpt"), key=lambda path: path.stat().st_mtime)
        return str(found[-1]) if found else "last"


def run_cli(args: Optional[list[str]] = None, run: bool = True) -> SeqmemCLI:
    """Build (and by default run) the CLI; scripts use this to read the trainer afterwards."""
    defaults = {"default_config_files": [str(DEFAULTS)]}
    return SeqmemCLI(
        SequenceModel,
        TaskDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # the model builds its optimizer (orthogonal lr group)
        # Parse errors raise instead of printing the whole usage: main() reports them in one line. The
        # shared defaults go to every subcommand's parser, or to the one parser there is with run=False.
        parser_kwargs={"exit_on_error": False, **({name: defaults for name in SUBCOMMANDS} if run else defaults)},
        args=args,
        run=run,
    )


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of the ``seqmem`` console script; ``args`` replaces ``sys.argv[1:]`` in tests."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["sweep"]:  # not a LightningCLI subcommand: a grid of fits on Ray Tune
        from seqmem.sweep import main as sweep

        return sweep(argv[1:])
    try:
        run_cli(args)
    except ArgumentError as error:
        # jsonargparse's message ("Parser key "model.cell": Expected ...") spans lines; keep it to one.
        _fail(" ".join(str(error).split()))
    except NonFiniteError as error:
        print(f"seqmem: error: {error}", file=sys.stderr)  # a failed run, not bad input: status 1
        sys.exit(1)
    except Exception as error:
        cause = _config_error(error)
        if cause is None:
            raise
        _fail(str(cause))


def _config_error(error: Optional[BaseException]) -> Optional[ConfigError]:
    """The ConfigError behind ``error``: jsonargparse re-raises errors of the classes it instantiates
    (the datamodule's arguments) as a ValueError chained to the original."""
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__ or error.__context__
    return error


def _fail(message: str) -> NoReturn:
    """Bad input: one line, no traceback, exit status 2 (argparse's); raised before anything is written."""
    print(f"seqmem: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
