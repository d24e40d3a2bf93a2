"""What the console's browser scripts share: the browser (Debian's chromium
driven by Playwright for Python; no browser download), a page that records
JavaScript errors and accepts confirmations, checks, screenshots, and the
one way they sign in."""

import os
import time

from playwright.sync_api import expect

TIMEOUT_MS = 15000
VIEWPORT = {"width": 1280, "height": 860}
# How long a sign-in waits out the backoff of earlier failed ones, and how often it looks.
BACKOFF_DEADLINE_S = 12
POLL_MS = 50


def ok(what):
    print(f"ok {what}", flush=True)


def launch(playwright, chromium):
    expect.set_options(timeout=TIMEOUT_MS)
    return playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])


def new_page(browser, errors, dialogs=None):
    """A page whose JavaScript errors go to `errors` and whose confirm()
    dialogs are accepted (their messages appended to `dialogs`)."""
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def accept(dialog):
        if dialogs is not None:
            dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    return page


def shot(page, shots, name):
    os.makedirs(shots, exist_ok=True)
    page.screenshot(path=os.path.join(shots, f"{name}.png"), full_page=True)


def sign_in(page, base, secret_id, secret_key, refused=None):
    """Signs in from the sign-in form, retrying (within BACKOFF_DEADLINE_S)
    while the broker refuses the attempt for the per-address backoff that
    a failed sign-in left (429). With `refused`, the sign-in must instead
    fail with an error containing that text."""
    page.goto(f"{base}/console/#/overview")
    deadline = time.monotonic() + BACKOFF_DEADLINE_S
    while True:
        page.fill("#secret-id", secret_id)
        page.fill("#secret-key", secret_key)
        page.evaluate("document.querySelector('#error-text').textContent = ''")
        page.click("#signin-submit")
        error = ""
        while not error and not page.locator("#nav").is_visible() and time.monotonic() < deadline:
            page.wait_for_timeout(POLL_MS)
            error = page.locator("#error-text").text_content() or ""
        if page.locator("#nav").is_visible() or (refused and refused in error):
            break
        if "too many failed attempts" not in error or time.monotonic() >= deadline:
            break
    if refused:
        expect(page.locator("#error-text")).to_contain_text(refused)
        expect(page.locator("#signin-form")).to_be_visible()
    else:
        expect(page.locator("#nav")).to_be_visible()
