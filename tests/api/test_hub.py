"""The Hugging Face Hub: loading from a pre-filled Hub cache offline, the offline and
no-network errors, and `scenemtl hub push` against huggingface_hub's own code with only
its HTTP client replaced (huggingface_hub 2.x sends every request through the httpx2
client of ``get_session()``, made by the factory of ``set_client_factory``)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import constants
from huggingface_hub.utils import _http

import scenemtl
from scenemtl.cli import main
from scenemtl.errors import UserError
from scenemtl.hub import parse_hub_uri

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """Put ``folder`` into a Hub cache as huggingface_hub lays a downloaded model out:
    ``models--user--repo/blobs/<etag>`` holds the bytes (etag: sha256 for an LFS file,
    the git blob sha1 otherwise), ``snapshots/<commit>/<file>`` is a relative symlink to
    its blob, ``refs/main`` holds the commit hash."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            etag = hashlib.sha256(data).hexdigest()
        else:
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs" / etag).write_bytes(data)
        os.symlink(os.path.join("..", "..", "blobs", etag), snapshot / path.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache of this test (huggingface_hub reads HF_HUB_CACHE at import)."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def offline(monkeypatch) -> None:
    """HF_HUB_OFFLINE=1 (read by huggingface_hub at import, so also set on its module)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def http(monkeypatch) -> Iterator[Callable[[Callable[[httpx2.Request], httpx2.Response]], None]]:
    """Route huggingface_hub's HTTP requests to a handler (its event hooks kept)."""
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def route(handler: Callable[[httpx2.Request], httpx2.Response]) -> None:
        _http.set_client_factory(
            lambda: httpx2.Client(
                transport=httpx2.MockTransport(handler),
                event_hooks={"request": [_http.hf_request_event_hook]},
                follow_redirects=True,
            )
        )

    yield route
    _http.set_client_factory(_http.default_client_factory)


def same_weights(a: scenemtl.Model, b: scenemtl.Model) -> None:
    """Stored weights, not computed values: equal bit for bit."""
    sa, sb = a.module.state_dict(), b.module.state_dict()
    kept = [k for k in sa if k.startswith(("net.", "tasks."))]
    for k in kept:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------------------
# loading


def test_uri_parsing():
    assert parse_hub_uri("hf://user/repo") == ("user/repo", None)
    assert parse_hub_uri("hf://user/repo@v1.0") == ("user/repo", "v1.0")
    for bad in ("hf://", "hf://user/repo@", "user/repo"):
        with pytest.raises(UserError):
            parse_hub_uri(bad)


@pytest.mark.slow
def test_load_from_the_cache_offline(api_folder, hub_cache, offline):
    fill_hub_cache(hub_cache, "user/demo", api_folder)
    model = scenemtl.load("hf://user/demo")
    assert model.source == "hf://user/demo" and model.tasks == ["semseg", "depth"]
    same_weights(model, scenemtl.load(api_folder))
    assert model.card == (api_folder / "README.md").read_text()
    assert scenemtl.load(f"hf://user/demo@{COMMIT}").tasks == ["semseg", "depth"]
    rgb = np.zeros((16, 24, 3), np.uint8)
    assert model.predict(rgb)["depth"].shape == (16, 24)


@pytest.mark.slow
def test_one_file_and_a_repository_that_is_not_a_model(api_folder, hub_cache, offline, tmp_path):
    """download() with a file name (encoder weights) reads the cached file; a repository
    without a model folder is one line naming it."""
    from scenemtl.hub import download

    fill_hub_cache(hub_cache, "user/demo", api_folder)
    path = download("user/demo", "config.json")
    assert path.read_bytes() == (api_folder / "config.json").read_bytes()
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        download("user/demo", "other.safetensors")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "encoder.safetensors").write_bytes(b"x")
    fill_hub_cache(hub_cache, "user/encoder", tmp_path / "weights")
    with pytest.raises(UserError) as exc:
        scenemtl.load("hf://user/encoder")
    assert str(exc.value).startswith("hf://user/encoder: ")
    assert "not a scenemtl model folder" in str(exc.value)


