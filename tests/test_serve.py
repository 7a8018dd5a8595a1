"""efx serve: runs that find a server serving their model get the same outputs, bit for bit,
with the same failures; servers of another model, settings, efx or model files are not used
(the run says why); a server that dies mid-run leaves a resumable output; sockets are the
user's own."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from conftest import (
    EFX,
    assert_user_error,
    no_sleep,
    run_cli,
    run_efx,
    write_broken_images,
    write_good_images,
)
from PIL import Image

import efx
from efx import serve, writers

pytestmark = pytest.mark.xdist_group("serve")  # servers and their runs share the 2 cores


class Served:
    """`efx serve ARGS` in a process of its own, listening at `socket`, until stopped."""

    def __init__(self, socket_path: str, *args: str) -> None:
        self.socket = socket_path
        self.process = subprocess.Popen(
            [EFX, "serve", "--socket", socket_path, *args], stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "efx: serving " in line:
                return
        raise AssertionError("efx serve did not start: " + "".join(self.lines))

    def env(self) -> dict[str, str]:
        return {**os.environ, "EFX_SOCKET": self.socket}

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, rest = self.process.communicate(timeout=60)
        return self.process.returncode, "".join(self.lines) + rest


@pytest.fixture
def images(tmp_path) -> str:
    """Good and broken images, and a WebDataset tar of two (images read by efx itself)."""
    root = tmp_path / "images"
    write_good_images(str(root))
    write_broken_images(str(root / "broken"))
    with tarfile.open(root / "shard.tar", "w") as tar:
        for name in ("a_cat.jpg", "B_coffee.PNG"):
            data = (root / name).read_bytes()
            info = tarfile.TarInfo(f"sample{len(tar.getmembers())}.{name.rsplit('.', 1)[1]}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(root)


def test_a_served_run_writes_what_a_run_of_its_own_writes_bit_for_bit(tiny_model, images, tmp_path):
    sock = str(tmp_path / "s.sock")
    server = Served(sock, "-m", tiny_model, "--image-size", "48")
    try:
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
        served = run_efx("extract", images, str(tmp_path / "served.h5"), "-m", tiny_model,
                         "--image-size", "48", "--json", env=server.env())  # fmt: skip
        assert served.returncode == 0, served.stderr
        assert "the model ran in efx serve" in served.stderr
        # Without it (EFX_SOCKET is empty in the suite), here in this process.
        alone = run_cli("extract", images, str(tmp_path / "alone.h5"), "-m", tiny_model,
                        "--image-size", "48", "--json")  # fmt: skip
        assert alone.exit_code == 0 and "efx serve" not in alone.stderr, alone.stderr
        paths, rows = efx.load(str(tmp_path / "served.h5"))
        assert (paths, rows.tobytes()) == (lambda p, r: (p, r.tobytes()))(
            *efx.load(str(tmp_path / "alone.h5"))
        )
        assert any("shard.tar/" in p for p in paths)  # members went through the server too
        failures = writers.read_failures(str(tmp_path / "served.h5"))
        assert failures == writers.read_failures(str(tmp_path / "alone.h5"))
        assert {os.path.basename(f["path"]): f["error"] for f in failures} == write_broken_images(
            str(tmp_path / "again")
        )
        same = {"model", "image_size", "feature_dim", "backend", "precision", "device"}
        summary, other = json.loads(served.stdout), json.loads(alone.stdout)
        assert {k: summary[k] for k in same} == {k: other[k] for k in same}
        info, info_alone = (
            efx.info(str(tmp_path / "served.h5")),
            efx.info(str(tmp_path / "alone.h5")),
        )
        assert info["tensorflow_version"] == info_alone["tensorflow_version"]

        # A served run never imports TensorFlow; efx similar embeds its query in the server.
        script = (
            "import sys, efx\n"
            f"efx.extract({images!r}, {str(tmp_path / 'lib.h5')!r}, model={tiny_model!r}, "
            "image_size=48)\n"
            "print('tensorflow' in sys.modules)\n"
        )
        library = subprocess.run([sys.executable, "-c", script], env=server.env(),
                                 capture_output=True, text=True, timeout=300)  # fmt: skip
        assert library.stdout.strip() == "False", library.stderr
        query = shutil.copy(os.path.join(images, "nested", "gray.png"), tmp_path / "query.png")
        near = run_efx("similar", str(tmp_path / "served.h5"), str(query), "-k", "2",
                       env=server.env())  # fmt: skip
        best = near.stdout.splitlines()[0].split("\t")
        assert near.returncode == 0 and best[2:] == [os.path.join(images, "nested", "gray.png"),
                                                     "1.0000"]  # fmt: skip
    finally:
        code, log = server.stop()
    assert code == 0 and "server stopped" in log and not os.path.exists(sock)


def test_servers_of_another_model_settings_efx_or_model_files_are_not_used(
    tiny_model, keras_model, tmp_path, monkeypatch
):
    root = tmp_path / "images"
    write_good_images(str(root))
    model = shutil.copytree(tiny_model, tmp_path / "model")
    sock = str(tmp_path / "s.sock")
    server = Served(sock, "-m", str(model), "--image-size", "48")
    monkeypatch.setenv("EFX_SOCKET", sock)
    try:

        def run(*args: str) -> str:
            """The command's runs here, in this process (the server is the process under test):
            what they say on stderr."""
            output = str(tmp_path / f"{len(os.listdir(tmp_path))}.h5")
            done = run_cli("extract", str(root), output, *args)
            assert done.exit_code == 0, done.stderr
            return done.stderr

        note = f"not using the efx server at {sock} (process {server.process.pid}): "
        assert note + "it serves another model" in run("-m", keras_model, "--image-size", "48")
        assert note + "it runs the model with another --image-size" in run(
            "-m", str(model), "--image-size", "64"
        )
        assert "another --precision" not in run("-m", str(model), "--image-size", "48")
        assert "another --backend" in run(
            "-m", str(model), "--image-size", "48", "--backend", "tensorflow"
        )
        # Another efx: the server's hello, as a client of a newer efx reads it.
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(sock)
            serve.send(client, {"op": "hello"})
            hello, _ = serve.receive(client)
        asked = serve.Asked(str(model), 48, None, "float32", "auto")
        assert serve.refusal(hello, asked, serve.build()) is None
        assert "it runs another efx" in serve.refusal(hello, asked, "0.5.0+abc")
        # The model's files changed since the server loaded them: stale.
        os.utime(model / "saved_model.pb", ns=(1, 1))
        assert note + "the model's files changed since it loaded them: restart it" in run(
            "-m", str(model), "--image-size", "48"
        )
        # A second server on the same socket is refused; the first one goes on.
        second = run_efx("serve", "--socket", sock, "-m", str(model))
        assert_user_error(second, "an efx server is already running at " + sock)
        assert server.process.poll() is None
    finally:
        server.stop()


def test_what_is_not_an_efx_server_is_passed_by_and_a_stale_socket_replaced(
    tiny_model, tmp_path, monkeypatch
):
    root = tmp_path / "images"
    write_good_images(str(root))
    sock = str(tmp_path / "s.sock")
    other = socket.socket(socket.AF_UNIX)
    other.bind(sock)
    other.listen()
    other.close()  # a socket file nothing listens at: left by a server that was kill -9'd
    with monkeypatch.context() as env:  # the command's run, in this process
        env.setenv("EFX_SOCKET", sock)
        done = run_cli("extract", str(root), str(tmp_path / "a.h5"), "-m", tiny_model)
    assert done.exit_code == 0 and "efx serve" not in done.stderr, done.stderr
    assert efx.info(str(tmp_path / "a.h5"))["complete"]
    server = Served(sock, "-m", tiny_model, "--image-size", "48")  # replaces the stale socket
    server.stop()
    assert_user_error(run_cli("serve", "--socket", "/" + "x" * 120), "too long for a Unix socket")


def test_a_server_killed_mid_run_leaves_an_output_that_resumes_bit_equal(slow_model, tmp_path):
    """The slow model (0.5 s a batch, TensorFlow) makes a run last long enough to kill its
    server: the run ends in one line saying what to do, the output resumes without the server
    to the rows of a run of its own."""
    root = tmp_path / "images"
    os.makedirs(root)
    rng = np.random.default_rng(0)
    for i in range(40):  # distinct bytes: repeats would be embedded once
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(root / f"{i:02}.png")
    sock = str(tmp_path / "s.sock")
    common = [
        "-m",
        slow_model,
        "--image-size",
        "32",
        "--batch-size",
        "2",
        "--backend",
        "tensorflow",
    ]
    server = Served(sock, *common)
    run = subprocess.Popen([EFX, "extract", str(root), str(tmp_path / "o.h5"), *common],
                           env=server.env(), stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(4)
    server.process.kill()
    _, stderr = run.communicate(timeout=120)
    server.stop()
    assert run.returncode == 1, stderr
    assert f"efx: efx serve ({sock}) stopped answering during the run" in stderr
    assert "run the same command with --resume" in stderr and "Traceback" not in stderr
    assert 0 < efx.info(str(tmp_path / "o.h5"))["count"] < 40
    with no_sleep(slow_model):  # without the server (EFX_SOCKET is empty in the suite)
        resumed = run_cli("extract", str(root), str(tmp_path / "o.h5"), *common, "--resume")
        assert resumed.exit_code == 0, resumed.stderr
        efx.extract(
            str(root), str(tmp_path / "w.h5"), model=slow_model, image_size=32, batch_size=2,
            backend="tensorflow",
        )  # fmt: skip
    (p1, r1), (p2, r2) = efx.load(str(tmp_path / "o.h5")), efx.load(str(tmp_path / "w.h5"))
    assert p1 == p2 and np.array_equal(r1, r2)


def test_compiled_modules_python_writes_later_do_not_make_efx_another_efx(tmp_path):
    """What says efx (or a model folder) changed leaves out __pycache__: Python writes it as
    it first imports each module, so a client started after the server would see another
    tree (and refuse the server: "it runs another efx") where nothing changed."""
    import hashlib

    from efx import files

    package = tmp_path / "package"
    package.mkdir()
    (package / "module.py").write_text("x = 1\n")

    def digest() -> str:
        found = hashlib.sha1()
        files.digest_tree(found, str(package))
        return found.hexdigest()

    before = digest()
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"compiled")
    assert digest() == before
    (package / "module.py").write_text("x = 2\n")  # an edit is a change
    assert digest() != before
