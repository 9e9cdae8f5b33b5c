"""A real browser: headless Chromium at desktop and phone sizes drives the page as a person would: uploads
(duplicates dropped, a thumbnail removed), Adapt, a results table with a bad query on its own row, the
model menu and the inputs each kind shows, the camera (burst capture, live classification), ONNX export
and its download, saving and loading a task, the examples, and a login."""

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import draw_glyph, free_port

from fewshot_serve.serving.web_app import launch

pytestmark = pytest.mark.slow  # servers, browsers, subprocesses or real data: not in the quick tier

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "omniglot-conv4.safetensors"
SHIPPED_PHOTOS = SHIPPED.with_name("photos-efficientnet-lite0.safetensors")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
DESKTOP, PHONE = {"width": 1400, "height": 1000}, {"width": 390, "height": 844}
#: Where the README's screenshot is written when FEWSHOT_SCREENSHOTS names a folder (docs/ refreshes it).
SCREENSHOTS = os.environ.get("FEWSHOT_SCREENSHOTS")

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@contextmanager
def served(models, **options):
    """The app on a free port for one test, closed however the test ends."""
    port = free_port()
    app = launch(models, port=port, block=False, **options)
    try:
        yield port
    finally:
        app.close()


def open_page(browser, port: int, viewport=DESKTOP, **context):
    page = browser.new_context(viewport=viewport, permissions=["camera"], accept_downloads=True, **context).new_page()
    page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
    page.locator("#adapt").wait_for(timeout=60_000)
    return page


def status_says(page, text: str, timeout: int = 60_000) -> None:
    page.locator("#status").get_by_text(text).first.wait_for(timeout=timeout)


def adapt_to_example(page, kind: str, loaded: str = "Example loaded") -> None:
    """Load the page's example task of this kind and adapt to its three classes."""
    page.locator(f"#example-{kind}").click()
    status_says(page, loaded)
    page.wait_for_timeout(1000)  # let the galleries settle before Adapt reads them
    page.locator("#adapt").click()
    status_says(page, "Adapted to 3 classes")


def visible_tabs(page, prefix: str) -> list[str]:
    return [tab for tab in ("camera", "draw") if page.locator(f"#{prefix}-{tab}-tab-button").is_visible()]


