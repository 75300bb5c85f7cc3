"""tools/profile.sh: its arguments reach nsys as documented, and a missing nsys is a clear error (no GPU needed: a
stand-in nsys records what it is asked)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROFILE = Path(__file__).resolve().parent.parent / "tools" / "profile.sh"

# Records each call's arguments, one line a call; `stats` also prints a table.
FAKE_NSYS = """#!/usr/bin/env bash
echo "$*" >> "$NSYS_CALLS"
if [ "$1" = stats ]; then echo "Time (%)  Name"; echo "50.0  resident_head_kernel"; fi
"""


@pytest.fixture
def fake_nsys(tmp_path):
    nsys = tmp_path / "nsys"
    nsys.write_text(FAKE_NSYS)
    nsys.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = dict(os.environ, NSYS=str(nsys), NSYS_CALLS=str(calls))
    return env, calls


def run_profile(args, env, cwd):
    return subprocess.run(["bash", str(PROFILE), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_profile_passes_the_command_and_summarizes(fake_nsys, tmp_path):
    env, calls = fake_nsys
    done = run_profile(["-o", "run1", "--", "python3", "-m", "pydsv4.bench", "ops", "--only", "mhc"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    profile_call, stats_call = calls.read_text().splitlines()
    assert profile_call.startswith("profile ") and "--trace=cuda,nvtx" in profile_call
    assert "--cuda-graph-trace=node" in profile_call and "--output=run1" in profile_call
    assert profile_call.endswith(" python3 -m pydsv4.bench ops --only mhc")
    assert stats_call.startswith("stats ") and stats_call.endswith(" run1.nsys-rep")
    assert "cuda_gpu_kern_sum,nvtx_sum,cuda_api_sum" in stats_call
    assert "resident_head_kernel" in (tmp_path / "run1.txt").read_text()
    assert "resident_head_kernel" in done.stdout


def test_profile_default_command_is_the_bench(fake_nsys, tmp_path):
    env, calls = fake_nsys
    done = run_profile([], env, tmp_path)
    assert done.returncode == 0, done.stderr
    profile_call = calls.read_text().splitlines()[0]
    assert profile_call.endswith(" python3 -m pydsv4.bench ops --tokens 1,64 --no-peer")
    assert "--output=profile-" in profile_call


def test_profile_without_nsys_says_so(tmp_path):
    path = "/usr/bin:/bin"
    if shutil.which("nsys", path=path):
        pytest.skip("nsys is installed in /usr/bin or /bin, so it cannot be missing here")
    env = {k: v for k, v in os.environ.items() if k != "NSYS"}
    env["PATH"] = path
    done = run_profile(["true"], env, tmp_path)
    assert done.returncode == 2
    assert "nsys" in done.stderr and "NSYS=" in done.stderr
    assert not list(tmp_path.iterdir()), "nothing is written without nsys"


def test_profile_rejects_a_missing_report_name(fake_nsys, tmp_path):
    env, calls = fake_nsys
    done = run_profile(["-o"], env, tmp_path)
    assert done.returncode == 2 and "-o needs a report name" in done.stderr
    assert not calls.exists()
