"""The tiny study's Snakemake report, opened in a real headless Chromium: every category is there, every
result's picture loads, and a screenshot of the page shows actual content.

The report is a single-page app whose menu and results are drawn by JavaScript, so only a browser can
tell whether it works. Playwright drives Chromium: the browser named by $FLOWLET_CHROMIUM, Playwright's
own download (`playwright install chromium`) or the system's `chromium`. Without one the test is
skipped on a workstation and fails on CI (CI=true).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import snakemake_command

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
# The categories; the test also requires every category any rule declares.
REQUIRED_CATEGORIES = {"Preprocessing QC", "Generator", "Synthetic cohorts", "Brain age", "Regions", "Runtime"}
TEXT_ONLY_CATEGORIES = {"Runtime", "Summary"}
IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif")
ALL_IMAGES_LOADED = "() => [...document.images].every(image => image.complete)"
SHOWN_IMAGES = """() => [...document.images]
    .filter(image => !image.closest('h1'))
    .map(image => ({name: (image.src.match(/filename=([^;]+);/) || [null, image.src.slice(0, 60)])[1],
                    width: image.naturalWidth, height: image.naturalHeight}))"""


def declared_categories() -> set[str]:
    text = "".join(path.read_text() for path in (REPO / "workflow" / "rules").glob("*.smk"))
    return set(re.findall(r'(?<![a-z])category="([^"]+)"', text))


def browser_executable() -> str | None:
    """A Chromium to drive: $FLOWLET_CHROMIUM, else None when Playwright has its own, else the system's."""
    from playwright.sync_api import sync_playwright

    if os.environ.get("FLOWLET_CHROMIUM"):
        return os.environ["FLOWLET_CHROMIUM"]
    with sync_playwright() as playwright:
        if Path(playwright.chromium.executable_path).exists():
            return None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    raise FileNotFoundError("no Chromium: set FLOWLET_CHROMIUM, run `playwright install chromium` or install chromium")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright

        executable = browser_executable()
    except (ImportError, FileNotFoundError) as error:
        message = f"a headless Chromium is needed to check the HTML report: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def report_html(tiny_study, tmp_path_factory) -> Path:
    report = tmp_path_factory.mktemp("report") / "report.html"
    command = snakemake_command(tiny_study, "--report", str(report), "--configfile", str(TINY))
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return report


class ReportPage:
    """The report in one browser tab, with the clicks a reader makes; nothing may reach the network."""

    def __init__(self, browser, report: Path) -> None:
        self.url = report.as_uri()
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.route(re.compile(r"^https?://"), lambda route: route.abort())

    def home(self) -> None:
        self.page.goto(self.url)
        self.page.wait_for_load_state("networkidle")

    def menu(self) -> list[str]:
        """Entries of the menu that is open (the sidebar's links, without the breadcrumb)."""
        return [text.strip() for text in self.page.locator("nav div.p-3 a").all_inner_texts() if text.strip()]

    def open(self, entry: str) -> None:
        self.page.locator("nav div.p-3 a", has_text=re.compile(rf"^\s*{re.escape(entry)}\s*$")).first.click()
        self.page.wait_for_timeout(200)

    def result_rows(self) -> list[str]:
        return [
            text.strip() for text in self.page.locator("nav div.p-3 table tbody tr td:first-child").all_inner_texts()
        ]

    def show_result(self, index: int) -> list[dict]:
        """Click a result's eye button; the pictures it shows, once loaded."""
        self.page.locator("nav div.p-3 table tbody tr").nth(index).locator("a[iconname=eye]").click()
        self.page.wait_for_function(ALL_IMAGES_LOADED, timeout=15_000)
        self.page.wait_for_timeout(200)
        return self.page.evaluate(SHOWN_IMAGES)


def painted_statistics(png: bytes, box: dict) -> tuple[float, int, float]:
    """Pixel standard deviation, distinct colours and non-background fraction inside ``box`` of a screenshot."""
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
    top, left = int(box["y"]), int(box["x"])
    pixels = pixels[top : top + int(box["height"]), left : left + int(box["width"])]
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    content = np.abs(pixels - background).sum(axis=-1) > 30
    return float(pixels.std()), len(colours), float(content.mean())


@pytest.mark.slow
def test_report_has_every_category_and_no_broken_image(browser, report_html, tmp_path):
    report = ReportPage(browser, report_html)
    report.home()
    expected = declared_categories()
    assert REQUIRED_CATEGORIES <= expected
    menu = report.menu()
    assert expected <= set(menu), f"categories missing from the report's menu: {expected - set(menu)}"

    shown: dict[str, list[dict]] = {}
    for category in sorted(expected):
        report.home()
        report.open(category)
        # A category with subcategories lists those first; one without lists its results.
        subcategories = [None] if report.result_rows() else report.menu()
        for subcategory in subcategories:
            if subcategory is not None:
                report.home()
                report.open(category)
                report.open(subcategory)
            rows = report.result_rows()
            assert rows, f"{category} / {subcategory}: no results listed"
            for index, row in enumerate(rows):
                images = report.show_result(index)
                where = f"{category} / {subcategory or '-'} / {row}"
                broken = [image["name"] for image in images if image["width"] == 0 or image["height"] == 0]
                assert not broken, f"{where}: broken image(s) {broken}"
                if row.lower().endswith(IMAGE_SUFFIXES):
                    assert Path(row).name in {image["name"] for image in images}, f"{where}: the picture is not shown"
                shown.setdefault(category, []).extend(images)

    for category in expected - TEXT_ONLY_CATEGORIES:
        assert shown.get(category), f"{category}: no result shows a picture"
    qc_pictures = {image["name"] for image in shown["Preprocessing QC"] if image["name"].endswith("_desc-qc_T1w.png")}
    subjects = yaml.safe_load(TINY.read_text())["phantoms"]["n_subjects"]
    assert len(qc_pictures) == subjects, f"one QC picture per demo subject expected, got {sorted(qc_pictures)}"
    assert not report.errors, f"JavaScript errors: {report.errors}"

    # A reader's view of a result: the generator's loss curve beside the menu. What the browser painted
    # where the picture sits must be a picture, not a blank or single-colour area.
    report.home()
    report.open("Generator")
    report.show_result(0)
    screenshot = tmp_path / "report_generator.png"
    png = report.page.screenshot(path=str(screenshot), full_page=False)
    box = report.page.locator("img[src*='filename=loss.png']").bounding_box()
    assert box and box["width"] > 200 and box["height"] > 150, f"the loss curve is drawn {box} in {screenshot}"
    spread, colours, content = painted_statistics(png, box)
    assert spread > 10 and colours > 20 and content > 0.01, (
        f"{screenshot}: the loss curve's area is nearly blank (std {spread:.1f}, {colours} colours, {content:.1%} drawn)"
    )
    report.page.close()