def test_upload_adapt_classify_with_a_bad_query_and_switch_models(browser, tmp_path, colour_model):
    names = ["alpha", "beta", "gamma"]
    for c, name in enumerate(names):
        for i in range(3):
            draw_glyph(500 + c, 10 * c + i).save(tmp_path / f"{name}{i}.png")
    draw_glyph(501, 99).save(tmp_path / "query.png")  # a new drawing of "beta"
    (tmp_path / "broken.png").write_text("not an image")
    with served([SHIPPED, colour_model]) as port:
        page = open_page(browser, port)
        page.locator("#query-draw-tab-button").wait_for(timeout=30_000)  # the tabs are drawn
        assert visible_tabs(page, "class-0") == ["draw"] and visible_tabs(page, "query") == ["draw"]
        for c, name in enumerate(names):
            page.locator(f"#class-{c}-name textarea, #class-{c}-name input").first.fill(name)
            page.locator(f"#class-{c}-images input[type=file]").set_input_files(
                [str(tmp_path / f"{name}{i}.png") for i in range(2)])
            page.locator(f"#class-{c}-images img").nth(1).wait_for(timeout=30_000)
        page.locator("#class-0-images input[type=file]").set_input_files(  # again, and one new image
            [str(tmp_path / "alpha0.png"), str(tmp_path / "alpha2.png")])
        status_says(page, "Skipped 1 image already in this class.")
        page.wait_for_function("document.querySelectorAll('#class-0-images img').length === 3", timeout=30_000)
        page.locator("#class-0-images img").nth(2).hover()
        page.locator("#class-0-images .delete-button").nth(2).click()  # remove a thumbnail
        page.wait_for_function("document.querySelectorAll('#class-0-images img').length === 2", timeout=30_000)

        page.locator("#adapt").click()
        status_says(page, "Adapted to 3 classes")
        status_says(page, "on images like these", timeout=10_000)  # the estimate
        page.locator("#confusions img").first.wait_for(timeout=30_000)  # the confusion matrix
        page.locator("#query-files input[type=file]").set_input_files(
            [str(tmp_path / "query.png"), str(tmp_path / "broken.png")])
        page.wait_for_timeout(1000)
        page.locator("#classify").click()
        status_says(page, "Classified 1 of 2 queries. 1 could not be read: see its row.")
        rows = page.locator("#results tbody tr")
        assert rows.count() == 2
        assert rows.nth(0).locator(".fs-top").inner_text().startswith("beta")
        assert rows.nth(0).locator(".fs-bar").count() == 3 and rows.nth(0).locator("img").count() == 1
        assert "not a readable image" in rows.nth(1).inner_text() and "broken.png" in rows.nth(1).inner_text()
        page.locator("#class-0-name textarea, #class-0-name input").first.press_sequentially("X")  # typed after Adapt
        status_says(page, "The classes changed since Adapt, so the classifier is out of date")
        page.locator("#classify").click()
        status_says(page, "The classes or the model changed since Adapt, so they were adapted again first")
        assert f"{names[0]}X" in page.locator("#results").inner_text()

        page.locator("#model input").click()
        page.get_by_role("option", name="Photos").click()
        status_says(page, "Switched to Photos")
        page.locator("#model-info").get_by_text("meta-trained on folder, 32×32 colour").wait_for(timeout=30_000)
        page.wait_for_function("document.querySelector('#results').innerText.trim() === ''", timeout=30_000)
        assert visible_tabs(page, "class-0") == ["camera"] and visible_tabs(page, "query") == ["camera"]
        page.locator("#every-input input").check()
        page.wait_for_timeout(1000)
        assert visible_tabs(page, "class-0") == ["camera", "draw"]
        page.locator("#adapt").click()
        status_says(page, "Adapted to 3 classes")
        assert not page.locator("[aria-label='common.upload'], [title='common.upload']").count()  # named


def test_burst_capture_for_support_and_live_classification_in_chromium(browser, colour_model):
    """Chromium's fake camera (a moving test pattern) stands in for a webcam: a burst of frames for one class
    and a single capture for another, adapt, then the live camera classifies what it sees."""

    def start_camera(page, camera: str) -> None:
        component = page.locator(f"#{camera}")
        access = component.get_by_text("Click to Access Webcam")
        if access.count():
            access.first.click()
        component.locator("button.capture-button").click(timeout=30_000)  # start streaming
        page.wait_for_timeout(1000)

    with served([colour_model]) as port:
        page = open_page(browser, port)
        for c, (name, button, count) in enumerate([("burst", "burst", 5), ("single", "capture", 1)]):
            page.locator(f"#class-{c}-name textarea, #class-{c}-name input").first.fill(name)
            page.locator(f"#class-{c}-camera-tab-button").click()
            start_camera(page, f"class-{c}-camera")
            page.locator(f"#class-{c}-{button}").click()
            page.wait_for_function(f"document.querySelectorAll('#class-{c}-images img').length === {count}",
                                   timeout=30_000)
        page.locator("#adapt").click()
        status_says(page, "Adapted to 2 classes")
        page.locator("#query-camera-tab-button").click()
        start_camera(page, "live-camera")
        page.wait_for_function("['burst', 'single'].some(n => document.querySelector('#live-result').innerText"
                               ".includes(n))", timeout=60_000)


