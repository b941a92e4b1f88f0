"""The player end to end in a real browser: `python -m launch.play` on a tiny trained model, the
page loaded in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium), real
key presses. Checks that frames arrive at a paced rate and are drawn, that different keys give
different frames (same clip and seed, so only the action differs), that reset restarts the clip,
and saves a screenshot (to $TEST_ARTIFACTS, default <repo>/test-artifacts). Skipped only where
Chromium is absent and $CI is unset; in CI a missing browser fails the test."""

import os
import shutil
import time

import pytest

from launch.play_bench import start_player

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FPS = 8.0
CONTEXT = 4  # the tiny config's eval context: frame indices after a reset start here
BROWSER_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1100,760")


def _browser_or_skip():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        chromium = None
    if not (chromium and driver):
        message = "needs Debian's chromium and chromium-driver and selenium (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {message}")
        pytest.skip(message)
    return chromium, driver


def _wait(driver, script, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def _frame_after_reset(driver, key, resets):
    """Holds `key`, presses reset (clip 0, seed 5) and returns the page's image of frame
    CONTEXT + 3 of that restart, then releases the key."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ActionChains(driver).key_down(key).click(driver.find_element(By.ID, "reset")).perform()
    image = _wait(driver, f"""
        const s = window.playerStats;
        const hit = s.shown.find((f) => f.reset === {resets + 1} && f.index === {CONTEXT + 3});
        return hit ? hit.image : null;""")
    ActionChains(driver).key_up(key).perform()
    return image


def test_page_plays_in_headless_chromium(tiny_run, tmp_path):
    chromium, chromedriver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    process, url = start_player(tiny_run, f"--fps={FPS}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.get(url)
        _wait(driver, "return window.playerStats && window.playerStats.frames >= 3")
        assert "continuous actions" in driver.find_element(By.ID, "status").text
        start = driver.execute_script("return [window.playerStats.frames, performance.now()]")
        time.sleep(2.0)
        end = driver.execute_script("return [window.playerStats.frames, performance.now()]")
        rate = (end[0] - start[0]) * 1000.0 / (end[1] - start[1])
        print(f"frames/s in the browser: {rate:.1f} (server paced at {FPS:g})")
        assert 0.5 < rate < 1.5 * FPS  # frames arrive, at the server's pace at most
        drawn = driver.execute_script("""
            const c = document.getElementById("view");
            const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            return [c.width, data.filter((v, i) => i % 4 === 3 && v === 255).length];""")
        assert drawn == [16, 16 * 16]  # every pixel of the 16x16 frame drawn, opaque

        driver.find_element(By.ID, "clipChoice").send_keys("0")
        driver.find_element(By.ID, "seedChoice").send_keys("5")
        driver.find_element(By.ID, "view").click()  # back to playing
        resets = driver.execute_script("return window.playerStats.resets")
        forward = _frame_after_reset(driver, "w", resets)
        right = _frame_after_reset(driver, "d", resets + 1)
        forward_again = _frame_after_reset(driver, "w", resets + 2)
        assert forward == forward_again  # reset restarts the clip: same key, same frames
        assert forward != right  # another key, another frame
        header = driver.execute_script("return window.playerStats.header")
        assert header["clip"] == 0 and header["index"] >= CONTEXT + 3
        latencies = driver.execute_script("return window.playerStats.latencies")
        assert latencies and all(0 < ms < 60_000 for ms in latencies)
        assert driver.execute_script("return window.playerStats.errors") == []

        folder = os.environ.get("TEST_ARTIFACTS", os.path.join(REPO, "test-artifacts"))
        os.makedirs(folder, exist_ok=True)
        assert driver.save_screenshot(os.path.join(folder, "play_page.png"))
    finally:
        driver.quit()
        process.terminate()
        process.wait(30)
