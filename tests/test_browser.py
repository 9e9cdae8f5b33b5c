"""A real browser: headless Chromium fills a 3-way support set by upload, adapts (the estimate and its
confusions shown), classifies a query, then switches to a second model and adapts again."""

import shutil
from pathlib import Path

import pytest
from conftest import draw_glyph, free_port

from fewshot_serve.serving.web_app import launch

pytestmark = pytest.mark.slow  # servers, browsers, subprocesses or real data: not in the quick tier

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "omniglot-conv4.safetensors"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)


def test_upload_adapt_classify_and_switch_models_in_chromium(tmp_path, colour_model):
    port = free_port()
    app = launch([SHIPPED, colour_model], port=port, block=False)
    names = ["alpha", "beta", "gamma"]
    for c, name in enumerate(names):
        for i in range(2):
            draw_glyph(500 + c, 10 * c + i).save(tmp_path / f"{name}{i}.png")
    draw_glyph(501, 99).save(tmp_path / "query.png")  # a new drawing of "beta"
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1400})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            page.locator("#adapt").wait_for(timeout=60_000)
            for c, name in enumerate(names):
                page.locator(f"#class-{c}-name textarea, #class-{c}-name input").first.fill(name)
                page.locator(f"#class-{c}-files input[type=file]").set_input_files(
                    [str(tmp_path / f"{name}{i}.png") for i in range(2)])
            page.wait_for_timeout(1000)  # let the uploads land
            page.locator("#adapt").click()
            page.locator("#status").get_by_text("Adapted to 3 classes").wait_for(timeout=60_000)
            page.locator("#status").get_by_text("on images like these").wait_for(timeout=10_000)  # the estimate
            picture = page.locator("#confusions img, #confusions svg, #confusions canvas")  # the confusion matrix
            picture.first.wait_for(timeout=30_000)
            page.locator("#query-files input[type=file]").set_input_files([str(tmp_path / "query.png")])
            page.wait_for_timeout(1000)
            page.locator("#classify").click()
            top = page.locator("#last-query h2, #last-query .output-class").first
            top.wait_for(timeout=60_000)
            page.wait_for_function("document.querySelector('#last-query').innerText.includes('beta')", timeout=60_000)
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            assert top.inner_text().strip() == "beta"

            page.locator("#model input").click()
            page.get_by_role("option", name="colour-conv4").click()
            page.locator("#model-info").get_by_text("meta-trained on folder, 32×32 colour").wait_for(timeout=30_000)
            page.locator("#status").get_by_text("Model switched").wait_for(timeout=30_000)
            page.locator("#adapt").click()
            page.locator("#status").get_by_text("Adapted to 3 classes").wait_for(timeout=60_000)
            browser.close()
    finally:
        app.close()
    assert (tmp_path / "app.png").stat().st_size > 10_000


def test_webcam_photos_for_support_and_query_in_chromium(colour_model):
    """Chromium's fake camera (a generated test pattern) stands in for a webcam: capture a photo per class
    with each class's camera, adapt, capture a query, classify."""
    port = free_port()
    app = launch([colour_model], port=port, block=False)
    camera_flags = FLAGS + ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=camera_flags)
            context = browser.new_context(viewport={"width": 1600, "height": 1400}, permissions=["camera"])
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
            page.locator("#adapt").wait_for(timeout=60_000)

            def capture(camera: str) -> None:
                component = page.locator(f"#{camera}")
                access = component.get_by_text("Click to Access Webcam")
                if access.count():
                    access.first.click()
                shutter = component.locator("button.capture-button")
                shutter.wait_for(timeout=30_000)
                page.wait_for_timeout(500)  # let the fake stream deliver frames
                shutter.click()
                component.locator("img").first.wait_for(timeout=30_000)

            for c, name in enumerate(["red", "green"]):
                page.locator(f"#class-{c}-name textarea, #class-{c}-name input").first.fill(name)
                for _ in range(2):
                    capture(f"class-{c}-camera")
                    page.locator(f"#class-{c}-add-photo").click()
                    page.wait_for_timeout(500)
                page.locator(f"#class-{c}-captured img").nth(1).wait_for(timeout=30_000)
            page.locator("#adapt").click()
            page.locator("#status").get_by_text("Adapted to 2 classes").wait_for(timeout=60_000)
            capture("query-camera")
            page.locator("#classify").click()
            page.wait_for_function(
                "['red', 'green'].some(n => document.querySelector('#last-query').innerText.includes(n))",
                timeout=60_000)
            browser.close()
    finally:
        app.close()


def test_login_example_button_and_literal_markup_in_chromium(tmp_path):
    """With a login: a wrong password is refused and the right one lets in. Then the Example button fills a
    task that adapts and classifies; a class name with markup shows as typed in an error message."""
    from fewshot_serve.serving.auth import Credentials, hash_password

    port = free_port()
    app = launch([SHIPPED], port=port, block=False, credentials=Credentials({"alice": hash_password("wonderland")}))
    (tmp_path / "fake.png").write_text("not an image")
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1400})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load")

            def log_in(password: str) -> None:
                page.get_by_label("username").fill("alice")
                page.get_by_label("password").fill(password)
                page.get_by_role("button", name="Login").click()

            log_in("wrong")
            page.get_by_text("Incorrect Credentials").wait_for(timeout=30_000)
            assert page.locator("#adapt").count() == 0
            log_in("wonderland")
            page.locator("#adapt").wait_for(timeout=60_000)

            page.locator("#example").click()
            page.locator("#status").get_by_text("Example loaded").wait_for(timeout=30_000)
            page.wait_for_function("document.querySelector('#class-2-name textarea, #class-2-name input')"
                                   ".value === 'korean-12'", timeout=30_000)
            page.wait_for_timeout(1000)
            page.locator("#adapt").click()
            page.locator("#status").get_by_text("Adapted to 3 classes").wait_for(timeout=60_000)
            page.locator("#classify").click()
            page.wait_for_function("document.querySelector('#last-query').innerText.includes('korean-12')",
                                   timeout=60_000)

            markup = "<b>bold</b>"
            page.locator("#class-0-name textarea, #class-0-name input").first.fill(markup)
            page.locator("#class-0-files input[type=file]").set_input_files([str(tmp_path / "fake.png")])
            page.wait_for_timeout(1000)
            page.locator("#adapt").click()  # the upload joins the example's two drawings: image #3
            # the text, not bold markup
            page.get_by_text(f"class '{markup}' image #3 (fake.png)").first.wait_for(timeout=30_000)
            assert page.locator(".toast-body b, [data-testid='toast-body'] b").count() == 0
            browser.close()
    finally:
        app.close()