def test_export_save_and_load_a_task_in_chromium(browser, colour_model, tmp_path):
    """One click exports and downloads the ONNX file (its name and size shown); a saved task loads back."""
    with served([SHIPPED, colour_model]) as port:
        page = open_page(browser, port)
        page.locator("#export").click()
        status_says(page, "press Adapt first")
        adapt_to_example(page, "handwriting")
        with page.expect_download(timeout=60_000) as exported:
            page.locator("#export").click()
        onnx = tmp_path / "exported.onnx"
        exported.value.save_as(onnx)
        status_says(page, "ONNX file ready: fewshot-classifier.onnx (")
        shown = page.locator("#export-file").inner_text().replace("\n", "")  # the name and the size
        assert "fewshot-classifier.onnx" in shown and ("KB" in shown or "MB" in shown) and onnx.stat().st_size > 1000
        assert "OnnxClassifier" in page.locator("#onnx-usage").inner_text()

        with page.expect_download(timeout=30_000) as saved:  # one click saves and downloads
            page.locator("#save-task").click()
        status_says(page, "Task saved: 3 classes, 6 images.")
        task = tmp_path / "task.zip"
        saved.value.save_as(task)

        fresh = open_page(browser, port)
        with fresh.expect_file_chooser() as chooser:
            fresh.locator("#load-task").click()
        chooser.value.set_files(str(task))
        status_says(fresh, "Task loaded: 3 classes, 6 images, on Handwriting")
        fresh.wait_for_function("document.querySelector('#class-2-name textarea, #class-2-name input')"
                                ".value === 'korean-12'", timeout=30_000)
        fresh.locator("#adapt").click()
        status_says(fresh, "Adapted to 3 classes")


def test_the_photo_example_on_a_phone(browser, tmp_path, colour_model):
    """At phone size: the menu, the example, and a results table that fits the screen's width."""
    with served([colour_model, SHIPPED]) as port:
        page = open_page(browser, port, PHONE, is_mobile=True, has_touch=True)
        adapt_to_example(page, "photos", "Example loaded: 3 kinds of patterned cloth")
        page.locator("#classify").click()
        status_says(page, "Classified 3 of 3 queries.")
        table = page.locator("#results table")
        assert page.locator("#results tbody tr").count() == 3
        width = page.evaluate("document.documentElement.clientWidth")
        assert table.bounding_box()["width"] <= width and page.evaluate(
            "document.documentElement.scrollWidth") <= width  # nothing runs off the side
        menu = page.locator("#model").bounding_box()
        assert menu["width"] > 0.7 * width  # the menu has the row to itself
        table.screenshot(path=str(tmp_path / "phone-results.png"))
        height = page.evaluate("document.documentElement.scrollHeight")
        assert height < 5000, f"the phone page is {height} px tall"
    if SCREENSHOTS:  # README's picture: the shipped photo model, on a desktop
        with served([SHIPPED_PHOTOS]) as port:
            desktop = open_page(browser, port)
            adapt_to_example(desktop, "photos")
            desktop.locator("#classify").click()
            status_says(desktop, "Classified 3 of 3 queries.")
            desktop.locator("#results").screenshot(path=str(Path(SCREENSHOTS) / "results-table.png"))


def test_login_example_button_and_literal_markup_in_chromium(browser, tmp_path):
    """With a login: a wrong password is refused and the right one lets in. Then the Example button fills a
    task that adapts and classifies; a class name with markup shows as typed in the status."""
    from fewshot_serve.serving.auth import Credentials, hash_password

    (tmp_path / "fake.png").write_text("not an image")
    with served([SHIPPED], credentials=Credentials({"alice": hash_password("wonderland")})) as port:
        page = browser.new_context(viewport=DESKTOP).new_page()
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
        assert not page.locator("#example-photos").is_visible()  # no photo model served: no photo example

        page.locator("#example-handwriting").click()
        status_says(page, "Example loaded")
        page.wait_for_function("document.querySelector('#class-2-name textarea, #class-2-name input')"
                               ".value === 'korean-12'", timeout=30_000)
        page.wait_for_timeout(1000)
        page.locator("#adapt").click()
        status_says(page, "Adapted to 3 classes")
        page.locator("#classify").click()
        status_says(page, "Classified 3 of 3 queries.")
        assert "korean-12" in page.locator("#results").inner_text()

        page.locator("#class-0-images input[type=file]").set_input_files([str(tmp_path / "fake.png")])
        status_says(page, "Not added: 1 file that cannot be used: upload (fake.png): not a readable image")
        page.wait_for_timeout(1000)  # refused at upload: the class keeps the example's two drawings alone
        assert page.locator("#class-0-images img").count() == 2
        markup = "<b>bold</b>"
        for slot in (0, 1):
            page.locator(f"#class-{slot}-name textarea, #class-{slot}-name input").first.fill(markup)
        page.locator("#adapt").click()
        status_says(page, f"class name '{markup}' is used twice")  # the text, not bold markup
        assert page.locator("#status b").count() == 0


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    pytest.importorskip("tokenizers", reason="the tokenizers library is not installed")
    from test_text import save_tiny_text_model

    return save_tiny_text_model(tmp_path_factory.mktemp("browser-text") / "tiny-text.safetensors")


