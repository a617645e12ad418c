"""How smooth the draw-a-digit page stays while it answers during a stroke.

    python -m bench.page            # the models in models/; needs chromium and chromium-driver

Starts `python -m stages.serve`, opens the page in headless Chromium (every other host
blocked) and draws MNIST's first test digit along its ink with the mouse button held, a
point every 20 ms (50 pointer moves a second, as a hand gives), answered live with every
model's why. It prints, for that stroke:
- the pointer moves, the requests sent and the answers shown before the button went up (an
  error shown instead of an answer stops the bench: it answers at once, and times nothing);
- the frames the page painted (requestAnimationFrame) and the longest gap between two, the
  page's stutter: a gap over 50 ms is one a person sees;
- the long tasks Chromium counted (its Long Tasks API: main-thread work of 50 ms or more);
- the time the page spent in its own code per answer (the longest and the median), from
  reading the JSON to the cards replaced.
Run it with the machine otherwise idle.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.serve import test_digits
from stages.lib.infra.kernels import cpu_name
from tests.test_serve import CHROMEDRIVER, CHROMIUM, INSTALL, serving, wait_for

STEP_SECONDS = 0.02
# Installed before the stroke: every frame's time, Chromium's long tasks, and the time of
# each call of the page's show() (a global function of its script: wrapped in place).
PROBE = """
window.bench = {frames: [], longTasks: 0, renderMs: [], errors: []};
new PerformanceObserver((list) => { window.bench.longTasks += list.getEntries().length; })
  .observe({type: "longtask"});
(function frame(t) { window.bench.frames.push(t); requestAnimationFrame(frame); })(
  performance.now());
const shown = window.show;
window.show = (answer) => {
  const start = performance.now();
  shown(answer);
  window.bench.renderMs.push(performance.now() - start);
};
const said = window.say;
window.say = (text, isError = false) => {
  if (isError) window.bench.errors.push(text);
  said(text, isError);
};
"""

def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM and CHROMEDRIVER):
        sys.exit(f"bench.page: needs Chromium and its driver: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1300",
                 "--proxy-server=127.0.0.1:9", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def main() -> None:
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    digit = test_digits(1, "bench.page")[0]
    ink = np.argwhere(digit > 127)
    path = ink[np.lexsort((ink[:, 1], ink[:, 0]))]
    driver = browser()
    try:
        with serving(Path(".")) as url:
            driver.get(url)
            wait_for(driver, lambda d: d.find_element("id", "status").text == "Draw a digit.")
            driver.execute_script(PROBE)
            canvas = driver.find_element("id", "pad")
            pen = ActionBuilder(driver, mouse=PointerInput(interaction.POINTER_MOUSE, "mouse"),
                                duration=0)  # each move at once, then the pause
            y, x = path[0]
            pen.pointer_action.move_to(canvas, int(x) * 10 + 5 - 140, int(y) * 10 + 5 - 140)
            pen.pointer_action.pointer_down()
            for y, x in path[1:]:
                pen.pointer_action.move_to(canvas, int(x) * 10 + 5 - 140,
                                           int(y) * 10 + 5 - 140)
                pen.pointer_action.pause(STEP_SECONDS)
            start = time.perf_counter()
            pen.perform()
            stroke = time.perf_counter() - start
            body = driver.find_element("tag name", "body")
            live = int(body.get_attribute("data-answered-while-drawing") or 0)
            sent_before_up = int(body.get_attribute("data-sent") or 0)
            frames, long_tasks = driver.execute_script(
                "return [window.bench.frames, window.bench.longTasks];")
            render, errors = driver.execute_script(
                "return [window.bench.renderMs, window.bench.errors];")
            pen.pointer_action.pointer_up()
            pen.perform()
    finally:
        driver.quit()
    if errors:  # an error answers at once: its speed is no measure of the page's
        sys.exit(f"bench.page: the page showed {len(errors)} error(s), the first: {errors[0]}")
    gaps = np.diff(frames)
    print(f"page: a {stroke:.1f} s stroke of {len(path) - 1} pointer moves (one every "
          f"{STEP_SECONDS * 1000:.0f} ms), answered live with every model's why; "
          f"cpu: {cpu_name()}")
    print(f"requests sent before the button went up: {sent_before_up}, answers shown: "
          f"{len(render)}; the last one answered while drawing: number {live}")
    print(f"frames painted: {len(frames)} ({len(frames) / stroke:.0f} a second); longest gap "
          f"{gaps.max():.1f} ms, median {statistics.median(gaps):.1f} ms; gaps over 50 ms: "
          f"{int((gaps > 50).sum())}")
    print(f"long tasks (50 ms or more on the page's thread): {long_tasks}")
    if render:
        print(f"the page's own work per answer (JSON to cards): median "
              f"{statistics.median(render):.1f} ms, longest {max(render):.1f} ms")


if __name__ == "__main__":
    main()
