"""JupyterLab in a real browser: every notebook runs all its cells in Lab without an error output, and the widgets of
notebooks 00 and 01 answer a moved slider / changed dropdown with new printed text and a new plot.

Headless Debian `chromium` (apt; never a downloaded browser) is driven by Playwright against a `jupyter lab` this
module starts on a free loopback port with a token and its own runtime/config/settings/workspace folders. The
notebooks are copied to a temporary project folder (pyproject.toml and benchmarks/ linked beside them, which
notebooks 03 and 06 look up from their working directory), so the committed, executed notebooks are never saved
over. Screenshots of each notebook after its run go to tests/artifacts/lab/ (git-ignored), with timings.json.
Without Chromium or Playwright the tests skip, except where the environment variable CI is set: there they fail.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ARTIFACTS = ROOT / "tests" / "artifacts" / "lab"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SERVER_START_S = 180  # Lab on a busy two-core machine
RUN_ALL_S = 1800  # a notebook takes 1-3 min on two free cores; many times that on a shared, busy machine
WIDGET_S = 600  # notebook 00's widget quantizes and evaluates the model once per click
WIDGET_NOTEBOOKS = {"00_tour.ipynb", "01_affine_quantization.ipynb"}
TIMINGS: dict[str, float] = {}

# Lab's user settings for the run: every cell attached to the DOM (no windowing), no news or update checks
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                       "checkForUpdates": False},
}

# the open notebook's state, read from Lab's own models (window.jupyterapp, exposed by --expose-app-in-browser)
STATE_JS = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = [];
  panel.content.widgets.forEach((cell, i) => {
    if (cell.model.type !== 'code') return;
    const outputs = cell.model.outputs.toJSON();
    cells.push({index: i, count: cell.model.executionCount,
                errors: outputs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue)});
  });
  const prompts = [...panel.node.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(n => n.textContent.trim());
  const tracebacks = [...panel.node.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(n => n.textContent).filter(t => /Traceback \\(most recent call last\\)/.test(t))
    .map(t => t.slice(0, 2000));
  return {kernel: kernel ? kernel.status : 'none', connection: kernel ? kernel.connectionStatus : 'none',
          cells, prompts, tracebacks};
}"""


