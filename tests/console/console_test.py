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

import re
import sys

from console_common import launch, new_page, ok, shot as save_shot, sign_in as sign_in_at
from playwright.sync_api import expect, sync_playwright

BASE, ADMIN_ID, ADMIN_KEY, LIMITED_ID, LIMITED_KEY, SHOTS, CHROMIUM, REFUSED_URL, ANON_BASE = sys.argv[1:10]


def shot(page, name):
    save_shot(page, SHOTS, name)


def sign_in(page, secret_id, secret_key, refused=None):
    sign_in_at(page, BASE, secret_id, secret_key, refused)


def main():
    with sync_playwright() as p:
        browser = launch(p, CHROMIUM)
        errors = []
        dialogs = []
        page = new_page(browser, errors, dialogs)

        page.goto(f"{BASE}/console/")
        expect(page.locator("#signin-form")).to_be_visible()
        expect(page.locator("#nav")).to_be_hidden()
        expect(page.locator("#signout")).to_be_hidden()
        shot(page, "signin")
        ok("a broker with keys asks for a sign-in")

        sign_in(page, ADMIN_ID, "wrong", refused="AUTH_FAILED")
        ok("a wrong SecretKey is refused with the broker's error")

        sign_in(page, ADMIN_ID, ADMIN_KEY)
        expect(page.locator("#who")).to_contain_text("admin")
        expect(page.locator("#health")).to_have_text("ok")
        ok("signed in; the overview shows health")

        page.goto(f"{BASE}/console/#/queues")
        page.fill("#new-queue-name", "console-q")
        page.select_option("#new-queue-flush", "async")
        page.click("#create-queue-submit")
        expect(page.locator('tr[data-queue="console-q"]')).to_be_visible()
        expect(page.locator('tr[data-queue="console-q"] td.flush')).to_have_text("async")
        expect(page.locator('tr[data-queue="src"] td.flush')).to_have_text("sync")
        ok("created a queue with the async flush policy; the list's Flush column shows it")
        page.fill("#new-queue-name", "doomed-q")
        page.click("#create-queue-submit")
        page.locator('tr[data-queue="doomed-q"] button', has_text="Delete").click()
        expect(page.locator('tr[data-queue="doomed-q"]')).to_have_count(0)
        assert any("Delete queue doomed-q" in m for m in dialogs), dialogs
        ok("deleted a queue from the list (after confirming)")
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
        expect(page.locator("#peek-rows tr").first.locator("td").nth(2)).to_have_text("0")  # dequeue count
        shot(page, "queue")
        ok("peeked at the message")

        page.click("#purge")
        expect(page.locator("#q-active")).to_have_text("0")
        assert any("Purge every message of queue console-q" in m for m in dialogs), dialogs
        ok("purged the queue (after confirming)")

        expect(page.locator("#attr-flushPolicy")).to_have_value("async")
        page.fill("#attr-visibilityTimeout", "45")
        page.select_option("#attr-flushPolicy", "sync")
        page.fill("#attr-deadLetterQueueName", "dlq")
        page.fill("#attr-maxReceiveCount", "3")
        page.click("#attrs-submit")
        expect(page.locator("#attrs-result")).to_have_text("saved")
        page.goto(f"{BASE}/console/#/queues")
        expect(page.locator('tr[data-queue="console-q"] td.flush')).to_have_text("sync")
        page.click('tr[data-queue="console-q"] a')
        expect(page.locator("#attr-visibilityTimeout")).to_have_value("45")
        expect(page.locator("#attr-deadLetterQueueName")).to_have_value("dlq")
        ok("edited attributes, the flush policy and dead-letter settings among them; the list's Flush column changed")

        page.goto(f"{BASE}/console/#/deadletters")
        form = page.locator('form[data-redrive-form="dlq"]')
        expect(form).to_be_visible()
        expect(page.locator('[data-dlq-count="dlq"]')).to_have_text("5")
        expect(page.locator("#dlqs")).to_contain_text(re.compile(r"Sources: .*\bsrc\b"))
        expect(page.locator("#dlqs")).to_contain_text(re.compile(r"Sources: .*console-q"))  # set on its page
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

        page.goto(f"{BASE}/console/#/queues")
        page.fill("#new-queue-name", "red-q")
        page.click("#create-queue-submit")
        expect(page.locator('tr[data-queue="red-q"]')).to_be_visible()
        page.goto(f"{BASE}/console/#/topic/console-t")
        page.fill("#sub-name", "reds")
        page.select_option("#sub-protocol", "queue")
        page.fill("#sub-endpoint", "red-q")
        page.fill('#subscribe-form input[name="tags"]', "red")
        page.click("#subscribe-submit")
        expect(page.locator('tr[data-sub="reds"] td:nth-child(4)')).to_have_text("red")
        page.fill("#publish-body", "a red one")
        page.fill('#publish-form input[name="tags"]', "red")
        page.click("#publish-submit")
        expect(page.locator('tr[data-sub="reds"] .sub-delivered')).to_have_text("1")
        page.goto(f"{BASE}/console/#/queue/red-q")
        expect(page.locator("#q-active")).to_have_text("1")  # the untagged ones before were not for it
        ok("subscribed a queue with a filter tag; only the tagged message arrived")

        page.goto(f"{BASE}/console/#/topics")
        expect(page.locator('tr[data-topic="console-t"]')).to_be_visible()
        shot(page, "topics")
        page.goto(f"{BASE}/console/#/cluster")
        expect(page.locator("#cluster")).to_contain_text("runs alone")
        shot(page, "cluster")
        page.goto(f"{BASE}/console/#/overview")
        expect(page.locator("#health")).to_have_text("ok")
        # The charts have a few samples to draw for the screenshot (one a second).
        expect(page.locator("#overview")).to_contain_text(re.compile(r"the last ([3-9]|\d{2,}) samples"))
        expect(page.locator("#overview")).to_contain_text("Disk (logs)")
        shot(page, "overview")
        ok("overview and cluster pages render")

        page.click("#signout")
        expect(page.locator("#signin-form")).to_be_visible()
        sign_in(page, LIMITED_ID, LIMITED_KEY)
        page.goto(f"{BASE}/console/#/queue/console-q")
        expect(page.locator("#q-active")).to_have_text("3")  # and the red one
        page.click("#purge")
        expect(page.locator("#error-text")).to_contain_text("ACCESS_DENIED")
        expect(page.locator("#error-text")).to_contain_text(re.compile("cmq:PurgeQueue"))
        expect(page.locator("#q-active")).to_have_text("3")
        page.click("#delete")
        expect(page.locator("#error-text")).to_contain_text(re.compile("ACCESS_DENIED.*cmq:DeleteQueue"))
        shot(page, "denied")
        page.goto(f"{BASE}/console/#/queues")
        expect(page.locator('tr[data-queue="console-q"]')).to_be_visible()
        ok("a key without cmq:PurgeQueue and cmq:DeleteQueue sees its purge and delete refused")

        anon = new_page(browser, errors)
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
