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


@pytest.fixture()
def driver():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("needs Debian's chromium and chromium-driver: run `make test-slow`, which installs them")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def _generate(driver, server, prompt: str, image=None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server)
    wait = WebDriverWait(driver, 120)
    wait.until(lambda d: d.find_element(By.ID, "steps").get_attribute("value"))  # defaults from /v1/model
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(prompt)
    driver.find_element(By.ID, "steps").clear()
    driver.find_element(By.ID, "steps").send_keys("3")
    if image is not None:
        driver.find_element(By.ID, "image").send_keys(str(image))
    driver.find_element(By.ID, "go").click()
    wait.until(lambda d: "done" in d.find_element(By.ID, "status").text or d.find_element(By.ID, "error").text)
    assert driver.find_element(By.ID, "error").text == ""
    # the video element has loaded the mp4 and knows its duration: the browser can play it
    wait.until(lambda d: d.execute_script("const v = document.getElementById('video');"
                                          "return v.readyState >= 1 && v.duration > 0;"))
    assert driver.execute_script("return document.getElementById('video').error") is None


def test_page_generates_a_playable_video(server, driver):
    from selenium.webdriver.common.by import By

    _generate(driver, server, "a red circle moving left")
    assert driver.find_element(By.ID, "guidance").get_attribute("value")  # the model's default, not the page's
    assert "expanded:" in driver.find_element(By.ID, "expanded").text  # the prompt the model saw
    assert len(driver.find_elements(By.CSS_SELECTOR, "#gallery figure")) == 1


def test_page_uploads_an_image_for_image_to_video(server, driver, tmp_path):
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By

    frame = np.zeros((32, 32, 3), np.uint8)
    frame[8:20, 8:20] = (220, 30, 30)
    Image.fromarray(frame).save(tmp_path / "first.png")
    _generate(driver, server, "the square moves right", image=tmp_path / "first.png")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#gallery figure")) == 1
