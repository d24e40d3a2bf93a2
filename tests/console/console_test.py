"""The web console in a real headless Chromium (Debian's package, driven by
Playwright for Python; no browser download), against a cmqd started by
tests/tests/console_browser.rs with an administrator key, a key that may
not purge or delete queues, and a dead-letter queue `dlq` holding poisoned
messages from `src`.

Usage: console_test.py BASE_URL ADMIN_ID ADMIN_KEY LIMITED_ID LIMITED_KEY SCREENSHOT_DIR CHROMIUM
                       REFUSED_URL ANONYMOUS_BASE_URL
(REFUSED_URL: an endpoint nothing listens on; ANONYMOUS_BASE_URL: a broker with no keys.)
Prints "ok <check>" per check and "all checks passed" at the end.
"""

import os
import re
import sys
import time

from playwright.sync_api import expect, sync_playwright

BASE, ADMIN_ID, ADMIN_KEY, LIMITED_ID, LIMITED_KEY, SHOTS, CHROMIUM, REFUSED_URL, ANON_BASE = sys.argv[1:10]
TIMEOUT_MS = 15000
# How long a sign-in waits out the backoff of earlier failed ones, and how often it looks.
BACKOFF_DEADLINE_S = 12
POLL_MS = 50


def ok(what):
    print(f"ok {what}", flush=True)


def shot(page, name):
    page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def sign_in(page, secret_id, secret_key):
    """Signs in, retrying (within BACKOFF_DEADLINE_S) while the broker refuses
    the attempt for the per-address backoff a failed sign-in left (429)."""
    page.goto(f"{BASE}/console/#/overview")
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
        if page.locator("#nav").is_visible():
            return
        if "too many failed attempts" not in error or time.monotonic() >= deadline:
            break
    expect(page.locator("#nav")).to_be_visible()


