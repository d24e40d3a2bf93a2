"""Conformance of cmqd's CMQ API 2.0 gateway with the real Python SDK
(qcloud-cmq-sdk-py3 0.1), topics and subscriptions (spec sections 5.3, 5.4, 8).

Run by tests/tests/cmq_sdk.rs against a real cmqd:
    topics.py ENDPOINT SECRET_ID SECRET_KEY
Prints one line per check; exits non-zero at the first failure.
Filtering is checked positively: a subscription that must not get message
X is shown to receive the later message Y first (fan-out keeps order per
subscription), so no check waits for something not to happen.
"""

import sys

from cmq.account import Account
from cmq.cmq_exception import CMQServerException
from common import check, error_of
from cmq.queue import QueueMeta
from cmq.subscription import SubscriptionMeta
from cmq.topic import Message, TopicMeta

ENDPOINT, SECRET_ID, SECRET_KEY = sys.argv[1:4]

# Fan-out is asynchronous: receives long-poll for up to this long.
DELIVERY_WAIT_SECONDS = 5


acc = Account(ENDPOINT, SECRET_ID, SECRET_KEY)


def topic_meta(filter_type=1, max_msg_size=65536):
    m = TopicMeta()
    m.filterType = filter_type
    m.maxMsgSize = max_msg_size
    return m


def subscribe(topic, name, queue, tags=(), keys=()):
    m = SubscriptionMeta()
    m.Endpoint = queue
    m.Protocal = "queue"
    m.FilterTag = list(tags)
    m.bindingKey = list(keys)
    acc.get_subscription(topic, name).create(m)


def next_body(queue):
    """The next message of `queue` (deleted), waiting for the fan-out."""
    q = acc.get_queue(queue)
    m = q.receive_message(DELIVERY_WAIT_SECONDS)
    q.delete_message(m.receiptHandle)
    return m.msgBody


def management():
    t = acc.get_topic("tt-tags")
    t.create(topic_meta())
    check("CreateTopic twice -> 4460", error_of(t.create, topic_meta()).code == 4460)
    acc.get_topic("tt-route").create(topic_meta(filter_type=2))
    a = t.get_attributes()
    check("GetTopicAttributes", (a.maxMsgSize, a.filterType, a.msgRetentionSeconds) == (65536, 1, 86400), vars(a))
    check("filterType 2", acc.get_topic("tt-route").get_attributes().filterType == 2)
    t.set_attributes(topic_meta(max_msg_size=4096))
    check("SetTopicAttributes", t.get_attributes().maxMsgSize == 4096)
    total, topics, _ = acc.list_topic(searchWord="tt-")
    check("ListTopic", total == 2 and sorted(x["topicName"] for x in topics) == ["tt-route", "tt-tags"], topics)
    check("GetTopicAttributes unknown -> 4440", error_of(acc.get_topic("tt-none").get_attributes).code == 4440)
    check("filterType 3 -> 4000", error_of(acc.get_topic("tt-bad").create, topic_meta(filter_type=3)).code == 4000)
    for q in ["tq-a", "tq-b", "tq-all", "tq-route"]:
        acc.get_queue(q).create(QueueMeta())


