"""End to end in a real browser: `make studio` on a free port over a home with a finished and a running run,
driven by headless Debian chromium through chromium-driver and selenium. Each tab must show the expected
figures, the running run's curves must follow new metrics, and a chat reply must arrive. Screenshots go to
$STUDIO_SCREENSHOTS (docs/studio/ holds the ones in docs/STUDIO.md), else to the test's temp directory."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launch_helpers import free_port
from reliability_helpers import ROOT
from utils.studio.data_view import ExampleBrowser

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER) or importlib.util.find_spec("gradio") is None
    or importlib.util.find_spec("selenium") is None,
    reason="needs chromium + chromium-driver (apt-get) and gradio + selenium (requirements-studio.txt)")
WAIT_S = 240
"""Generous: the page shares one core with other work on a loaded CI machine."""


@pytest.fixture
def home(studio_home, tmp_path, lock_holder):
    """A copy of the studio home plus a running run (lock held by a child) whose metrics grow during the test."""
    home = tmp_path / "home"
    shutil.copytree(studio_home, home, symlinks=True)
    running = home / "checkpoints" / "sft" / "running"
    shutil.copytree(home / "checkpoints" / "sft" / "interrupted", running)
    child = lock_holder(running)
    yield home
    child.kill()
    child.wait()


@pytest.fixture
def page(home, tmp_path):
    port = free_port()
    log = open(tmp_path / "studio.log", "w")
    server = subprocess.Popen(["make", "-s", "studio", f"STUDIO_PORT={port}", f"STUDIO_ARGS=--root {home}"],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/"
    end = time.time() + WAIT_S
    while f"studio: {url[:-1]}" not in (tmp_path / "studio.log").read_text() and time.time() < end:
        assert server.poll() is None, (tmp_path / "studio.log").read_text()[-3000:]
        time.sleep(0.5)
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
    driver.get(url)
    yield driver
    driver.quit()
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)
    log.close()


def text_of(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found else ""


def wait_text(driver, element_id: str, *needles: str) -> str:
    end = time.time() + WAIT_S
    while time.time() < end:
        text = text_of(driver, element_id)
        if all(n in text for n in needles):
            return text
        time.sleep(0.5)
    raise AssertionError(f"#{element_id} never showed {needles}; it shows: {text_of(driver, element_id)[-1500:]}")


def open_tab(driver, name: str) -> None:
    from selenium.webdriver.common.by import By

    [tab for tab in driver.find_elements(By.CSS_SELECTOR, "[role=tab]") if tab.text == name][0].click()


def shoot(driver, tmp_path: Path, name: str) -> None:
    """A small PNG of the page (palette colours) into $STUDIO_SCREENSHOTS or the temp directory."""
    from PIL import Image

    out = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    raw = tmp_path / f"{name}.raw.png"
    driver.save_screenshot(str(raw))
    Image.open(raw).convert("RGB").quantize(64).save(out / f"{name}.png", optimize=True)


def test_every_tab_in_a_browser(page, home, tmp_path):
    from selenium.webdriver.common.by import By

    runs_dir = home / "checkpoints" / "sft"
    # Runs: all three states; the running run (listed first) is plotted and follows new metrics
    table = wait_text(page, "runs-table", "running", "finished", "interrupted", "evaluation")
    assert str(runs_dir / "running") in table
    wait_text(page, "runs-latest", str(runs_dir / "running"))
    with open(runs_dir / "running" / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 77, "loss": 0.123, "lr": 0.001, "tokens_per_s": 4321.0}) + "\n")
    latest = wait_text(page, "runs-latest", "77", "0.123", "4321")
    assert "resume" in wait_text(page, "runs-details", "checkpoint-4", "--resume_from_checkpoint")
    shoot(page, tmp_path, "runs")
    # Data: the first corpus's manifest figures and a highlighted example
    open_tab(page, "Data")
    manifest = json.loads((home / "data" / "sft_processed" / "chat" / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    wait_text(page, "data-splits", str(train["conversations"]), str(train["total_tokens"]))
    wait_text(page, "data-sources", "chat")
    wait_text(page, "data-caption", "trained (highlighted)")
    wait_text(page, "data-example", "<|im_start|>assistant")
    segments, _caption = ExampleBrowser().render(home / "data" / "sft_processed" / "chat", "train", 0)
    marked = [e.text for e in page.find_elements(By.CSS_SELECTOR, "#data-example .token.highlighted")]
    assert marked == [text.strip() for text, label in segments if label] and len(marked) == 2
    page.execute_script("document.getElementById('data-caption').scrollIntoView()")
    shoot(page, tmp_path, "data")
    # Evaluation: the report's metrics, family table and plots
    open_tab(page, "Evaluation")
    report = json.loads((runs_dir / "finished" / "eval" / "eval_report.json").read_text())
    wait_text(page, "eval-metrics", "val_loss", f"{report['tuned']['val_loss']:.4f}", f"{report['base']['val_loss']:.4f}")
    wait_text(page, "eval-families", "sum")
    wait_text(page, "eval-generations", "The answer is 1.")
    shoot(page, tmp_path, "evaluation")
    # Chat: a sampled reply streams into the page
    open_tab(page, "Chat")
    wait_text(page, "chat-model", "final")
    temperature = page.find_element(By.CSS_SELECTOR, "#chat-temperature input[type=number]")
    temperature.clear()
    temperature.send_keys("1")
    page.find_element(By.CSS_SELECTOR, "#chat-message textarea").send_keys("What is 2 plus 3?")
    page.find_element(By.ID, "chat-send").click()
    wait_text(page, "chat-status", "template chatml")
    end = time.time() + WAIT_S
    while time.time() < end and not page.find_elements(By.CSS_SELECTOR, "#chat-tuned [data-testid=bot]"):
        time.sleep(0.5)
    replies = page.find_elements(By.CSS_SELECTOR, "#chat-tuned [data-testid=bot]")
    assert replies and replies[0].text.strip(), text_of(page, "chat-tuned")
    shoot(page, tmp_path, "chat")
    # Launch: the exact command of the form
    open_tab(page, "Launch")
    page.find_element(By.CSS_SELECTOR, "#launch-output textarea").send_keys("checkpoints/sft_industrial/try")
    page.find_element(By.CSS_SELECTOR, "#launch-model textarea").send_keys("checkpoints/pretrain/tiny/final")
    page.find_element(By.CSS_SELECTOR, "#launch-data textarea").send_keys("data/sft_processed/demo")
    wait_text(page, "launch-command", f"{ROOT}/scripts/03_sft_industrial.py --config {ROOT}/config/sft_training/",
              "--data_dirs data/sft_processed/demo")
    shoot(page, tmp_path, "launch")
    assert "77" in latest
