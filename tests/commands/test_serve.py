"""`scenemtl serve`: a page to try a model, checked in a real headless browser."""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys

import pytest
from PIL import Image

import scenemtl
from scenemtl.api import MAX_PIXELS
from scenemtl.cli import _run_guarded
from scenemtl.commands.serve import add_serve_parser
from scenemtl.tasks.depth import format_meters
from scenemtl.tasks.keys import log_ticks
from tests.browser import browser_page, free_port, wait_for_http, why_no_browser
from tests.helpers import REPO, default_sigint


def run_serve(argv):
    parser = argparse.ArgumentParser(prog="scenemtl")
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", *argv])
    return _run_guarded(lambda: args.func(args))


def test_without_gradio_it_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` fails
    monkeypatch.delitem(sys.modules, "scenemtl.page.app", raising=False)
    assert run_serve(["--ckpt_path", str(tmp_path / "x.ckpt")]) == 1
    err = capsys.readouterr().err
    assert err == "scenemtl: error: gradio is not installed: pip install 'scenemtl[serve]'\n"


def test_a_folder_that_is_no_dataset_is_one_line(capsys, tmp_path):
    pytest.importorskip("gradio")
    assert run_serve(["--ckpt_path", "x.ckpt", "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a scenemtl dataset root" in err, err


def test_a_port_beyond_65535_is_one_line(capsys):
    pytest.importorskip("gradio")
    assert run_serve(["--ckpt_path", "x.ckpt", "--port", "70000"]) == 1
    assert "not a port number" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    """The suite's one-epoch tiny run (tests/conftest.py)."""
    return tiny_ckpt


def start_server(ckpt, data, port):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    argv = ["serve", "--ckpt_path", str(ckpt), "--data", str(data), "--port", str(port)]
    return subprocess.Popen(
        [sys.executable, "-m", "scenemtl", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=default_sigint,
    )


def stop_server(server):
    """Ctrl-C; the output of the whole session."""
    server.send_signal(signal.SIGINT)
    return server.communicate(timeout=60)[0]


@pytest.mark.slow
def test_ctrl_c_stops_the_server_with_status_130(ckpt, tiny_root):
    pytest.importorskip("gradio")
    port = free_port()
    server = start_server(ckpt, tiny_root, port)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", server, timeout_s=180)
    finally:
        output = stop_server(server)
    assert server.returncode == 130, output
    assert "scenemtl: interrupted" in output and "Traceback" not in output


@pytest.mark.slow
@pytest.mark.skipif(why_no_browser() is not None, reason=str(why_no_browser()))
def test_a_person_drops_an_image_and_sees_the_panel_legend_and_scale(ckpt, tiny_root, tmp_path):
    pytest.importorskip("gradio")
    model = scenemtl.load(ckpt)
    lo, hi = model.module.tasks["depth"].range_m
    street = tmp_path / "street.png"
    street.write_bytes((tiny_root / "val" / "rgb" / "1.png").read_bytes())
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    huge = tmp_path / "huge.png"
    side = math.isqrt(MAX_PIXELS) + 1
    Image.new("RGB", (side, side)).save(huge)  # above MAX_PIXELS; black, so a small PNG
    port = free_port()
    server = start_server(ckpt, tiny_root, port)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, server, timeout_s=180)
        with browser_page() as page:
            page.set_viewport_size({"width": 1280, "height": 900})
            page.goto(url)
            page.get_by_text("Examples from the dataset").wait_for(timeout=60_000)
            # the keys are on the page from the start: every class, the depth scale's ends
            for name in model.class_names:
                page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
            for depth in log_ticks(lo, hi):
                assert page.get_by_text(format_meters(depth), exact=True).count() == 1
            # an upload: the panel and one line about it
            page.locator("input[type=file]").first.set_input_files(str(street))
            page.get_by_text("street.png (48x32): semseg: mostly").wait_for(timeout=60_000)
            panel = page.locator("#smtl-panel img")
            panel.wait_for(timeout=30_000)
            shown = panel.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert shown == [3 * 48 + 2 * 2, 32]  # RGB | semseg | depth, 2-pixel gaps
            page.screenshot(path=str(tmp_path / "upload.png"), full_page=True)
            # a file that is not an image: one line on the page, the panel cleared
            page.get_by_label("Remove Image").first.click()
            page.locator("input[type=file]").first.set_input_files(str(notes))
            page.get_by_text("Cannot predict on notes.png:").wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "not_an_image.png"), full_page=True)
            assert page.locator("#smtl-panel img").count() == 0
            # an image above MAX_PIXELS: refused from its header, one line
            page.get_by_label("Remove Image").first.click()
            page.locator("input[type=file]").first.set_input_files(str(huge))
            page.get_by_text(
                f"Cannot predict on huge.png: {side}x{side} pixels is above the "
                f"{MAX_PIXELS / 1e6:.1f} MP limit"
            ).wait_for(timeout=60_000)
            # an example from the dataset's val split
            page.get_by_label("Remove Image").first.click()
            page.locator(".gallery-item").first.click()
            page.get_by_text("0.png (48x32): semseg: mostly").wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "example.png"), full_page=True)
    finally:
        output = stop_server(server)
    assert server.returncode == 130, output
    assert "Traceback" not in output, output
