"""A screenshot of seqmem's gradient-flow diagnostics in TensorBoard, taken with headless Chromium.

Trains two short runs of the pronoun-verb agreement task side by side, a vanilla tanh RNN and an LSTM (the
shipped ``agreement`` config at length 30, subject 20 tokens back, 200 steps) with every diagnostic probing every
25 steps; starts TensorBoard on their log folder, bound to 127.0.0.1 only; opens the Time Series dashboard
filtered to the diagnostics' tags in headless Chromium and saves what it shows as a PNG. TensorBoard is stopped
afterwards, whatever happens.

    .venv/bin/python scripts/studies/tensorboard_screenshot.py \\
        --out docs/figures/tensorboard.png --images-out docs/figures/tensorboard_images.png

About 20 s on a 2-core CPU, most of it training. ``--logdir DIR --no-train`` photographs a log folder that
already holds runs (any seqmem run: point it at ``lightning_logs``). Needs Chromium: ``apt-get install
chromium`` (Debian/Ubuntu); ``--chromium PATH`` names another Chromium or Chrome binary.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "out"

# Every diagnostic of seqmem/configs/defaults.yaml, probing far more often than its defaults (which suit runs of
# thousands of steps) so that a 200-step run draws curves of several points. A config file given after
# --config agreement replaces the defaults' whole callbacks list.
DIAGNOSTICS_YAML = """\
trainer:
  log_every_n_steps: 5
  callbacks:
    - class_path: seqmem.callbacks.GradientNorms
    - class_path: seqmem.callbacks.ClippingEvents
    - class_path: seqmem.callbacks.RecurrentSpectrum
      init_args: {every_n_steps: 25}
    - class_path: seqmem.callbacks.TimestepGradients
      init_args: {every_n_steps: 25}
    - class_path: seqmem.callbacks.InputSensitivity
      init_args: {every_n_steps: 25}
    - class_path: seqmem.callbacks.JacobianSpectrum
      init_args: {every_n_steps: 25}
    - class_path: seqmem.callbacks.NonFiniteGuard
"""

# The cards of the main shot (a regex TensorBoard searches in each tag name; six cards, two a row): the gradient
# norm before clipping and the fraction of steps clipped, the per-timestep heatmap of ||dL/dh_t|| of each run,
# the gradient horizon and the ratio ||dL/dh_{T-10}|| / ||dL/dh_T||.
SCALAR_TAGS = "^(clip/(pre_norm|clipped_fraction)|grad_time/(heatmap|layer0/(horizon|ratio_lag10)))$"
IMAGE_TAGS = "^(grad_time/heatmap|sensitivity/heatmap|lyapunov/spectrum)$"  # the three figures of each run
IMAGES_HEIGHT = 1190  # the three rows of image cards end there at 1600 px wide


def fit_arguments(logdir: Path, config: Path, cell: str, steps: int) -> list[str]:
    """The ``seqmem`` arguments of one run: the shipped agreement config shortened to length 30 (subject 20 tokens
    back), the diagnostics of ``config``, TensorBoard logs in ``logdir/<cell>``, no checkpoints."""
    return [
        "fit", "--config", "agreement", "--config", str(config), "--model.cell", cell,
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "100",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
        "--trainer.logger.save_dir", str(logdir), "--trainer.logger.name", cell, "--trainer.logger.version", "",
        "--data.min_len", "30", "--data.max_len", "30", "--data.distance", "20", "--data.val_batches", "2",
    ]  # fmt: skip


def train(logdir: Path, cells: list[str], steps: int) -> None:
    """Short ``seqmem fit`` runs (:func:`fit_arguments`) side by side, one per cell, each a TensorBoard run named
    by its cell in ``logdir``."""
    config = logdir / "diagnostics.yaml"
    config.write_text(DIAGNOSTICS_YAML)
    for cell in cells:
        if (logdir / cell).exists():
            sys.exit(f"{logdir / cell} exists: give an empty --logdir, or --no-train to show it as it is")
    # One thread per run and the runs side by side: a model this small gains little from intra-op threads, and
    # on a busy machine several threads per process mostly wait for each other.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for cell in cells:
        command = [sys.executable, "-m", "seqmem.cli", *fit_arguments(logdir, config, cell, steps)]
        log = logdir / f"{cell}.log"  # Lightning's chatter goes to a file; shown only if the run breaks
        with log.open("w") as stream:
            runs[cell] = (subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env), log)
    failed = [(cell, log) for cell, (process, log) in runs.items() if process.wait() != 0]
    for _, log in failed:
        print(f"--- {log} ---\n{log.read_text()[-3000:]}", file=sys.stderr)
    if failed:
        sys.exit(f"training failed: {', '.join(cell for cell, _ in failed)}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now: the one the OS picks for a socket bound to port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, timeout: float, process: "subprocess.Popen | None" = None) -> None:
    """Poll ``url`` until it answers 200; raise TimeoutError after ``timeout`` s, or RuntimeError if ``process``
    (the server) exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer from {url} within {timeout:g} s")
        time.sleep(0.25)


def read_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def wait_for_runs(port: int, timeout: float) -> list[str]:
    """Poll TensorBoard until every run it lists has its scalar tags: it reads the event files in a thread of its
    own after it starts answering, and a page loaded before that shows empty cards."""
    deadline = time.monotonic() + timeout
    while True:
        runs = read_json(f"http://127.0.0.1:{port}/data/runs")
        tags = read_json(f"http://127.0.0.1:{port}/data/plugin/scalars/tags")
        if runs and all(tags.get(run) for run in runs):
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError(f"TensorBoard found no runs with scalars within {timeout:g} s")
        time.sleep(0.5)