def test_a_text_task_typed_in_then_the_text_example_and_back_to_images(browser, tiny_text_model, colour_model):
    """A text model shows a box of lines per class and one of queries, no image inputs; its results rows are the
    texts; the text example fills the boxes; an image model brings the images back."""
    with served([tiny_text_model, colour_model]) as port:
        page = open_page(browser, port)
        assert page.locator("#class-0-texts").is_visible() and not page.locator("#class-0-images").is_visible()
        assert page.locator("#query-texts").is_visible() and not page.locator("#query-files").is_visible()
        assert not page.locator("#export").is_visible()  # ONNX export is for images
        for c, (name, texts) in enumerate({"refund": ["I want my money back", "please refund my order"],
                                           "weather": ["will it rain today", "how hot is it"]}.items()):
            page.locator(f"#class-{c}-name textarea, #class-{c}-name input").first.fill(name)
            page.locator(f"#class-{c}-texts textarea").fill("\n".join(texts))
        page.locator("#adapt").click()
        status_says(page, "Adapted to 2 classes")
        status_says(page, "on texts like these", timeout=10_000)
        page.locator("#query-texts textarea").fill("refund please\nis it hot\n\nrain today")
        page.locator("#classify").click()
        status_says(page, "Classified 3 of 3 queries.")
        rows = page.locator("#results tbody tr")
        assert rows.count() == 3 and rows.nth(0).locator(".fs-name").inner_text() == "refund please"
        assert rows.nth(0).locator("img").count() == 0 and rows.nth(0).locator(".fs-bar").count() == 2
        page.locator("#example-text").click()
        status_says(page, "Example loaded: 3 kinds of customer-support message")
        assert page.locator("#class-2-texts textarea").input_value().count("\n") == 2
        page.locator("#model input").click()
        page.get_by_role("option", name="Photos").click()
        page.locator("#class-0-images").wait_for(state="visible", timeout=30_000)
        assert not page.locator("#class-0-texts").is_visible() and not page.locator("#query-texts").is_visible()
        assert page.locator("#export").is_visible()


def test_the_phone_page_is_short_until_used_and_a_class_shows_every_image_with_a_count(browser, tmp_path):
    """Before anything is done the phone page holds three empty classes and no empty plots (at most 2,500 px
    tall); a class's gallery then grows to show every thumbnail, however many, and says how many."""
    images = []
    for index in range(7):
        images.append(str(tmp_path / f"glyph-{index}.png"))
        draw_glyph(0, index).save(images[-1])
    with served([SHIPPED_PHOTOS, SHIPPED]) as port:
        page = open_page(browser, port, viewport=PHONE)
        page.wait_for_timeout(1000)
        assert page.evaluate("document.documentElement.scrollHeight") <= 2500
        assert not page.locator("#loss-plot").is_visible() and not page.locator("#class-3-name").is_visible()
        page.locator("#class-0-images input[type=file]").set_input_files(images)
        page.wait_for_function("document.querySelectorAll('#class-0-images img').length === 7", timeout=30_000)
        page.wait_for_timeout(500)
        count_line = page.evaluate("getComputedStyle(document.querySelector('#class-0-images .grid-container'), "
                                   "'::after').content")  # a CSS counter of the thumbnails: not in the DOM's text
        assert "counter(images)" in count_line and "in this class" in count_line
        gallery = page.locator("#class-0-images").bounding_box()
        for index in range(7):
            thumbnail = page.locator("#class-0-images img").nth(index).bounding_box()
            assert thumbnail["y"] + thumbnail["height"] <= gallery["y"] + gallery["height"] + 1
