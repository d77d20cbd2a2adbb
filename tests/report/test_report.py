"""The written report: the terminal text, report.html and the PNGs; and the HTML as a real browser shows it."""

import re
from pathlib import Path

import pytest

from bilevel_cli.errors import UserError
from bilevel_cli.report.report import write_report

PLOTS = {"outer_loss.png", "val_acc.png", "test_acc_vs_T.png", "s_per_iteration_vs_T.png"}
CHROMIUM = Path("/usr/bin/chromium")


def test_the_report_holds_the_table_the_plots_and_the_unfinished_runs(sweep, tmp_path):
    text = write_report([sweep], tmp_path / "out")
    assert text.splitlines()[0] == "6 runs in 3 groups; shared: trainer.steps=4"
    assert f"unfinished (no summary.json): {sweep / '4_hypergrad.T=3,seed=1'}" in text
    assert {p.name for p in (tmp_path / "out").iterdir()} == PLOTS | {"report.html"}
    for plot in PLOTS:
        assert (tmp_path / "out" / plot).read_bytes().startswith(b"\x89PNG")
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("<img src='data:image/png;base64,") == len(PLOTS)
    assert "<tr><td>10</td><td>2</td><td>71.00 ± 12.71</td>" in html


def test_the_report_is_self_contained(sweep, tmp_path):
    """Nothing to fetch and nothing to run: no script, no link, no URL outside the file."""
    write_report([sweep], tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<script" not in html and "<link" not in html and not re.search(r"(src|href)=['\"]?(https?:|//)", html)


def test_without_a_spread_of_T_there_is_no_plot_against_T(make_run, tmp_path):
    make_run("a", ["seed=0"], seed=0, test_acc=60.0)
    make_run("b", ["seed=1"], seed=1, test_acc=62.0)
    write_report([tmp_path / "sweep"], tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {"outer_loss.png", "val_acc.png"}


def test_an_output_folder_that_cannot_be_written_is_one_clear_error(make_run, tmp_path):
    make_run("a", ["seed=0"], seed=0, test_acc=60.0)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=f"cannot write the report into {tmp_path / 'a_file' / 'out'}: Not a "
                                        "directory; choose another directory with --out DIR"):
        write_report([tmp_path / "sweep"], tmp_path / "a_file" / "out")


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="no Chromium (Debian's chromium package) at /usr/bin/chromium")
def test_the_report_opens_in_headless_chromium_without_errors(sweep, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    write_report([sweep], tmp_path / "out", paper=True)
    problems = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("requestfailed", lambda request: problems.append(f"failed to load {request.url}"))
            page.goto((tmp_path / "out" / "report.html").as_uri(), wait_until="load")
            header = page.locator("table#comparison thead th").all_inner_texts()
            rows = page.locator("table#comparison tbody tr").count()
            sizes = page.eval_on_selector_all("img", "images => images.map(i => [i.naturalWidth, i.naturalHeight])")
        finally:
            browser.close()
    assert problems == []
    assert header[0] == "hypergrad.T" and "test acc %" in header and header[-1] == "paper %" and rows == 3
    assert len(sizes) == len(PLOTS) and all(width > 0 and height > 0 for width, height in sizes)
