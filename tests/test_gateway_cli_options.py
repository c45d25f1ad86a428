"""``ecotel-gateway run``'s options are checked before anything starts, with argparse's usage."""

import subprocess
import sys
from pathlib import Path


def test_an_unknown_log_level_is_refused_naming_the_levels(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[gateway]\nid = "opt-gw"\nsite = "svc"\nstate_dir = "{tmp_path / "state"}"\n'
        '[[devices]]\nid = "aws"\nkind = "weather"\ninterval_s = 1\n'
        'source = { type = "simulator", seed = 1 }\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "collector", "run", "--config", str(config), "--log-level", "loud"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert "invalid choice: 'LOUD' (choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR')" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists()
