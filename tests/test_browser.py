"""Slow: the web page in headless Chromium (Debian `chromium` + `chromium-driver`, installed by
`make test-slow`): type a prompt, press Generate, and see a playable <video>."""

import shutil
import socket
import threading
import time

import pytest

pytestmark = pytest.mark.slow

webdriver = pytest.importorskip("selenium.webdriver")
uvicorn = pytest.importorskip("uvicorn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tiny_model_dir):
    from kinema.pipeline import TextToVideoPipeline
    from kinema.serve.app import create_app

    app = create_app(pipe=TextToVideoPipeline.from_pretrained(tiny_model_dir))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(5)


def test_page_generates_a_playable_video(server):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("needs Debian's chromium and chromium-driver: run `make test-slow`, which installs them")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(server)
        box = driver.find_element(By.ID, "prompt")
        box.clear()
        box.send_keys("a red circle moving left")
        driver.find_element(By.ID, "steps").clear()
        driver.find_element(By.ID, "steps").send_keys("3")
        driver.find_element(By.ID, "go").click()
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: "done" in d.find_element(By.ID, "status").text or d.find_element(By.ID, "error").text)
        assert driver.find_element(By.ID, "error").text == ""
        # the video element has loaded the mp4 and knows its duration: the browser can play it
        wait.until(lambda d: d.execute_script("const v = document.getElementById('video');"
                                              "return v.readyState >= 1 && v.duration > 0;"))
        assert driver.execute_script("return document.getElementById('video').error") is None
    finally:
        driver.quit()