def _need(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser test must run there)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running `jupyter lab` on copies of the notebooks: yields (base url, token, project folder)."""
    if not shutil.which("chromium"):
        _need("no Chromium: install Debian's package (`make browser` does it as root: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need("Playwright for Python is not installed: `pip install -e '.[test]'` (or `make setup`)")
    base = tmp_path_factory.mktemp("lab")
    project = base / "qlab"
    (project / "notebooks").mkdir(parents=True)
    for name in NOTEBOOKS:
        shutil.copy2(ROOT / "notebooks" / name, project / "notebooks" / name)
    for name in ("pyproject.toml", "benchmarks"):  # notebooks 03/06 find the project root from their folder
        (project / name).symlink_to(ROOT / name)
    env = dict(os.environ)
    for var, sub in [("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                     ("JUPYTER_DATA_DIR", "data"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("IPYTHONDIR", "ipython")]:
        env[var] = str(base / sub)
        (base / sub).mkdir()
    env["JUPYTER_PREFER_ENV_PATH"] = "1"
    for rel, settings in LAB_SETTINGS.items():
        path = base / "settings" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={project}",
           "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(base / "jupyter-lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not start: {(base / 'jupyter-lab.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url, token, project
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _state(page) -> dict:
    return page.evaluate(STATE_JS)


def _wait_run_all(page, name: str) -> dict:
    """Wait until the kernel is idle and every code cell has an execution count, or an error stopped the run."""
    deadline = time.monotonic() + RUN_ALL_S
    st = None
    while time.monotonic() < deadline:
        st = _state(page)
        if st and st["cells"] and st["kernel"] == "idle" and not any(p == "[*]:" for p in st["prompts"]):
            if all(c["count"] for c in st["cells"]) or any(c["errors"] for c in st["cells"]) or st["tracebacks"]:
                return st
        page.wait_for_timeout(1000)
    pending = [c["index"] for c in (st or {"cells": []})["cells"] if not c["count"]]
    pytest.fail(f"{name}: Run All did not finish within {RUN_ALL_S} s (kernel {st and st['kernel']}, cells still "
                f"without an execution count: {pending})")


def _open_and_run(page, lab, name: str) -> dict:
    """Open the notebook in Lab, clear its outputs, Run ▸ Run All Cells, and wait for the end of the run."""
    url, token, _ = lab
    page.goto(f"{url}/lab/tree/notebooks/{name}?reset&token={token}")
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for()
    page.wait_for_function("() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                           " return w && w.sessionContext && w.sessionContext.session &&"
                           " w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle'; }",
                           timeout=SERVER_START_S * 1000)
    # the committed notebook carries execution counts: clear them, so that every count seen later is this run's
    _menu(page, "Edit", "Clear Outputs of All Cells")
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.content.widgets"
                           ".every(c => c.model.type !== 'code' || !c.model.executionCount)")
    _menu(page, "Run", "Run All Cells")
    return _wait_run_all(page, name)


def _menu(page, menu: str, item: str) -> None:
    """Click a main-menu entry the way a user does: the menu bar's title, then the item's label."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).first.click()
    page.locator(".lm-Menu-content .lm-Menu-item:not(.lm-mod-disabled)",
                 has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{item}$"))).first.click()


def _close(page) -> None:
    try:  # shut the kernel down (nothing is saved), then drop the page
        page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    except Exception:  # noqa: BLE001 -- best effort: the server's end stops every kernel anyway
        pass
    page.close()


def _widget_output(page) -> dict:
    return page.evaluate(r"""() => {
      const w = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .widget-interact');
      if (!w) return null;
      const out = w.querySelector('.widget-output') || w;
      const mime = m => [...out.querySelectorAll(
        `.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.${m}"]`)];
      return {text: mime('stdout').map(n => n.textContent).join(''),
              images: [...out.querySelectorAll('img')].map(i => i.src),
              canvases: [...out.querySelectorAll('canvas')].map(c => c.toDataURL()),
              errors: mime('stderr').map(n => n.textContent)
                        .filter(t => /Traceback \(most recent call last\)/.test(t))};
    }""")


def _plot(o: dict) -> list:
    return o["images"] + o["canvases"]


def _wait_output(page, pred, what: str) -> dict:
    """The widget's output once `pred` holds and the output stayed the same for 2 s (an update clears it first)."""
    deadline = time.monotonic() + WIDGET_S
    last = None
    while time.monotonic() < deadline:
        o = _widget_output(page)
        if o and o["errors"]:
            pytest.fail(f"{what}: the widget's output shows an error:\n{o['errors'][0][:2000]}")
        if o and pred(o) and o == last:
            return o
        last = o
        page.wait_for_timeout(2000)
    pytest.fail(f"{what}: the widget's output did not appear/change within {WIDGET_S} s: {_widget_output(page)}")


def _move_slider(widget, page) -> str:
    """Move the first slider one step with the keyboard (as a user does) and return its new readout."""
    slider = widget.locator(".widget-slider").first
    readout = slider.locator(".widget-readout")
    before = readout.inner_text()
    handle = slider.locator(".noUi-handle").first
    handle.click()
    handle.press("ArrowLeft")
    page.wait_for_timeout(300)
    if readout.inner_text() == before:  # already at its minimum: the other way
        handle.press("ArrowRight")
        handle.press("ArrowRight")
    page.wait_for_timeout(300)
    after = readout.inner_text()
    assert after != before, f"the slider did not move ({before!r})"
    return f"{before} -> {after}"


def _change_dropdown(widget) -> str:
    select = widget.locator(".widget-dropdown select").first
    options = select.locator("option").all_inner_texts()
    before = select.input_value()
    after = next(o for o in options if o != before)
    select.select_option(label=after)
    return f"{before} -> {after}"


def _exercise_widget(page, name: str) -> None:
    """Move a slider (else change a dropdown) of the notebook's first interact: its text and plot must change."""
    widget = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .widget-interact").first
    widget.scroll_into_view_if_needed()
    run = widget.locator("button", has_text=re.compile("Run Interact"))
    manual = run.count() > 0
    if manual:  # interact_manual: nothing is shown before the first click
        run.first.click()
    o0 = _wait_output(page, lambda o: o["text"].strip() or _plot(o), f"{name} first widget output")
    if widget.locator(".widget-slider .noUi-handle").count():
        move = _move_slider(widget, page)
    else:
        move = _change_dropdown(widget)
    if manual:
        run.first.click()

    def changed(o):
        return ((not o0["text"].strip() or (o["text"].strip() and o["text"] != o0["text"]))
                and (not _plot(o0) or (_plot(o) and _plot(o) != _plot(o0))))
    o1 = _wait_output(page, changed, f"{name} after {move}")
    assert o1["text"].strip() or _plot(o1), f"{name}: the widget shows neither text nor a plot"
    if o0["text"].strip():
        assert o1["text"] != o0["text"], f"{name}: the printed text did not change after {move}"
    if _plot(o0):
        assert _plot(o1) != _plot(o0), f"{name}: the plot did not change after {move}"
    widget.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{Path(name).stem}-widget.png"))
    TIMINGS[f"{name} widget kinds"] = ("text " if o0["text"].strip() else "") + ("plot" if _plot(o0) else "")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_jupyterlab(browser, lab, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.set_default_timeout(120_000)
    try:
        st = _open_and_run(page, lab, name)
        TIMINGS[name] = round(time.monotonic() - t0, 1)
        page.screenshot(path=str(ARTIFACTS / f"{Path(name).stem}.png"))
        errors = [(c["index"], e) for c in st["cells"] for e in c["errors"]]
        assert not errors, f"{name}: cells with error outputs in JupyterLab: {errors}"
        assert not st["tracebacks"], f"{name}: a traceback on stderr in JupyterLab:\n{st['tracebacks'][0]}"
        missing = [c["index"] for c in st["cells"] if not c["count"]]
        assert not missing, f"{name}: code cells without an execution count after Run All: {missing}"
        counts = [c["count"] for c in st["cells"]]
        assert counts == sorted(set(counts)), f"{name}: execution counts out of order {counts}"
        if name in WIDGET_NOTEBOOKS:
            t1 = time.monotonic()
            _exercise_widget(page, name)
            TIMINGS[f"{name} widget"] = round(time.monotonic() - t1, 1)
    finally:
        _close(page)
        TIMINGS[f"{name} total"] = round(time.monotonic() - t0, 1)
        (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=1))  # wall seconds, kept per notebook
