"""Make targets that only say why they cannot run here exit 0 with that one line (a skip is not
a failure), and install nothing first."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_e2e_kind_without_docker_kind_kubectl_is_one_line_and_exit_0(tmp_path):
    # a PATH with make and python3 only: no docker, kind nor kubectl, whatever this machine has
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").symlink_to(shutil.which("make"))
    (bin_dir / "python3").symlink_to(Path(sys.executable).resolve())  # the interpreter, not a shim
    # VENV and the helm cache in tmp_path: were the target to install anything, not in the checkout
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "e2e-kind",
                           f"VENV={tmp_path / 'venv'}", f"CHART_CACHE={tmp_path / 'cache'}"],
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert not (tmp_path / "venv").exists() and not (tmp_path / "cache").exists()
    assert proc.stdout == ("make e2e-kind: skipped: kind suite needs docker (not on PATH), "
                           "kind (not on PATH), kubectl (not on PATH) (run `make e2e-kind` where "
                           "they are installed)\n")


def test_test_quick_installs_with_pip_only_and_leaves_out_chart_image_e2e(tmp_path):
    """`make test-quick` (README, Development) runs as any user: no apt-get, no container
    runtime, no helm; the run itself was measured by hand (README)."""
    proc = subprocess.run(["make", "--no-print-directory", "-n", "-C", str(ROOT), "test-quick",
                           f"VENV={tmp_path / 'venv'}", "PYTEST_ARGS="],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout
    for word in ("apt-get", "system-deps", "sudo", "podman", "buildah", "docker", "helm", "npm"):
        assert word not in commands, word
    *install, run = commands.strip().splitlines()
    assert run.split() == [f"{tmp_path / 'venv'}/bin/python", "-m", "pytest", "tests",
                           "--ignore=tests/chart", "--ignore=tests/image", "-m", '"not', 'slow"']
    assert "bash tests/workers/eventlet-venv.sh" in install
