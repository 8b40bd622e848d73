"""The ``seqmem`` command: LightningCLI with fit / validate / test / predict, and ``sweep``.

seqmem fit --config copy --model.cell orthogonal --data.seq_len 200
seqmem sweep agreement      # a grid of seeded fits on Ray Tune (seqmem/sweep/)
"""

import inspect
import sys
import tempfile
from argparse import ArgumentError
from pathlib import Path
from typing import Any, NoReturn, Optional

import lightning.pytorch as pl
from jsonargparse import ActionConfigFile
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from seqmem.callbacks.nonfinite import NonFiniteError
from seqmem.callbacks.predictions import PredictionWriter
from seqmem.checkpoints import load_checkpoint, mismatch, newest_match
from seqmem.configs import DEFAULTS, TASK_CONFIGS, find_config
from seqmem.errors import ConfigError, quote, require, shorten
from seqmem.module import SequenceModel
from seqmem.tasks import TaskDataModule

SUBCOMMANDS = ("fit", "validate", "test", "predict")
CONFIG_HELP = (
    "A config file (yaml or json), or the name of one shipped with seqmem: "
    f"{', '.join(TASK_CONFIGS)} (with or without .yaml; a file of that name in the working directory comes "
    "first). May be given several times: later files and options override earlier ones."
)


class ConfigFileOrName(ActionConfigFile):
    """``--config``: a config file, or the name of a shipped config (``--config agreement``) from any directory."""

    @override
    def __call__(self, parser, cfg, values, option_string=None) -> None:
        super().__call__(parser, cfg, find_config(values), option_string)


class SeqmemCLI(LightningCLI):
    """LightningCLI whose model receives the task's sizes from the datamodule.

    On top of Lightning's: ``--config`` takes a shipped config's name; a checkpoint loads only into the task and
    model it was trained as (:mod:`seqmem.checkpoints`); bad trainer options and unwritable folders are one-line
    errors before anything is written; ``predict`` writes its predictions to the run folder.
    """

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # Lightning's parser with our --config action and help in place of its own.
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument("-c", "--config", action=ConfigFileOrName, help=CONFIG_HELP)
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        # The spec is a property of the instantiated datamodule (the lm vocabulary is built on first
        # access), so the link is applied at instantiation.
        parser.link_arguments("data", "model.task", compute_fn=lambda data: data.spec, apply_on="instantiate")
        # Always keep a last.ckpt, so that `seqmem fit ... --ckpt_path last` can resume any run.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})

    @override
    def _parse_ckpt_path(self) -> None:
        """Leave the parsed config as it is.

        Lightning would load the checkpoint's hyperparameters over it, silently dropping every model option of
        the command line; :meth:`_check_checkpoint` refuses a checkpoint of another task or model instead.
        """

    @override
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> pl.Trainer:
        # The checkpoint callback this CLI always adds would make Lightning refuse enable_checkpointing false,
        # and under fast_dev_run it would still write last.ckpt (outside any run folder) when training ends.
        if config.get("enable_checkpointing") is False or config.get("fast_dev_run"):
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        try:
            return super()._instantiate_trainer(config, callbacks)
        except MisconfigurationException as error:  # Lightning's checks of the trainer options
            raise ConfigError(f"bad trainer option: {shorten(' '.join(str(error).split()))}") from None

    @override
    def after_instantiate_classes(self) -> None:
        # Still nothing written: every check of the run's input comes here, before the subcommand starts.
        if self.subcommand is None:
            return
        self._check_writable()
        arguments = self.config_init[self.subcommand]
        if arguments.get("ckpt_path") == "last":
            arguments["ckpt_path"] = self._last_checkpoint()
        elif arguments.get("ckpt_path") is not None:
            self._check_checkpoint(arguments["ckpt_path"])

    def before_fit(self) -> None:
        # The module checks again in on_fit_start; checking here comes before Lightning's own refusal of
        # Trainer clipping under truncated BPTT, which would be a traceback instead of one line.
        self.model.check_clipping(self.trainer)

    def before_predict(self) -> None:
        self.trainer.callbacks.append(PredictionWriter())

    def _check_writable(self) -> None:
        """Refuse a run folder that cannot be written, naming the option.

        Raises:
            ConfigError: ``trainer.default_root_dir`` (or the logger's ``save_dir``) is a file or not writable.
        """
        require_writable(Path(self.trainer.default_root_dir), "trainer.default_root_dir")
        logger = self.trainer.logger
        if logger is not None and logger.save_dir not in (None, self.trainer.default_root_dir):
            require_writable(Path(logger.save_dir), "the save_dir of trainer.logger")

    def _check_checkpoint(self, ckpt_path: str) -> None:
        """Refuse a checkpoint that is unreadable or of another task or model.

        Raises:
            ConfigError: naming ``ckpt_path`` and, for a mismatch, the option and both values.
        """
        reason = mismatch(load_checkpoint(Path(ckpt_path).expanduser()), self.model, self.datamodule)
        require(
            reason is None,
            f"ckpt_path {quote(ckpt_path)} {reason}; a checkpoint loads only into the task and model it was trained "
            "as (its run folder's config.yaml holds them all)",
        )

    def _last_checkpoint(self) -> Optional[str]:
        """``--ckpt_path last``: the newest last*.ckpt under the logger's root whose task and model match.

        Lightning looks for "last" only in this run's checkpoint folder, which for a fresh process is a new,
        empty logger version. Says on stderr which checkpoint it took; with none, ``fit`` starts from scratch.

        Raises:
            ConfigError: no checkpoint matches, for ``validate``, ``test`` and ``predict``.
        """
        logger = self.trainer.logger
        root = Path(logger.root_dir if logger is not None else self.trainer.default_root_dir)
        path, passed = newest_match(root, self.model, self.datamodule)
        others = f" ({passed} newer of another task or model, or unreadable, passed over)" if passed else ""
        if path is None:
            found = f"no checkpoint under {quote(str(root))} matches this task and model{others}"
            require(self.subcommand == "fit", f"ckpt_path last: {found}")
            self._notice(f"--ckpt_path last: {found}: training from scratch")
            return None
        self._notice(f"--ckpt_path last: loading {path}{others}")
        return str(path)

    def _notice(self, message: str) -> None:
        """One line on stderr, from global rank 0 only."""
        if self.trainer.is_global_zero:
            print(f"seqmem: {message}", file=sys.stderr)


