"""SeqmemCLI, the LightningCLI behind ``seqmem fit / validate / test / predict``, and :func:`run_cli`, which builds
(and runs) it. The ``seqmem`` command (:mod:`seqmem.cli`) and the sweep's trials (:mod:`seqmem.sweep.trial`) both
run it; it imports neither.
"""

import re
import sys
import tempfile
import threading
import traceback
from contextlib import suppress
from pathlib import Path
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import torch
from jsonargparse import ActionConfigFile
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from typing_extensions import override

from seqmem.callbacks.predictions import PredictionWriter
from seqmem.checkpoint_io import AtomicCheckpointIO, AtomicModelCheckpoint
from seqmem.checkpoints import load_checkpoint, mismatch, newest_match, weights_mismatch
from seqmem.configs import DEFAULTS, TASK_CONFIGS, find_config
from seqmem.errors import PATH_QUOTE_LIMIT, ConfigError, Terminated, WriteError, chain, quote, require, shorten
from seqmem.memory import activation_bytes, check_batch_fits, host_memory, human, value_bytes
from seqmem.models import registered_options
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
    errors before anything is written; ``predict`` writes its predictions to the run folder. Checkpoints are
    written atomically (:mod:`seqmem.checkpoint_io`), and a file the run cannot write stops it with a
    :class:`~seqmem.errors.WriteError` naming the file, the cause and the last good checkpoint. Only the parser of
    the subcommand the arguments name is built (each costs about as much as a 100-step fit of a small model, and a
    sweep builds one per trial); with none named, as for ``seqmem --help``, all four are.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self._built = subcommands_to_build(kwargs.get("args"))
        super().__init__(*args, **kwargs)

    @override
    def subcommands(self) -> dict[str, set[str]]:
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in self._built}

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # Lightning's parser with our --config action and help in place of its own.
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument("-c", "--config", action=ConfigFileOrName, help=CONFIG_HELP)
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        # Each cell's own options, as the cell table holds them now (SequenceModel takes them as **options).
        for option in registered_options().values():
            parser.groups["model"].add_argument(
                f"--model.{option.name}", type=Optional[option.type], default=None, help=option.help
            )
        # The spec is a property of the instantiated datamodule (the lm vocabulary is built on first
        # access), so the link is applied at instantiation.
        parser.link_arguments("data", "model.task", compute_fn=lambda data: data.spec, apply_on="instantiate")
        # Always keep a last.ckpt, so that `seqmem fit ... --ckpt_path last` can resume any run; its save_last
        # "link" is atomic too (seqmem.checkpoint_io).
        parser.add_lightning_class_args(AtomicModelCheckpoint, "checkpoint")
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
        config = {**config, "plugins": with_atomic_checkpoints(config.get("plugins"), config.get("strategy"))}
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
        self._check_memory()
        self.datamodule.check_stage(self.subcommand, self.trainer.world_size)
        arguments = self.config_init[self.subcommand]
        if arguments.get("ckpt_path") == "last":
            arguments["ckpt_path"] = self._last_checkpoint()
        elif arguments.get("ckpt_path") is not None:
            self._check_checkpoint(arguments["ckpt_path"])

    @override
    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except OSError as error:  # a file the run could not write: Lightning has stopped it and closed the logs
            raise self._write_error(error) from error
        except Terminated as stop:  # SIGTERM (seqmem.cli.main): say where to resume from
            stop.note = self._last_good_checkpoint() if self.subcommand == "fit" else ""
            raise
        except RuntimeError as error:  # torch.OutOfMemoryError is one
            reason = out_of_memory(error)
            if reason is None:
                raise
            # The estimate before the run (_check_memory) is a lower bound; a batch beyond it ends here.
            raise ConfigError(
                f"out of memory: {reason}; lower data.batch_size, the sequence length or model.hidden_size"
            ) from error

    def _write_error(self, error: OSError) -> WriteError:
        """``error`` as one line: the file it could not write (or what it was writing and where), the cause, and
        the last good checkpoint, which a failed write leaves as it was.

        The TensorBoard writer writes in a thread of its own and raises its error later, with no file name, from
        whichever call comes next; a run that stops on another error raises it again while closing its logs. The
        logger's ``hparams.yaml`` (Lightning's ``save_hparams_to_yaml``) fails with no file name too, when its
        bytes are flushed: what it left is removed, since the logger writes the file only where there is none
        and would leave a partial one as it is for good (a resumed run, a sweep's retried trial).
        """
        found = next((e for e in chain(error) if isinstance(e, WriteError)), None)
        folder = run_folder(self.trainer)
        if found is not None:
            where, kind = found.filename, found.kind
        elif error.filename is not None:
            where, kind = error.filename2 or error.filename, ""  # a move or copy: its destination
        elif raised_in(error, ("lightning.pytorch.core.saving",)):
            where, kind = folder / getattr(self.trainer.logger, "NAME_HPARAMS_FILE", "hparams.yaml"), ""
            with suppress(OSError):
                where.unlink()
        elif raised_in(error, ("tensorboard.", "torch.utils.tensorboard")):
            where, kind = folder, "the TensorBoard events in"
        else:
            where, kind = folder, "a file in the run folder"
        note = self._last_good_checkpoint() if self.subcommand == "fit" else ""
        return WriteError.of(found or error, where, kind, note)

    def _last_good_checkpoint(self) -> str:
        """``the last good checkpoint '.../last.ckpt' (step 20) is intact: ...``, or "" when the run has none: its
        own last.ckpt, else (a resumed run that failed before it saved, or before its checkpoint folder was set)
        the checkpoint it resumed from."""
        folder = getattr(self.trainer.checkpoint_callback, "dirpath", None)
        candidates = [Path(folder) / "last.ckpt"] if folder else []
        resumed = self.config_init[self.subcommand].get("ckpt_path")  # the trainer forgets it on teardown
        candidates += [Path(resumed)] if resumed else []
        for last in candidates:
            try:  # mmap: only the few bytes of the step are read, however large the checkpoint
                step = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"]
            except Exception:  # missing, or not readable after all: nothing good to point at there
                continue
            where = quote(str(last), PATH_QUOTE_LIMIT)
            return f"the last good checkpoint {where} (step {step}) is intact: resume with --ckpt_path last"
        return ""

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

    def _check_memory(self) -> None:
        """Refuse a batch too large for this machine, with the figure, before the first one is drawn.

        The batch is made in host memory; the model's activations are counted there too on a CPU run. On a GPU
        they are not checked ahead (reading its memory would initialise CUDA before a forked DDP launch): an out
        of memory there is one line when it happens.

        Raises:
            ConfigError: naming the sequence length and batch size, what they need and what the machine has.
        """
        shape = self.datamodule.batch_shape()
        if shape is None:
            return
        activations = 0
        if self.trainer.strategy.root_device.type == "cpu":
            activations = activation_bytes(self.model, shape.size, shape.steps, value_bytes(self.trainer.precision))
        check_batch_fits(shape, activations, host_memory())

    def _check_checkpoint(self, ckpt_path: str) -> None:
        """Refuse a checkpoint that is unreadable, of another task or model, or whose weights do not fit its settings.

        Raises:
            ConfigError: naming ``ckpt_path`` and, for a mismatch, the option and both values, or the weights that
                do not fit.
        """
        checkpoint = load_checkpoint(Path(ckpt_path).expanduser())
        reason = mismatch(checkpoint, self.model, self.datamodule)
        require(
            reason is None,
            f"ckpt_path {quote(ckpt_path)} {reason}; a checkpoint loads only into the task and model it was trained "
            "as (its run folder's config.yaml holds them all)",
        )
        reason = weights_mismatch(checkpoint, self.model)  # the command's model is the one its settings describe
        require(reason is None, f"ckpt_path {quote(ckpt_path)} {reason}")

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


