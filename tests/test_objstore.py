"""A run folder on an object store: moto's S3 server on 127.0.0.1 stands in for S3.

The tiny chain with its run folder at ``s3://bucket/run`` exports exactly the rows of a
local run; its blobs, shards, ledger and stats are objects there; an interrupted run
resumes without redoing committed work; the request cache is shared through the bucket.
"""

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, exported_rows, run_chain
from fakes.s3 import SECRET
from fakes.s3 import url as _url

pytest.importorskip("moto")
pafs = pytest.importorskip("pyarrow.fs")

from nhr.config import reconcile  # noqa: E402
from nhr.errors import RunFolderError  # noqa: E402
from nhr.lock import ObjectLock  # noqa: E402
from nhr.pipeline import Pipeline  # noqa: E402
from nhr.push import push_dataset  # noqa: E402
from nhr.stages.edits import EditStage  # noqa: E402
from nhr.stages.export import load_export  # noqa: E402
from nhr.store import ObjectFiles, RunStore, open_files  # noqa: E402


def test_files_on_s3_write_read_list_delete_and_pickle(s3):
    files = open_files(_url("files"))
    assert isinstance(files, ObjectFiles) and not files.local
    files.write_bytes("a/b.bin", b"one")
    files.write_bytes("a/c.bin", b"two")
    assert files.read_bytes("a/b.bin") == b"one" and files.exists("a/c.bin")
    assert sorted(n for n, _ in files.listdir("a")) == ["b.bin", "c.bin"]
    with pytest.raises(FileNotFoundError):
        files.read_bytes("a/none")
    again = pickle.loads(pickle.dumps(files))  # by URL and resolved options, no credential
    assert again.read_bytes("a/c.bin") == b"two"
    assert SECRET.encode() not in pickle.dumps(files)  # the secret key never travels
    files.delete("a/b.bin")
    assert files.walk("a") == ["a/c.bin"] and not files.exists("a/b.bin")
    store = pickle.loads(pickle.dumps(RunStore(files.url)))
    assert store.read_bytes("a/c.bin") == b"two" and store.name == files.url.rsplit("/", 1)[-1]


def test_tiny_chain_on_s3_exports_the_rows_of_a_local_run(s3, tiny_chain, tmp_path):
    url = _url("chain")
    pipe = run_chain(url)
    pipe.write_summary()
    assert not list(tmp_path.iterdir())  # nothing written to a local folder
    assert not os.path.exists("s3:")
    assert pipe.store.tables.count("candidates") == tiny_chain.store.tables.count("candidates")
    local, remote = exported_rows(tiny_chain.store), exported_rows(pipe.store)
    assert remote and remote == local
    # `datasets` loads the export from the bucket (its shards fetched through pyarrow.fs)
    ds = load_export(pipe.store.url("dataset"))
    assert len(ds) == len(remote) and ds[0]["source_image"].size[0] > 0
    # everything is objects in the bucket, in the local layout
    objects = {o.split("/")[0] for o in pipe.store.walk("")}
    assert {"blobs", "tables", "stats", "dataset", "config.yaml", "summary.json"} <= objects
    key = pipe.store.files.arrow("")[0]
    for rel in ("tables/candidates/ledger", "tables/candidates/data", "truth"):
        listing = s3.get_file_info(pafs.FileSelector(f"{key}/{rel}", recursive=True))
        assert listing, rel
    assert (
        pipe.store.read_stats("candidates")["rows_out"]
        == tiny_chain.store.read_stats("candidates")["rows_out"]
    )
    assert not pipe.store.exists(".nhr-writer.lock")  # every lease was released
    # a second open of the same URL sees the finished run: nothing to redo
    again = Pipeline.open(url, TINY, progress=False)
    assert again.tables.exists("triplets") or again.tables.exists("mined")
    assert again.export().stats == pipe.store.read_stats("export")
    # `nhr push` uploads the bucket's export: the same files as the export in the bucket
    uploaded: dict[str, bytes] = {}

    class Hub:
        def create_repo(self, repo_id: str, **kw: object) -> str:
            return f"https://huggingface.co/datasets/{repo_id}"

        def upload_folder(self, folder_path: str, **kw: object) -> None:
            root = Path(folder_path)
            for f in root.rglob("*"):
                if f.is_file():
                    uploaded[f.relative_to(root).as_posix()] = f.read_bytes()

    push_dataset(url, "me/edits", webdataset=False, api=Hub())
    files = open_files(url)
    want = {
        rel.split("/", 1)[1]: files.read_bytes(rel)
        for rel in files.walk("dataset")
        if not rel.startswith("dataset/webdataset/")
    }
    assert uploaded == want and "README.md" in uploaded