def require_writable(folder: Path, option: str) -> None:
    """Raise :class:`ConfigError` naming ``option`` unless ``folder`` can be created and written.

    Tried by creating (and at once removing) a file in its nearest existing ancestor: permission bits alone do not
    say it for root or a read-only file system. No folder is created.
    """
    existing = folder.expanduser().absolute()
    while not existing.exists():
        existing = existing.parent
    where = quote(str(folder))
    require(existing.is_dir(), f"{option} {where} is not a folder: {quote(str(existing))} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError:
        raise ConfigError(f"{option} {where} is not writable: pass a folder you can write to") from None


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
        _fail(parse_error_message(error))
    except NonFiniteError as error:
        print(f"seqmem: error: {error}", file=sys.stderr)  # a failed run, not bad input: status 1
        sys.exit(1)
    except Exception as error:
        cause = _config_error(error)
        if cause is None:
            raise
        _fail(str(cause))


def parse_error_message(error: ArgumentError) -> str:
    """jsonargparse's message on one line, cut short (it quotes the value given), saying what ``--data`` takes."""
    message = shorten(" ".join(str(error).split()), limit=400)  # 'Parser key "model.cell": Expected ...'
    if message.startswith('Parser key "data":'):
        message = f"data must be one of {', '.join(concrete_tasks())}: {message}"
    return message


def concrete_tasks() -> list[str]:
    """The task datamodules ``--data`` accepts: every subclass of TaskDataModule that is not abstract."""
    found, pending = set(), [TaskDataModule]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if not inspect.isabstract(cls):
            found.add(cls.__name__)
    return sorted(found)


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