class SaveConfig(SaveConfigCallback):
    """LightningCLI's SaveConfigCallback (``config.yaml`` in the run folder); a file it cannot write is a
    :class:`~seqmem.errors.WriteError` naming it."""

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        try:
            super().setup(trainer, pl_module, stage)
        except OSError as error:
            raise WriteError.of(error, run_folder(trainer) / self.config_filename) from error


class _ParseOnly(SeqmemCLI):
    """SeqmemCLI that parses its arguments and stops: builds no model, data or trainer, sets no seed."""

    @override
    def _set_seed(self) -> None:
        pass

    @override
    def instantiate_classes(self) -> None:
        pass

    @override
    def after_instantiate_classes(self) -> None:
        pass


def with_atomic_checkpoints(plugins: Any, strategy: Any) -> Any:
    """``plugins`` plus an :class:`AtomicCheckpointIO`, unless the command gives a CheckpointIO of its own (in
    ``plugins`` or on a strategy object), which Lightning would refuse to get twice."""
    given = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(p, CheckpointIO) for p in given) or getattr(strategy, "_checkpoint_io", None) is not None:
        return plugins
    return [*given, AtomicCheckpointIO()]


def run_folder(trainer: pl.Trainer) -> Path:
    """The run's folder (its logger's log_dir, else default_root_dir), read without Lightning's
    ``trainer.log_dir``, a collective that would hang a DDP run that fails on one rank."""
    log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
    return Path(log_dir or trainer.default_root_dir)


