"""Under 2-process CPU DDP (gloo), a user's own LightningModule gets every diagnostic tag written exactly once.

Lightning's ``strategy="ddp"`` relaunches the running script for rank 1, so the fit runs in a subprocess
executing this file (a relaunched pytest would rerun the whole session).
"""

import subprocess
import sys
from pathlib import Path

from test_diagnostics_ddp import written_tags
from test_user_models import every_diagnostic, fit
from user_models import Seq2Seq, seq2seq_data


def test_ddp_writes_every_tag_of_a_user_model_exactly_once(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    files, logged = written_tags(tmp_path)
    assert files == 1, "only rank 0 writes"
    ours = {key: n for key, n in logged.items() if key[0].split("/")[0] not in ("epoch", "hp_metric")}
    assert set(ours.values()) == {1}
    tags = {tag for tag, _ in ours}
    # Both recurrences — the bidirectional encoder and the decoder cell — under their module paths.
    assert {"grad_time/encoder/layer0_reverse/horizon", "grad_time/decoder/layer0/horizon"} <= tags
    assert {"lyapunov/decoder/layer0/lambda_1", "sensitivity/encoder/reverse/final", "grad_norm/total"} <= tags
    assert {step for tag, step in ours if tag == "grad_norm/total"} == {0, 1, 2}
    assert {step for tag, step in ours if tag == "grad_time/decoder/layer0/horizon"} == {0, 2}


if __name__ == "__main__":
    fit(Path(sys.argv[1]), Seq2Seq(), seq2seq_data(), every_diagnostic(), devices=2, strategy="ddp")