def test_interrupted_run_on_s3_resumes_without_redoing_work(s3, tmp_path, monkeypatch):
    url = _url("resume")
    # a smaller grid than TINY (the chain test covers that size); commit every batch; one
    # in-process worker, so the patched stage is the one that runs
    params = {
        **TINY,
        "N_PROMPTS": 3,
        "N_SOURCE_SEEDS": 2,
        "BATCH_SIZE": 4,
        "SHARD_FLUSH_SECONDS": 0.0,
        "WORKERS": 1,
    }

    def chain(where) -> Pipeline:
        pipe = Pipeline.open(where, params, progress=False)
        pipe.run_chain(until="edits")
        return pipe

    reference = chain(tmp_path / "local")
    key_field = EditStage.input_type.key
    seen: list[list[str]] = []
    original = EditStage.process_batch

    def crashing(self, rows):
        if len(seen) == 3:
            raise KeyboardInterrupt("killed mid-stage")
        seen.append([getattr(r, key_field) for r in rows])
        return original(self, rows)

    monkeypatch.setattr(EditStage, "process_batch", crashing)
    with pytest.raises(KeyboardInterrupt):
        chain(url)
    first = RunStore(url)
    done = set(first.tables.input_keys("candidates").to_pylist())
    assert done and len(done) < reference.store.tables.count("candidates")
    assert not first.exists(".nhr-writer.lock")  # released on the way out

    redone: list[list[str]] = []

    def counting(self, rows):
        redone.append([getattr(r, key_field) for r in rows])
        return original(self, rows)

    monkeypatch.setattr(EditStage, "process_batch", counting)
    pipe = chain(url)
    again = {k for batch in redone for k in batch}
    assert again and not again & done  # nothing committed was computed twice
    keys = pipe.store.tables.input_keys("candidates").to_pylist()
    assert len(keys) == len(set(keys))  # no input committed twice
    columns = ["candidate_id", "image", "instruction"]
    got, want = (p.tables.read("candidates", columns) for p in (pipe, reference))
    assert got.num_rows and got.sort_by("candidate_id").equals(want.sort_by("candidate_id"))


def test_object_lock_refuses_a_live_holder_and_frees_a_dead_one(s3):
    files = open_files(_url("lock"))
    first = ObjectLock(files, ".nhr-writer.lock", "stage a", settle_seconds=0.05)
    with first:
        with pytest.raises(RunFolderError, match="being written by process"):
            ObjectLock(files, ".nhr-writer.lock", "stage b", settle_seconds=0.05).acquire()
    assert not files.exists(".nhr-writer.lock")
    # a lease left by a killed process: its pid is dead on this host, so it is free
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def lease(host: str, pid: int, heartbeat: float) -> bytes:
        return json.dumps({"token": "x", "host": host, "pid": pid, "heartbeat": heartbeat}).encode()

    files.write_bytes(".nhr-run.lock", lease(socket.gethostname(), dead.pid, time.time()))
    with ObjectLock(files, ".nhr-run.lock", "nhr run", settle_seconds=0.05) as lock:
        assert not lock.lost
    # a lease from another host is free once its heartbeat is stale, not before
    files.write_bytes(".nhr-run.lock", lease("elsewhere", 1, 0.0))
    with ObjectLock(files, ".nhr-run.lock", "nhr run", settle_seconds=0.05):
        pass
    files.write_bytes(".nhr-run.lock", lease("elsewhere", 1, time.time()))
    with pytest.raises(RunFolderError, match="elsewhere"):
        ObjectLock(files, ".nhr-run.lock", "nhr run", settle_seconds=0.05).acquire()


def test_request_cache_on_s3_is_shared_by_separate_clients(s3, monkeypatch):
    from fakes.model_server import FakeModelServer
    from fakes.remote import images, remote_backends, remote_config, use_fake

    url = _url("cache")
    args = (images(4), images(4)[::-1], [f"make cube {i} red" for i in range(4)])
    with FakeModelServer() as srv:
        use_fake(monkeypatch, srv)
        cfg = remote_config(srv)
        with remote_backends(cfg, url) as b:  # one node
            first = b.validator.score(*args)
        assert srv.count == 4
        with remote_backends(cfg, url) as b:  # another node: a new client, same bucket
            assert b.validator.score(*args) == first
            assert b.validator.usage()["cache_hits"] == 4
        assert srv.count == 4
        replies = RunStore(url).walk("cache/replies")
        assert len(replies) == 4 and not RunStore(url).exists("api_cache.sqlite")
        # API_CACHE off: no object read or written; API_CACHE_DIR may be a URL too
        off = _url("off")
        with remote_backends(remote_config(srv, api_cache=False), off) as b:
            b.validator.score(*args)
        assert srv.count == 8 and not open_files(off).walk("cache")
        shared = _url("shared-cache")
        for run in ("r1", "r2"):
            cfg = remote_config(srv, api_cache_dir=shared)
            with remote_backends(cfg, _url(run)) as b:
                b.validator.score(*args)
        assert srv.count == 12 and len(open_files(shared).walk("cache/replies")) == 4


def test_nhr_run_with_an_s3_run_dir(s3, tmp_path):
    from conftest import NHR, ROOT

    config = tmp_path / "one.yaml"
    config.write_text(
        "name: one\n"
        f"notebooks: [{ROOT / 'notebooks' / '01_prompts.ipynb'}]\n"
        "params: {SEED: 0, PROMPTER: synthetic, N_PROMPTS: 3, K_INSTRUCTIONS: 2}\n"
    )
    url = _url("cli")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    cmd = [*NHR, "run", str(config), "--run-dir", url, "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    store = RunStore(url)
    assert store.tables.count("prompts") == 3 and store.exists("config.yaml")
    # the executed notebook: written locally by papermill, then copied into the run
    local = tmp_path / "results" / "one" / "notebooks" / "01_prompts.ipynb"
    assert store.read_bytes("notebooks/01_prompts.ipynb") == local.read_bytes()
    assert not store.exists(".nhr-run.lock") and not store.exists(".nhr-writer.lock")
    with pytest.raises(RunFolderError, match="N_PROMPTS"):  # the saved config refuses
        reconcile(url, {"N_PROMPTS": 4})  # a run that would mix outputs