@pytest.mark.slow
def test_predict_and_export_commands_read_the_hub_cache(
    api_folder, api_images, hub_cache, offline, tmp_path, monkeypatch, capsys
):
    fill_hub_cache(hub_cache, "user/demo-model", api_folder)
    out = tmp_path / "preds"
    argv = ["predict", "--ckpt_path", "hf://user/demo-model", "--input", str(api_images)]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--output", str(out)])
    assert exc.value.code == 0
    assert {p.name for p in out.iterdir()} >= {"a_semseg.png", "b_depth.png", "b_panel.png"}

    exported = {}

    def fake_export(module, out, **kwargs):  # the ONNX export itself is tested elsewhere
        exported["module"] = module

        class Report:
            def format(self) -> str:
                return "exported"

        return Report()

    monkeypatch.setattr("scenemtl.commands.export.export_onnx", fake_export)
    with pytest.raises(SystemExit) as exc:
        main(["export", "onnx", "--ckpt_path", "hf://user/demo-model", "--out", "m.onnx"])
    assert exc.value.code == 0
    want = scenemtl.load(api_folder).module.state_dict()
    got = exported["module"].state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if k.startswith("net."))


def test_offline_and_not_cached_is_one_line(hub_cache, offline, tmp_path, capsys):
    with pytest.raises(UserError) as exc:
        scenemtl.load("hf://user/missing")
    text = str(exc.value)
    assert "\n" not in text and "hf://user/missing" in text and "HF_HUB_OFFLINE" in text
    (tmp_path / "in.png").write_bytes(b"")
    argv = ["predict", "--ckpt_path", "hf://user/missing@v2", "--input", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 1
    assert err.count("\n") == 1 and "hf://user/missing@v2" in err and "HF_HUB_OFFLINE" in err


def test_no_network_and_not_cached_is_one_line(hub_cache, http):
    def unreachable(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("Name or service not known", request=request)

    http(unreachable)
    with pytest.raises(UserError) as exc:
        scenemtl.load("hf://user/elsewhere")
    text = str(exc.value)
    assert "\n" not in text and "hf://user/elsewhere" in text
    assert "cannot reach the Hub" in text and "HF_HUB_OFFLINE" in text


def test_unknown_repository_is_one_line(hub_cache, http):
    def not_found(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            404, headers={"X-Error-Code": "RepoNotFound"}, json={"error": "Repository not found"}
        )

    http(not_found)
    with pytest.raises(UserError) as exc:
        scenemtl.load("hf://user/nobody")
    assert "hf://user/nobody" in str(exc.value) and "no such model repository" in str(exc.value)


# --------------------------------------------------------------------------------------
# pushing


class FakeHub:
    """The three endpoints an upload of small files uses (create the repository, ask
    how to upload each file, commit), answering as the Hub does; any other request
    fails the test. Every file is told to go as a regular (inline, base64) file, so the
    commit carries the files' bytes; the LFS/xet transfer of large files runs in hf_xet's
    own (Rust) client and is not exercised here."""

    def __init__(self, repo_id: str, create_status: int = 200) -> None:
        self.repo_id = repo_id
        self.create_status = create_status
        self.created: dict | None = None
        self.files: dict[str, bytes] = {}
        self.commits: list[dict] = []
        self.unexpected: list[str] = []
        self.validated: list[str] = []
        self.authorized = True

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if request.method == "GET" and path == "/api/agent-harnesses":
            # huggingface_hub's once-a-day registry fetch for its user agent; optional
            return httpx2.Response(404, json={"error": "not here"})
        self.authorized &= request.headers.get("authorization") == "Bearer hf_test_token"
        if request.method == "POST" and path == "/api/repos/create":
            self.created = json.loads(request.content)
            if self.create_status != 200:
                return httpx2.Response(self.create_status, json={"error": "Invalid credentials"})
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{self.repo_id}"})
        if request.method == "POST" and path == "/api/validate-yaml":
            # the model card's metadata, checked before the commit
            content = json.loads(request.content)["content"]
            self.validated.append(content)
            try:
                yaml.safe_load(content.split("---\n")[1] if content.startswith("---") else "")
            except yaml.YAMLError:
                return httpx2.Response(400, json={"errors": [{"message": "bad YAML"}]})
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if request.method == "POST" and path == f"/api/models/{self.repo_id}/preupload/main":
            files = json.loads(request.content)["files"]
            return httpx2.Response(
                200,
                json={
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in files
                    ]
                },
            )
        if request.method == "POST" and path == f"/api/models/{self.repo_id}/commit/main":
            lines = [json.loads(x) for x in request.content.decode().splitlines() if x]
            self.commits.append(lines[0]["value"])
            for item in lines[1:]:
                assert item["key"] == "file" and item["value"]["encoding"] == "base64"
                self.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return httpx2.Response(
                200,
                json={
                    "commitUrl": f"https://huggingface.co/{self.repo_id}/commit/{COMMIT}",
                    "commitOid": COMMIT,
                    "success": True,
                },
            )
        self.unexpected.append(f"{request.method} {path}")
        return httpx2.Response(500, json={"error": "unexpected request in the test"})


@pytest.mark.slow
def test_push_a_checkpoint_uploads_the_saved_folder(api_ckpt, api_folder, http, tmp_path, capsys):
    hub = FakeHub("user/demo-model")
    http(hub)
    with pytest.raises(SystemExit) as exc:
        main(["hub", "push", str(api_ckpt), "user/demo-model", "--private"])
    assert exc.value.code == 0, capsys.readouterr().err
    assert hub.unexpected == [] and hub.authorized
    assert hub.created["name"] == "demo-model" and hub.created["organization"] == "user"
    assert hub.created["visibility"] == "private"
    # exactly the files Model.save writes for this checkpoint, with their bytes
    assert set(hub.files) == {p.name for p in api_folder.iterdir()}
    for name, data in hub.files.items():
        assert data == (api_folder / name).read_bytes(), name
    assert hub.validated == [(api_folder / "README.md").read_text()]
    assert f"https://huggingface.co/user/demo-model/commit/{COMMIT}" in capsys.readouterr().out
    # and what was uploaded loads
    uploaded = tmp_path / "uploaded"
    uploaded.mkdir()
    for name, data in hub.files.items():
        (uploaded / name).write_bytes(data)
    same_weights(scenemtl.load(uploaded), scenemtl.load(api_ckpt))


@pytest.mark.slow
def test_push_a_folder_uploads_it_as_it_is(api_folder, http, tmp_path):
    folder = tmp_path / "demo-model"
    scenemtl.load(api_folder).save(folder)
    (folder / "README.md").write_text("# my own card\n")
    hub = FakeHub("org/model")
    http(hub)
    with pytest.raises(SystemExit) as exc:
        main(["hub", "push", str(folder), "org/model"])
    assert exc.value.code == 0
    assert "visibility" not in hub.created and hub.unexpected == []  # the Hub's default
    assert hub.files["README.md"] == b"# my own card\n"
    assert set(hub.files) == {p.name for p in folder.iterdir()}


@pytest.mark.slow
@pytest.mark.parametrize(
    "source, repo, status, culprits",
    [
        ("{folder}", "user/demo", 401, ["cannot push to user/demo", "hf auth login"]),
        ("{folder}", "not a repo id!", 200, ["not a Hub repository id"]),
        ("{tmp}/nothing", "user/demo", 200, ["nothing", "not found"]),
        ("{tmp}", "user/demo", 200, ["not a scenemtl model folder"]),
    ],
)
def test_push_failures_are_one_line(
    api_folder, http, tmp_path, capsys, source, repo, status, culprits
):
    hub = FakeHub("user/demo", create_status=status)
    http(hub)
    source = source.format(folder=api_folder, tmp=tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["hub", "push", source, repo])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err
    for c in culprits:
        assert c in err, (c, err)
    assert hub.files == {}


@pytest.mark.slow
def test_push_offline_is_one_line(api_folder, offline, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["hub", "push", str(api_folder), "user/demo"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "HF_HUB_OFFLINE" in err and err.count("\n") == 1


@pytest.mark.slow
def test_push_without_network_is_one_line(api_folder, http, capsys):
    def unreachable(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("Name or service not known", request=request)

    http(unreachable)
    with pytest.raises(SystemExit) as exc:
        main(["hub", "push", str(api_folder), "user/demo"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.count("\n") == 1
    assert "cannot push to user/demo" in err and "ConnectError" in err
