"""scripts/studies/tensorboard_screenshot.py without Chromium: its seqmem command still parses into the runs it
means, its TensorBoard address carries the filter, and its server helpers work against a local HTTP server."""

import http.server
import re
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from seqmem.lightning_cli import run_cli

sys.path.insert(0, str(REPO_ROOT / "scripts" / "studies"))

import tensorboard_screenshot as shot


def test_fit_arguments_build_the_short_run_with_frequent_probes(workdir: Path) -> None:
    config = workdir / "diagnostics.yaml"
    config.write_text(shot.DIAGNOSTICS_YAML)
    arguments = shot.fit_arguments(workdir, config, "vanilla", steps=200)
    assert arguments[0] == "fit"
    cli = run_cli(arguments[1:], run=False)  # run=False parses without a subcommand
    assert cli.trainer.max_steps == 200 and cli.trainer.log_every_n_steps == 5
    assert Path(cli.trainer.logger.log_dir) == workdir / "vanilla"  # the run TensorBoard names "vanilla"
    assert cli.datamodule.hparams.max_len == 30 and cli.datamodule.hparams.distance == 20
    probes = {type(c).__name__: n for c in cli.trainer.callbacks if (n := getattr(c, "every_n_steps", None))}
    assert probes == dict.fromkeys(
        ["RecurrentSpectrum", "TimestepGradients", "InputSensitivity", "JacobianSpectrum"], 25
    )
    assert not any(type(c).__name__ == "ModelCheckpoint" for c in cli.trainer.callbacks)


def test_dashboard_url_carries_the_tag_filter_in_the_query() -> None:
    url = urllib.parse.urlsplit(shot.dashboard_url(6006, "timeseries", shot.SCALAR_TAGS))
    assert (url.hostname, url.port, url.fragment) == ("127.0.0.1", 6006, "timeseries")
    query = urllib.parse.parse_qs(url.query)
    assert query["tagFilter"] == [shot.SCALAR_TAGS] and query["forceSVG"] == ["true"]


@pytest.mark.parametrize(
    "tag, shown",
    [
        ("clip/pre_norm", True),
        ("clip/clipped_fraction", True),
        ("grad_time/heatmap", True),
        ("grad_time/layer0/horizon", True),
        ("grad_time/layer0/ratio_lag10", True),
        ("clip/post_norm", False),
        ("grad_time/layer0/ratio_lag1", False),  # anchored: lag1 is not a prefix match of lag10
        ("sensitivity/heatmap", False),
    ],
)
def test_scalar_tags_pick_the_six_cards(tag: str, shown: bool) -> None:
    assert bool(re.search(shot.SCALAR_TAGS, tag)) == shown


def test_wait_until_up_finds_a_local_server_on_a_free_port() -> None:
    port = shot.free_port()
    server = http.server.HTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        shot.wait_until_up(f"http://127.0.0.1:{port}/", timeout=10)
    finally:
        server.shutdown()
        server.server_close()


def test_wait_until_up_gives_up_on_a_silent_port() -> None:
    with pytest.raises(TimeoutError, match="no answer"):
        shot.wait_until_up(f"http://127.0.0.1:{shot.free_port()}/", timeout=0.5)


def test_wait_until_up_stops_when_the_server_exits() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    with pytest.raises(RuntimeError, match="exited with status 0"):
        shot.wait_until_up(f"http://127.0.0.1:{shot.free_port()}/", timeout=30, process=process)


def test_a_missing_browser_says_what_to_install() -> None:
    with pytest.raises(SystemExit, match="apt-get install chromium"):
        shot.find_chromium("no-such-browser-for-seqmem")
