"""Hermetic test environment: CPU only, quiet TensorFlow, a private cache dir, no network but a
local HTTP server."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ["PML_JAX_HOME"] = tempfile.mkdtemp(prefix="pml_jax_test_home_")
os.environ["HF_HUB_OFFLINE"] = "1"

import functools  # noqa: E402
import http.server  # noqa: E402
import pathlib  # noqa: E402
import threading  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Identical programs compiled by different tests (each Learner jits its own steps) hit this cache.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.environ["PML_JAX_HOME"], "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
    """The committed reference fixtures (generated once by the scripts beside them)."""
    return FIXTURES


@pytest.fixture
def server(tmp_path):
    """A 127.0.0.1 HTTP server over tmp_path/www; yields (base url, www dir, request log)."""
    www = tmp_path / "www"
    www.mkdir()
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            log.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", www, log
    httpd.shutdown()
    httpd.server_close()
