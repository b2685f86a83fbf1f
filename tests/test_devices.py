"""The same global batch gives the same training on 1 device, 8 simulated devices and 2 processes,
a SIGTERM to one of 2 processes stops both at the same step, resuming to the same result, and 2
processes fetching into one shared cache download it once."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_dls

WORKER = Path(__file__).with_name("devices_worker.py")
FETCH_WORKER = Path(__file__).with_name("fetch_worker.py")


def run_worker(args, devices, tmp_path, name):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "PYTHONPATH": str(WORKER.parent)}
    out = tmp_path / f"{name}.json"
    proc = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "data"), str(out), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, out


def finish(proc, out, timeout=600):
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail(f"worker still running after {timeout}s (hung?):\n{log[-3000:]}")
    assert proc.returncode == 0, log[-3000:]
    return json.loads(out.read_text()) if out.exists() else None


def run_pair(data, name, *args, timeout=300):
    """Both processes of a 2-process loopback run; their results, in process order."""
    port = str(free_port())
    workers = [run_worker(["dist", str(pid), port, *args], 2, data, f"{name}{pid}") for pid in (0, 1)]
    try:
        return [finish(*w, timeout=timeout) for w in workers]
    finally:
        for proc, _ in workers:
            proc.kill()


@pytest.fixture
def data(tmp_path):
    tiny_dls(tmp_path / "data")  # generate the shared dataset once, before the workers start
    return tmp_path


def assert_same_training(a, b):
    """Same batches and updates: the first steps agree to float rounding. Later steps may drift a
    little further: the synthetic images' flat regions give near-ties in max-pool and ReLU that a
    different reduction order can flip, so the curve is compared to 1e-2 (wrong data or a missed
    gradient all-reduce moves it far more)."""
    assert len(a["losses"]) == len(b["losses"]) > 2
    np.testing.assert_allclose(a["losses"][:2], b["losses"][:2], rtol=2e-5)
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-2)
    np.testing.assert_allclose(a["valid_loss"], b["valid_loss"], rtol=1e-2)
    np.testing.assert_allclose(a["checksum"], b["checksum"], rtol=1e-5)


@pytest.mark.slow
def test_eight_devices_match_one(data):
    one = finish(*run_worker(["local", "1"], 8, data, "one"))
    eight = finish(*run_worker(["local", "8"], 8, data, "eight"))
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert_same_training(one, eight)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_device(data):
    results = run_pair(data, "dist")
    one = finish(*run_worker(["local", "1"], 1, data, "one"))
    assert results[0]["devices"] == 4
    assert_same_training(one, results[0])


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_one_step(data):
    epochs, signal_at = "2", "1"  # batch 1 of 4 per epoch: the stop lands mid-epoch
    whole = run_pair(data, "whole", str(data / "whole"), epochs, "-1")
    stopped = run_pair(data, "stopped", str(data / "run"), epochs, signal_at)
    assert stopped[0]["stopped"] == stopped[1]["stopped"] is not None  # same message, same step
    saved = sorted(int(p.name) for p in (data / "run" / "checkpoints").iterdir() if p.name.isdigit())
    steps_done = len(stopped[0]["step_losses"])
    assert saved == [steps_done] and 0 < steps_done < len(whole[0]["step_losses"]) // 2
    assert f"at step {steps_done}" in stopped[0]["stopped"]
    resumed = run_pair(data, "resumed", str(data / "run"), epochs, "-1")
    for got, want in zip(resumed, whole):
        assert got["stopped"] is None
        np.testing.assert_allclose(got["step_losses"], want["step_losses"], rtol=1e-6)
        np.testing.assert_allclose(got["checksum"], want["checksum"], rtol=1e-6)
        np.testing.assert_allclose(got["valid_loss"], want["valid_loss"], rtol=1e-6)


def fetch_pair(tmp_path, url, dest):
    """Both processes of a 2-process run downloading `url` to the one path `dest`; their results."""
    port = str(free_port())
    procs = [(subprocess.Popen([sys.executable, str(FETCH_WORKER), str(pid), port, url, str(dest),
                                str(tmp_path / f"fetch{pid}.json")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
              tmp_path / f"fetch{pid}.json") for pid in (0, 1)]
    try:
        return [finish(proc, out, timeout=120) for proc, out in procs]
    finally:
        for proc, _ in procs:
            proc.kill()


def test_two_processes_sharing_a_cache_download_once_and_share_a_failure(tmp_path, server):
    base, www, requests = server
    payload = np.random.default_rng(0).bytes(3 << 20)  # several chunks: concurrent writers would interleave
    (www / "weights.bin").write_bytes(payload)
    dest = tmp_path / "shared" / "weights.bin"
    results = fetch_pair(tmp_path, base + "weights.bin", dest)
    assert [r["error"] for r in results] == [None, None]
    assert [r["path"] for r in results] == [str(dest)] * 2 and dest.read_bytes() == payload
    assert requests == ["/weights.bin"]  # process 1 found process 0's verified file
    failed = fetch_pair(tmp_path, base + "missing.bin", tmp_path / "shared" / "missing.bin")
    assert "HTTP 404" in failed[0]["error"]
    assert failed[1]["error"].startswith(f"process 0 could not download {base}missing.bin: ")
    assert failed[1]["error"].endswith(failed[0]["error"])
    assert requests == ["/weights.bin", "/missing.bin"]  # process 1 did not try again


def test_process_0_first_leaves_jax_distributed_initialize_possible():
    """A fetch before `jax.distributed.initialize` (a data set loaded first) must not start a backend."""
    code = ("import jax; from pml_jax.hosts import process_0_first; "
            "assert process_0_first('fetch', lambda: 7) == 7; "
            f"jax.distributed.initialize('127.0.0.1:{free_port()}', num_processes=1, process_id=0); "
            "assert process_0_first('fetch', lambda: 8) == 8; print(jax.process_count())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["1"], proc.stderr[-2000:]
