"""Logging stays on the evalrun tree and never shows a key."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from evalrun.logs import REDACT, add_secret, setup_logging

ROOT = Path(__file__).resolve().parent.parent


def test_other_libraries_keep_their_own_handling(capsys) -> None:
    root_before = list(logging.getLogger().handlers)
    setup_logging(0)
    assert logging.getLogger().handlers == root_before  # the root logger is left alone
    logging.getLogger("evalrun.run.send.pool").warning("ours")
    logging.getLogger("asyncio").error("Task was destroyed but it is pending!")
    err = capsys.readouterr().err
    assert "evalrun: WARNING: ours" in err
    assert "evalrun: ERROR: Task was destroyed" not in err


def test_known_keys_and_bearer_tokens_are_masked(capsys) -> None:
    setup_logging(1)
    key = "sk-test-0123456789abcdef"
    add_secret(key)
    add_secret("short")  # too short to be a key: left alone
    try:
        logging.getLogger("evalrun.run.http.client").info("echoed %s and header Bearer abc.def", key)
        try:
            raise ValueError(f"boom {key}")
        except ValueError:
            logging.getLogger("evalrun.run.send.pool").exception("failed")
    finally:
        REDACT.secrets.clear()
    err = capsys.readouterr().err
    assert key not in err and "echoed *** and header Bearer ***" in err
    assert "boom ***" in err and "short" not in REDACT.secrets


def test_a_passing_run_prints_no_foreign_errors(tmp_path) -> None:
    """After a run the interpreter's own shutdown messages are not dressed as evalrun errors."""
    argv = ["run", str(ROOT / "configs/quickstart.yaml"), "--no-progress", "--set", f"reports_dir={tmp_path}"]
    out = subprocess.run(
        [sys.executable, "-m", "evalrun", *argv, "--limit", "3"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "evalrun: ERROR" not in out.stderr
