"""The web page at `/` in a real headless Chromium: choose a photo and aspects, and the crop
boxes appear over it with the crops beside it, each with a download link.

Debian's `chromium` and `chromium-driver` drive it through selenium (.ci/run installs them when
missing; selenium is told where they are, so it never downloads a browser). The server is real
(Uvicorn on a free port) around the stand-in cropper of tests/serve_worker.py: the page is what
is tested here, the model's answers in test_serve.py.
"""

import shutil
import threading
import time

import numpy as np
from PIL import Image
import pytest

pytest.importorskip("starlette", reason="the [serve] extra is not installed")
pytest.importorskip("selenium", reason="selenium (the [test] extra) is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
  pytest.skip("no chromium and chromedriver on PATH (Debian: apt-get install chromium "
              "chromium-driver; .ci/run installs them)", allow_module_level=True)

# pylint: disable=g-import-not-at-top,wrong-import-position  (after the checks above)
from selenium import webdriver
from selenium.webdriver.chrome import service as chrome_service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support import wait as support_wait
import uvicorn

from procrop_jax.serve import app as app_lib
from tests import serve_worker
from tests.conftest import free_port


@pytest.fixture(scope="module")
def server_url():
  app = app_lib.create_app(serve_worker.FakeCropper(), app_lib.Settings(max_batch=4))
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                         log_level="warning"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  for _ in range(200):
    if server.started:
      break
    time.sleep(0.05)
  yield f"http://127.0.0.1:{server.config.port}"
  server.should_exit = True
  thread.join(10)


@pytest.fixture(scope="module")
def browser():
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
    options.add_argument(flag)
  driver = webdriver.Chrome(service=chrome_service.Service(CHROMEDRIVER), options=options)
  yield driver
  driver.quit()


def test_the_page_draws_the_boxes_and_offers_the_crops(server_url, browser, tmp_path):
  photo = tmp_path / "beach.jpg"
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), np.uint8)).save(photo)
  browser.get(server_url + "/")
  assert "http" not in browser.page_source.split("<body")[-1].replace(server_url, "")
  browser.find_element(By.CSS_SELECTOR, "input.aspect[value='16:9']").click()
  browser.find_element(By.ID, "topk").clear()
  browser.find_element(By.ID, "topk").send_keys("2")
  browser.find_element(By.ID, "file").send_keys(str(photo))
  wait = support_wait.WebDriverWait(browser, 20)
  wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "status"), "4 crops"))
  boxes = browser.find_elements(By.CSS_SELECTOR, "#result .photo .box")
  labels = [b.text for b in boxes]
  assert len(boxes) == 4 and labels[0].startswith("free #1") and labels[2].startswith("16x9 #1")
  assert all(b.size["width"] > 0 and b.size["height"] > 0 for b in boxes)
  links = browser.find_elements(By.CSS_SELECTOR, "#result .crops a")
  assert len(links) == 4
  wait.until(lambda _: all((a.get_attribute("href") or "").startswith("blob:") for a in links))
  assert links[0].get_attribute("download") == "beach_free_1.png"
  # A file that is no photo: the server's reason is shown.
  text = tmp_path / "notes.jpg"
  text.write_text("not a photo")
  browser.find_element(By.ID, "file").send_keys(str(text))
  wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "status"), "Error 400"))