def out_of_memory(error: BaseException) -> Optional[str]:
    """torch's reason, on one line, when ``error`` is (or comes of) an allocation that failed: a GPU's
    ``torch.OutOfMemoryError`` or the CPU allocator's RuntimeError; None for anything else."""
    for cause in chain(error):
        text = " ".join(str(cause).split())
        if "can't allocate memory" in text:  # "[enforce fail at alloc_cpu.cpp:127] ... you tried to allocate N bytes"
            tried = re.search(r"tried to allocate (\d+) bytes", text)
            return f"could not allocate {human(int(tried[1])) if tried else 'a tensor'} in host memory"
        if isinstance(cause, torch.OutOfMemoryError):  # "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 ..."
            return shorten(". ".join(text.split(". ")[:2]))
    return None


def raised_in(error: BaseException, modules: tuple[str, ...]) -> bool:
    """Whether ``error`` was raised in (a frame of its traceback is in) one of ``modules`` (name prefixes)."""
    frames = traceback.walk_tb(error.__traceback__)
    return any(frame.f_globals.get("__name__", "").startswith(modules) for frame, _ in frames)


def _quiet_tensorboard_threads(hook: Callable[[threading.ExceptHookArgs], Any]) -> Callable:
    """A ``threading.excepthook`` that passes over the OS errors of TensorBoard's writer thread: the thread keeps
    its error and the writer raises it again from the run's next call, which reports it in one line; printed here
    too, it would add a traceback after that line."""

    def excepthook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard.")):
            hook(args)

    excepthook.quiets_tensorboard = True
    return excepthook


def check_fit_options(args: list[str]) -> None:
    """Parse ``seqmem fit`` arguments (no ``fit``) as :func:`run_cli` would, building nothing.

    Raises:
        ArgumentError: an option ``seqmem fit`` does not have, or a value of the wrong type.
    """
    argv, sys.argv = sys.argv, sys.argv[:1]  # the caller's own arguments (seqmem sweep ...) would make Lightning warn
    try:
        _cli(_ParseOnly, args, run=False)
    finally:
        sys.argv = argv


def subcommands_to_build(args: Any) -> tuple[str, ...]:
    """The subcommands whose parsers the CLI builds for ``args`` (None: ``sys.argv[1:]``): the one a list of words
    starts with, else all (an option first, as in ``seqmem --help``, or a dict of arguments, may run any)."""
    args = sys.argv[1:] if args is None else args
    return (args[0],) if isinstance(args, list) and args and args[0] in SUBCOMMANDS else SUBCOMMANDS


def run_cli(args: Optional[list[str]] = None, run: bool = True) -> SeqmemCLI:
    """Build (and by default run) the CLI; scripts use this to read the trainer afterwards.

    Raises:
        ArgumentError: bad arguments (jsonargparse's message).
        ConfigError: bad input the checks found (possibly behind jsonargparse's ValueError: see
            :func:`seqmem.errors.config_error`); nothing has been written.
        WriteError: a file the run could not write.
    """
    return _cli(SeqmemCLI, args, run)


def _cli(cls: type[SeqmemCLI], args: Optional[list[str]], run: bool) -> SeqmemCLI:
    if not getattr(threading.excepthook, "quiets_tensorboard", False):
        threading.excepthook = _quiet_tensorboard_threads(threading.excepthook)
    defaults = {"default_config_files": [str(DEFAULTS)]}
    return cls(
        SequenceModel,
        TaskDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # the model builds its optimizer (orthogonal lr group)
        save_config_callback=SaveConfig,
        # Parse errors raise instead of printing the whole usage: main() reports them in one line. The
        # shared defaults go to every subcommand's parser, or to the one parser there is with run=False.
        parser_kwargs={
            "exit_on_error": False,
            **({name: defaults for name in subcommands_to_build(args)} if run else defaults),
        },
        args=args,
        run=run,
    )
