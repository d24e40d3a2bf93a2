"""The console's cluster page in a real headless Chromium against a real
three-node cluster, started by tests/tests/console_cluster.rs (no keys: the
console serves loopback without sign-in). The test opens node CONSOLE_NODE's
console, where shard 0 is led by that node and shard 1 by another.

Usage: console_cluster.py BASE_URL SCREENSHOT_DIR CHROMIUM CONSOLE_NODE LEADERS
(LEADERS: shard=node,... as the harness sees them.)

Talks with the test on its standard input and output: once the page shows
every node up, each shard's leader and follower lag, it prints "kill" and
reads "DEAD NEW_LEADER" (the node the test killed with kill -9, which led
shard 1, and the node that leads shard 1 now); then the page must show the
dead node down, shard 1's new leader, and the dead node falling behind on
shard 0 (the test writes there after the kill).
Prints "ok <check>" per check and "all checks passed" at the end.
"""

import re
import sys

from console_common import launch, new_page, ok, shot
from playwright.sync_api import expect, sync_playwright

BASE, SHOTS, CHROMIUM, CONSOLE_NODE, LEADERS = sys.argv[1:6]
NODES = 3


def node_row(page, node):
    return page.locator(f'#cluster-nodes tr[data-node="{node}"]')


def shard_row(page, shard):
    return page.locator(f'#cluster-shards tr[data-shard="{shard}"]')


def main():
    leaders = dict(pair.split("=") for pair in LEADERS.split(","))
    with sync_playwright() as p:
        browser = launch(p, CHROMIUM)
        errors = []
        page = new_page(browser, errors)
        page.goto(f"{BASE}/console/#/cluster")
        expect(page.locator("#who")).to_have_text("anonymous")
        expect(page.locator("#cluster-nodes tbody tr")).to_have_count(NODES)
        for node in range(1, NODES + 1):
            expect(node_row(page, node)).to_have_attribute("data-up", "true")
            expect(node_row(page, node).locator(".node-state")).to_have_text("up")
        expect(node_row(page, CONSOLE_NODE)).to_contain_text("(this node)")
        ok("the cluster page lists the three nodes, every one up")

        for shard, leader in leaders.items():
            expect(shard_row(page, shard)).to_have_attribute("data-leader", leader)
            expect(shard_row(page, shard).locator(".leader")).to_have_text(f"node {leader}")
        ok("each shard's leader is the one the harness sees")

        # Shard 0 is led by this node: its followers' lag (entries behind) shows.
        followers = [n for n in range(1, NODES + 1) if str(n) != CONSOLE_NODE]
        lag = shard_row(page, 0).locator(".followers")
        for n in followers:
            expect(lag).to_contain_text(re.compile(rf"node {n}: \d+"))
        expect(shard_row(page, 1).locator(".followers")).to_contain_text(f"node {leaders['1']}")
        shot(page, SHOTS, "cluster-nodes")
        ok("the followers' replication lag shows for the shard this node leads")

        print("kill", flush=True)
        dead, new_leader = sys.stdin.readline().split()
        expect(node_row(page, dead)).to_have_attribute("data-up", "false")
        expect(node_row(page, dead).locator(".node-state")).to_contain_text("down")
        for n in range(1, NODES + 1):
            if str(n) != dead:
                expect(node_row(page, n)).to_have_attribute("data-up", "true")
        ok("the killed node shows as down, the others up")

        expect(shard_row(page, 1)).to_have_attribute("data-leader", new_leader)
        expect(shard_row(page, 1).locator(".leader")).to_have_text(f"node {new_leader}")
        ok("shard 1 shows its new leader")

        # The dead node misses what was written to shard 0 after it died.
        expect(lag).to_contain_text(re.compile(rf"node {dead}: [1-9]\d*"))
        shot(page, SHOTS, "cluster-failover")
        ok("the dead node falls behind on the shard this node leads")

        if errors:
            raise SystemExit(f"JavaScript errors: {errors}")
        browser.close()
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