def tag_routing():
    t = acc.get_topic("tt-tags")
    subscribe("tt-tags", "sa", "tq-a", tags=["a"])
    subscribe("tt-tags", "sb", "tq-b", tags=["b", "x"])
    subscribe("tt-tags", "sall", "tq-all")
    e = error_of(subscribe, "tt-tags", "sa", "tq-a", ["a"])
    check("Subscribe twice -> 4460", e.code == 4460, e.message)
    m = SubscriptionMeta()
    m.Protocal = "smtp"
    e = error_of(acc.get_subscription("tt-tags", "sx").create, m)
    check("unknown protocol -> 4000", e.code == 4000, e.message)
    e = error_of(subscribe, "tt-tags", "snoq", "tq-missing")
    check("Subscribe to a missing queue -> 4440", e.code == 4440, e.message)
    msg = t.publish_message(Message("tagged-a", ["a"]))
    check("PublishMessage msgId", isinstance(msg.msgId, str) and msg.msgId.isdigit(), msg.msgId)
    t.publish_message(Message("untagged", []))
    t.publish_message(Message("tagged-b", ["b"]))
    check("filterTag a gets tag a", next_body("tq-a") == "tagged-a")
    check("no filter gets everything", [next_body("tq-all") for _ in range(3)] == ["tagged-a", "untagged", "tagged-b"])
    check("filterTag b skips a and untagged", next_body("tq-b") == "tagged-b")
    ids = t.batch_publish_message([Message("batch-1"), Message("batch-2")], msgtag=["x"])
    check("BatchPublishMessage msgList", len(ids) == 2 and all(m.msgId.isdigit() for m in ids), [m.msgId for m in ids])
    check("batch tags apply to every message", [next_body("tq-b") for _ in range(2)] == ["batch-1", "batch-2"])
    check("batch reaches the unfiltered queue", [next_body("tq-all") for _ in range(2)] == ["batch-1", "batch-2"])
    sub = acc.get_subscription("tt-tags", "sa")
    a = sub.get_attributes()
    check("GetSubscriptionAttributes", (a.Protocal, a.FilterTag, a.NotifyStrategy, a.NotifyContentFormat)
          == ("queue", ["a"], "EXPONENTIAL_DECAY_RETRY", "JSON"), str(a))
    sub.clearFilterTags()
    check("ClearSubscriptionFilterTags", sub.get_attributes().FilterTag == [])
    t.publish_message(Message("after-clear", ["zzz"]))
    check("cleared subscription gets every message", next_body("tq-a") == "after-clear")
    m = SubscriptionMeta()
    m.FilterTag = ["c"]
    m.NotifyStrategy = "BACKOFF_RETRY"
    sub.set_attributes(m)
    a = sub.get_attributes()
    check("SetSubscriptionAttributes", (a.FilterTag, a.NotifyStrategy) == (["c"], "BACKOFF_RETRY"), str(a))
    t.publish_message(Message("not-c", ["a"]))
    t.publish_message(Message("is-c", ["c"]))
    check("new filterTag applies", next_body("tq-a") == "is-c")
    check("body over maxMsgSize -> 4400", error_of(t.publish_message, Message("y" * 4097)).code == 4400)
    total, subs, _ = acc.get_topic("tt-tags").list_subscription()
    check("ListSubscriptionByTopic", total == 3 and sorted(s["subscriptionName"] for s in subs) == ["sa", "sall", "sb"]
          and all(s["protocol"] == "queue" for s in subs), subs)
    total, subs, _ = acc.get_topic("tt-tags").list_subscription(searchWord="all")
    check("ListSubscriptionByTopic searchWord", total == 1 and subs[0]["endpoint"] == "tq-all", subs)


def key_routing():
    t = acc.get_topic("tt-route")
    subscribe("tt-route", "orders", "tq-route", keys=["order.*", "audit.#"])
    a = acc.get_subscription("tt-route", "orders").get_attributes()
    check("bindingKey stored", a.bindingKey == ["order.*", "audit.#"], a.bindingKey)
    t.publish_message(Message("user", []), "user.created")
    t.publish_message(Message("order", []), "order.created")
    t.publish_message(Message("too-deep", []), "order.created.eu")
    t.publish_message(Message("no-key", []), "")
    t.publish_message(Message("audit", []), "audit.x.y")
    check("routingKey matches order.*", next_body("tq-route") == "order")
    check("# matches several words; * one word; empty key nothing", next_body("tq-route") == "audit")


def cleanup():
    sub = acc.get_subscription("tt-tags", "sb")
    sub.delete()
    check("Unsubscribe", error_of(sub.get_attributes).code == 4440)
    acc.get_topic("tt-route").delete()
    check("DeleteTopic", error_of(acc.get_topic("tt-route").get_attributes).code == 4440)


management()
tag_routing()
key_routing()
cleanup()
print("all checks passed", flush=True)
