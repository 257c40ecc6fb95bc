"""The try-it page at GET /, driven in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
which .ci/run installs) against a real API and worker.

Set CHINFIX_SCREENSHOT_DIR to keep the screenshots (the README's docs/page.png is made this way).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service_harness import PORTRAITS, api_and_worker
from tests.test_pipeline_service import FEW_STEPS, input_rgb
from tests.tiny_models import build_tiny_model_store

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromium-driver are not installed"),
    pytest.mark.skipif(not PORTRAITS, reason="the seed portraits are not beside the checkout"),
]


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1750"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def save_screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    keep = os.environ.get("CHINFIX_SCREENSHOT_DIR")
    if keep:
        shutil.copy(path, Path(keep) / name)
    return path


def edit_in_page(driver: webdriver.Chrome, base_url: str, photo: Path, refine: str, api_key: str | None = None) -> None:
    """Open the page, choose the photo and refine method, submit, and wait for the before/after slider.
    With `api_key`, the page must ask for a key (the service has keys) and gets this one typed in."""
    driver.get(f"{base_url}/")
    key_field = driver.find_element(By.ID, "api-key-field")
    if api_key is None:
        assert key_field.get_attribute("hidden") is not None, "no keys configured, so the page asks for none"
    else:
        WebDriverWait(driver, 10).until(lambda d: key_field.is_displayed())
        driver.find_element(By.ID, "api-key").send_keys(api_key)
    driver.find_element(By.ID, "photo").send_keys(str(photo))
    Select(driver.find_element(By.ID, "refine")).select_by_value(refine)
    Select(driver.find_element(By.ID, "output")).select_by_value("png")
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 120).until(
        lambda d: d.find_element(By.ID, "compare").get_attribute("data-ready") == "true"
        or d.find_element(By.ID, "error").is_displayed()
    )
    assert not driver.find_element(By.ID, "error").is_displayed(), driver.find_element(By.ID, "error").text


def drag_slider_to(driver: webdriver.Chrome, fraction: float) -> np.ndarray:
    """Click the before/after slider at `fraction` of its width; returns what the comparison then shows."""
    slider = driver.find_element(By.ID, "slider")
    width = slider.size["width"]
    ActionChains(driver).move_to_element_with_offset(slider, round((fraction - 0.5) * width), 0).click().perform()
    return png(driver.find_element(By.ID, "compare").screenshot_as_png)


def test_page_edits_a_photo_and_the_slider_moves_between_before_and_after(
    isolated_env: dict[str, str], tmp_path: Path, browser: webdriver.Chrome
) -> None:
    env = {**isolated_env, "CHINFIX_PIPELINE": "tests.stub_pipeline:darken_lower_third", "CHINFIX_API_KEYS": "k1,k2"}
    photo = PORTRAITS[0]
    with api_and_worker(env, tmp_path) as (base_url, worker):
        assert httpx.get(f"{base_url}/").headers["content-type"].startswith("text/html"), "the page needs no key"
        edit_in_page(browser, base_url, photo, "warp", api_key="k2")
        width, height = input_rgb(photo).shape[1], input_rgb(photo).shape[0]
        loaded = browser.execute_script(
            "const image = document.getElementById('result-image');"
            "return [image.complete, image.naturalWidth, image.naturalHeight];"
        )
        assert loaded == [True, width, height]
        assert browser.find_element(By.ID, "download").get_attribute("href").startswith("blob:")
        assert "Quality check passed" in browser.find_element(By.ID, "gate-verdict").text

        # The stub darkens the photo's lower third: with the split far right the lower left shows the original,
        # far left it shows the darkened result.
        mostly_before = drag_slider_to(browser, 0.9)
        mostly_after = drag_slider_to(browser, 0.1)
        assert browser.find_element(By.ID, "slider").get_attribute("value") in {str(value) for value in range(5, 16)}
        rows, cols = mostly_before.shape[:2]
        lower_left = (slice(rows * 3 // 4, rows * 9 // 10), slice(cols // 5, cols // 2))
        assert mostly_after[lower_left].mean() < 0.7 * mostly_before[lower_left].mean()
        upper = (slice(rows // 10, rows // 2), slice(cols // 5, cols * 4 // 5))
        assert np.abs(mostly_after[upper] - mostly_before[upper]).mean() < 1.0, "above the edit both sides are equal"
        save_screenshot(browser, tmp_path, "page-stub.png")


def test_page_shows_the_quality_facts_of_the_real_pipeline(
    isolated_env: dict[str, str], tmp_path: Path, browser: webdriver.Chrome
) -> None:
    build_tiny_model_store(Path(isolated_env["CHINFIX_MODEL_DIR"]), with_classifier=True)
    with api_and_worker({**isolated_env, **FEW_STEPS}, tmp_path) as (base_url, worker):
        edit_in_page(browser, base_url, PORTRAITS[4], "warp")
        facts = browser.find_element(By.ID, "quality").text
        for name in ("identity similarity", "neck LPIPS", "neck PSNR", "pixels changed", "chin score before / after",
                     "double-chin probability before / after"):  # fmt: skip
            assert name in facts, facts
        # Random LPIPS weights put the neck over the threshold; the report policy keeps the edit.
        assert "Quality check failed (edited photo returned)" in browser.find_element(By.ID, "gate-verdict").text
        browser.execute_script("window.scrollTo(0, 0)")
        save_screenshot(browser, tmp_path, "page.png")
