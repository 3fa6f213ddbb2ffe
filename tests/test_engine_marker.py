"""Without vLLM the `engine` tests skip with the reason; the rest of a file still runs."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ENGINE_SKIP


def test_engine_tests_skip_with_a_reason_when_vllm_is_missing() -> None:
    """tests/test_calibrate.py holds two `engine` tests beside plain ones."""
    blocked = ("import sys, pytest\n"
               "sys.modules['vllm'] = None  # as if not installed\n"
               "sys.exit(pytest.main(['-q', '-rs', '-p', 'no:cacheprovider', 'tests/test_calibrate.py']))")
    proc = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert re.search(r"\d+ passed, 2 skipped", proc.stdout) and ENGINE_SKIP in proc.stdout, proc.stdout[-3000:]
