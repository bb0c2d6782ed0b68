"""The training example: a jaxnorm.linen CNN on scikit-learn's digits reaches 95%."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_digits.py"


def test_digits_example_reaches_95_percent_with_progress_bar():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--epochs", "30"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"test accuracy (\d\.\d+) \(train (\d\.\d+)\) after 30 epochs in ([\d.]+) s", proc.stdout)
    assert match, proc.stdout
    test_accuracy, train_accuracy, _seconds = map(float, match.groups())  # time is reported, not asserted
    assert test_accuracy >= 0.95
    assert train_accuracy >= test_accuracy - 0.05
    assert "30/30" in proc.stderr and "[" + "#" * 30 + "]" in proc.stderr