def main():
    os.makedirs(SHOTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: d.accept())

        page.goto(f"{BASE}/console/")
        expect(page.locator("#signin-form")).to_be_visible()
        shot(page, "signin")
        ok("a broker with keys asks for a sign-in")

        page.fill("#secret-id", ADMIN_ID)
        page.fill("#secret-key", "wrong")
        page.click("#signin-submit")
        expect(page.locator("#error-text")).to_contain_text("AUTH_FAILED")
        ok("a wrong SecretKey is refused with the broker's error")

        sign_in(page, ADMIN_ID, ADMIN_KEY)
        expect(page.locator("#who")).to_contain_text("admin")
        expect(page.locator("#health")).to_have_text("ok")
        ok("signed in; the overview shows health")

        page.goto(f"{BASE}/console/#/queues")
        page.fill("#new-queue-name", "console-q")
        page.click("#create-queue-submit")
        expect(page.locator('tr[data-queue="console-q"]')).to_be_visible()
        page.fill("#queue-filter", "console")
        expect(page.locator('tr[data-queue="src"]')).to_have_count(0)
        expect(page.locator('tr[data-queue="console-q"]')).to_be_visible()
        page.fill("#queue-filter", "")
        expect(page.locator('tr[data-queue="src"]')).to_be_visible()
        page.click('th[data-key="activeMsgNum"]')
        page.click('th[data-key="activeMsgNum"]')
        expect(page.locator("#queue-rows tr").first).to_have_attribute("data-queue", "dlq")
        shot(page, "queues")
        ok("created a queue; the list filters by name and sorts by depth")

        page.click('tr[data-queue="console-q"] a')
        expect(page.locator("#q-active")).to_have_text("0")
        page.fill("#send-body", "hello from the browser")
        page.click("#send-submit")
        expect(page.locator("#q-active")).to_have_text("1")
        ok("sent a message from the page; the depth went to 1")

        page.click("#peek")
        expect(page.locator("#peek-rows")).to_contain_text("hello from the browser")
        expect(page.locator("#peek-rows")).to_contain_text("ready")
        shot(page, "queue")
        ok("peeked at the message")

        page.click("#purge")
        expect(page.locator("#q-active")).to_have_text("0")
        ok("purged the queue (after confirming)")

        page.fill("#attr-visibilityTimeout", "45")
        page.click("#attrs-submit")
        expect(page.locator("#attrs-result")).to_have_text("saved")
        ok("edited an attribute")

        page.goto(f"{BASE}/console/#/deadletters")
        form = page.locator('form[data-redrive-form="dlq"]')
        expect(form).to_be_visible()
        expect(page.locator('[data-dlq-count="dlq"]')).to_have_text("5")
        form.locator('input[name="ratePerSecond"]').fill("1")
        form.locator("button").click()
        running = page.locator('tr[data-state="running"]')
        expect(running).to_have_count(1)
        expect(running.locator("progress")).to_be_visible()
        shot(page, "deadletters")
        ok("started a redrive at 1 message/s; its progress shows")
        running.locator("button[data-cancel]").click()
        expect(page.locator('tr[data-state="cancelled"]')).to_have_count(1)
        ok("cancelled the redrive")

        page.goto(f"{BASE}/console/#/topics")
        page.fill("#new-topic-name", "console-t")
        page.click("#create-topic-submit")
        page.click('tr[data-topic="console-t"] a')
        page.fill("#sub-name", "to-queue")
        page.select_option("#sub-protocol", "queue")
        page.fill("#sub-endpoint", "console-q")
        page.click("#subscribe-submit")
        expect(page.locator('tr[data-sub="to-queue"]')).to_be_visible()
        page.fill("#publish-body", "published from the browser")
        page.click("#publish-submit")
        expect(page.locator("#publish-result")).to_contain_text("published")
        expect(page.locator('tr[data-sub="to-queue"] .sub-delivered')).to_have_text("1")
        page.fill("#sub-name", "hook")
        page.select_option("#sub-protocol", "http")
        page.fill("#sub-endpoint", REFUSED_URL)
        page.click("#subscribe-submit")
        expect(page.locator('tr[data-sub="hook"]')).to_be_visible()
        page.fill("#publish-body", "to the hook")
        page.click("#publish-submit")
        expect(page.locator('tr[data-sub="hook"] td.failure')).to_contain_text(re.compile("refused|connect", re.I))
        shot(page, "topic")
        page.goto(f"{BASE}/console/#/queue/console-q")
        expect(page.locator("#q-active")).to_have_text("2")  # both publishes: that subscription filters nothing
        page.click("#peek")
        expect(page.locator("#peek-rows")).to_contain_text("published from the browser")
        ok("subscribed the queue to a topic; a published message arrived")
        ok("an HTTP subscription's failed push shows its reason")

        page.goto(f"{BASE}/console/#/topics")
        expect(page.locator('tr[data-topic="console-t"]')).to_be_visible()
        shot(page, "topics")
        page.goto(f"{BASE}/console/#/cluster")
        expect(page.locator("#cluster")).to_contain_text("runs alone")
        shot(page, "cluster")
        page.goto(f"{BASE}/console/#/overview")
        expect(page.locator("#health")).to_have_text("ok")
        page.wait_for_timeout(2500)  # let the charts draw a few samples for the screenshot
        shot(page, "overview")
        ok("overview and cluster pages render")

        page.click("#signout")
        expect(page.locator("#signin-form")).to_be_visible()
        sign_in(page, LIMITED_ID, LIMITED_KEY)
        page.goto(f"{BASE}/console/#/queue/console-q")
        expect(page.locator("#q-active")).to_have_text("2")
        page.click("#purge")
        expect(page.locator("#error-text")).to_contain_text("ACCESS_DENIED")
        expect(page.locator("#error-text")).to_contain_text(re.compile("cmq:PurgeQueue"))
        expect(page.locator("#q-active")).to_have_text("2")
        shot(page, "denied")
        ok("a key without cmq:PurgeQueue sees its purge refused")

        anon = browser.new_page(viewport={"width": 1280, "height": 860})
        anon.on("pageerror", lambda e: errors.append(str(e)))
        anon.goto(f"{ANON_BASE}/console/#/queues")
        expect(anon.locator("#notice")).to_contain_text("Anonymous access")
        expect(anon.locator("#who")).to_have_text("anonymous")
        expect(anon.locator("#signin-form")).to_have_count(0)
        anon.fill("#new-queue-name", "anon-q")
        anon.click("#create-queue-submit")
        expect(anon.locator('tr[data-queue="anon-q"]')).to_be_visible()
        shot(anon, "anonymous")
        ok("a broker with no keys on loopback serves the console without sign-in, and says so")

        if errors:
            raise SystemExit(f"JavaScript errors: {errors}")
        browser.close()
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