def dashboard_url(port: int, dashboard: str, tag_filter: str = "", host: str = "127.0.0.1") -> str:
    """The address of a TensorBoard dashboard showing only the tags ``tag_filter`` matches.

    TensorBoard 2.x's Time Series dashboard reads its state from the query string (``tagFilter``, ``smoothing``)
    and the dashboard from the fragment. ``forceSVG=true`` draws the charts as SVG: headless Chromium has no
    GPU, and its WebGL fallback leaves the default (WebGL) charts empty.
    """
    query = {"forceSVG": "true", "smoothing": "0"}
    if tag_filter:
        query["tagFilter"] = tag_filter
    return f"http://{host}:{port}/?{urllib.parse.urlencode(query)}#{dashboard}"


def find_chromium(name: "str | None") -> str:
    """The Chromium binary to run: ``name`` if given, else the first of the usual names on PATH."""
    for candidate in [name] if name else ["chromium", "chromium-browser", "google-chrome", "chrome"]:
        found = shutil.which(candidate)
        if found:
            return found
    sys.exit(f"{name or 'chromium'} not found: install it (apt-get install chromium) or pass --chromium PATH")


def screenshot(chromium: str, url: str, out: Path, size: tuple[int, int], budget_ms: int) -> None:
    """Load ``url`` in headless Chromium and write what the window shows to ``out`` (PNG)."""
    command = [
        chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--no-first-run", "--no-default-browser-check", f"--window-size={size[0]},{size[1]}",
        # Virtual time runs the page's timers (and waits for its fetches) until this budget is spent: the
        # dashboard has loaded the runs, then each card's data, before the shot is taken.
        f"--virtual-time-budget={budget_ms}", "--run-all-compositor-stages-before-draw",
        f"--screenshot={out}", url,
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no settings left from an earlier shot
        done = subprocess.run(
            [*command, f"--user-data-dir={profile}"], capture_output=True, text=True, timeout=budget_ms / 1000 + 120
        )
    if done.returncode != 0 or not out.exists():
        sys.exit(f"chromium failed (status {done.returncode}):\n{done.stderr[-2000:]}")


def finish(png: Path, max_width: int) -> None:
    """Shrink ``png`` to at most ``max_width`` pixels wide and save it with a palette: a screenshot has few
    colours, and the file shrinks to about a third of its RGB size."""
    image = Image.open(png).convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=OUT / "tensorboard.png", help="PNG of the scalar diagnostics (%(default)s)"
    )
    parser.add_argument("--images-out", type=Path, help="also a PNG of the heatmap and spectrum images")
    parser.add_argument(
        "--logdir", type=Path, help="log folder to train into and show (default: a temporary one, removed after)"
    )
    parser.add_argument("--no-train", action="store_true", help="show --logdir as it is, without training")
    parser.add_argument(
        "--cells", nargs="+", default=["vanilla", "lstm"], help="one run per cell, side by side (vanilla lstm)"
    )
    parser.add_argument("--steps", type=int, default=200, help="training steps of each run (%(default)s)")
    parser.add_argument("--tags", default=SCALAR_TAGS, help="regex of the tags in the main shot (six cards)")
    parser.add_argument("--port", type=int, help="TensorBoard's port (default: a free one)")
    parser.add_argument("--chromium", help="Chromium or Chrome binary (default: chromium on PATH)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(1600, 1370), metavar=("W", "H"), help="window size (1600 1370)"
    )
    parser.add_argument(
        "--budget", type=int, default=20000, help="Chromium's virtual-time budget per shot, ms (%(default)s)"
    )
    parser.add_argument(
        "--max-width", type=int, default=1600, help="shrink the PNGs to at most this width (%(default)s)"
    )
    args = parser.parse_args()
    if args.no_train and args.logdir is None:
        parser.error("--no-train needs --logdir")
    chromium = find_chromium(args.chromium)  # before the training, so that a missing browser costs nothing

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seqmem-tb-") as scratch:
        logdir = args.logdir or Path(scratch)
        logdir.mkdir(parents=True, exist_ok=True)
        if not args.no_train:
            train(logdir, args.cells, args.steps)
            print(f"trained {', '.join(args.cells)} ({args.steps} steps) in {time.perf_counter() - start:.0f} s")
        port = args.port or free_port()
        tensorboard = Path(sys.executable).with_name("tensorboard")  # the one installed beside this Python
        server = subprocess.Popen(
            [str(tensorboard if tensorboard.exists() else "tensorboard"), "--logdir", str(logdir)]
            + ["--host", "127.0.0.1", "--port", str(port), "--reload_interval", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_up(f"http://127.0.0.1:{port}/", timeout=60, process=server)
            print(f"TensorBoard on port {port}, runs: {', '.join(wait_for_runs(port, timeout=60))}")
            width, height = args.size
            shots = [(args.out, args.tags, height)]
            if args.images_out:
                shots.append((args.images_out, IMAGE_TAGS, IMAGES_HEIGHT))
            for out, tags, window_height in shots:
                url = dashboard_url(port, "timeseries", tags)
                out.parent.mkdir(parents=True, exist_ok=True)
                screenshot(chromium, url, out, (width, window_height), args.budget)
                finish(out, args.max_width)
                print(f"{out} ({out.stat().st_size / 1024:.0f} KB): {url}")
        finally:  # never leave the server running, even after an error or Ctrl-C
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
