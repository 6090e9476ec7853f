"""The official Python apify-client (3.4.0) against a running hookd.

Run by tests/it/clients.rs with HOOKD_URL, HOOKD_TOKEN (alice) and HOOKD_TOKEN2 (bob).
Every call returns the client's pydantic models, so every response passes its validation.
"""
import os
import sys
import time

from apify_client import ApifyClient
from apify_client.errors import ApifyApiError

URL = os.environ["HOOKD_URL"]
alice = ApifyClient(token=os.environ["HOOKD_TOKEN"], api_url=URL, max_retries=0)
alice_br = ApifyClient(token=os.environ["HOOKD_TOKEN"], api_url=URL + "/v2", max_retries=0,
                       compression="brotli")
bob = ApifyClient(token=os.environ["HOOKD_TOKEN2"], api_url=URL, max_retries=0)

checks = 0


def check(cond, what):
    global checks
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    checks += 1


hooks = alice.webhooks()

# create / get
w = hooks.create(event_types=["ACTOR.RUN.SUCCEEDED", "ACTOR.RUN.FAILED"], actor_id="act1",
                 request_url="https://example.com/hook", description="first",
                 headers_template='{"X-Key": "v"}', do_not_retry=True)
check(len(w.id) == 17, "id is 17 characters")
check(w.user_id == "alice", "userId")
check([str(getattr(t, "value", t)) for t in w.event_types] == ["ACTOR.RUN.SUCCEEDED", "ACTOR.RUN.FAILED"], f"eventTypes {w.event_types}")
check(w.condition.actor_id == "act1", "condition.actorId")
check(str(w.request_url) == "https://example.com/hook", f"requestUrl {w.request_url}")
check(w.do_not_retry is True and w.ignore_ssl_errors is False, "booleans")
check(w.created_at.tzinfo is not None, "createdAt is timezone-aware")
check(w.stats.total_dispatches == 0 and w.last_dispatch is None, "stats, lastDispatch")
got = alice.webhook(w.id).get()
check(got is not None and got.model_dump() == w.model_dump(), "get() equals create()")

# a payload template over 1 KiB: the client gzips the body (brotli with the second client)
big = '{"userId": {{userId}}, "resource": {{resource}}, "pad": "' + "x" * 1500 + '"}'
for client, name in [(alice, "gzip"), (alice_br, "brotli")]:
    b = client.webhooks().create(event_types=["ACTOR.BUILD.SUCCEEDED"], actor_id="act2",
                                 request_url="https://example.com/big", payload_template=big,
                                 should_interpolate_strings=True)
    check(b.payload_template == big, f"large {name} payloadTemplate round-trips")
    check(b.should_interpolate_strings is True, "shouldInterpolateStrings")

# idempotencyKey twice: one webhook
total_before = hooks.list().total
k1 = hooks.create(event_types=["ACTOR.RUN.CREATED"], actor_run_id="run1", is_ad_hoc=True,
                  request_url="https://example.com/adhoc", idempotency_key="idem-1")
k2 = hooks.create(event_types=["ACTOR.RUN.CREATED"], actor_run_id="run1", is_ad_hoc=True,
                  request_url="https://example.com/adhoc", idempotency_key="idem-1")
check(k1.id == k2.id, "idempotencyKey replay returns the same webhook")
check(k1.is_ad_hoc is True and k1.condition.actor_run_id == "run1", "ad-hoc webhook")
check(hooks.list().total == total_before + 1, "idempotent create made one webhook")

# task webhook
t = hooks.create(event_types=["ACTOR.RUN.ABORTED"], actor_task_id="task1",
                 request_url="https://example.com/task")

# list / iterate
page = hooks.list(limit=2, offset=1, desc=True)
check(page.total == 5 and page.count == 2 and page.limit == 2 and page.offset == 1 and page.desc, f"page {page}")
all_ids = [x.id for x in hooks.list().items]
check(len(all_ids) == 5, "list all")
check([x.id for x in hooks.iterate()] == all_ids, "iterate() pages to the end")
check([x.id for x in hooks.iterate(chunk_size=2)] == all_ids, "iterate(chunk_size=2)")
check([x.id for x in hooks.list(desc=True).items] == all_ids[::-1], "desc order")

# actor and task lists
al = alice.actor("act1").webhooks().list()
check([x.id for x in al.items] == [w.id], "actor(id).webhooks().list()")
tl = alice.task("task1").webhooks().list()
check([x.id for x in tl.items] == [t.id], "task(id).webhooks().list()")
check(alice.actor("nobody").webhooks().list().total == 0, "actor with no webhooks")

# update
u = alice.webhook(w.id).update(description="changed", request_url="https://example.com/new",
                               event_types=["ACTOR.RUN.TIMED_OUT"])
check(u.description == "changed" and str(u.request_url) == "https://example.com/new", "update()")
check(u.headers_template == '{"X-Key": "v"}', "update() keeps absent fields")
check(u.modified_at >= w.modified_at and u.created_at == w.created_at, "modifiedAt moves")
check(alice.webhook(w.id).get().model_dump() == u.model_dump(), "get() after update()")

# isEnabled: the client's update() has no argument for it, so it goes through the client's own
# request path; its webhook model keeps it as an extra field (it allows extra fields).
def enabled(webhook):
    return webhook.model_extra["isEnabled"]


check(enabled(u) is True, "isEnabled defaults to true")
alice.webhook(w.id)._update(timeout="short", isEnabled=False)
check(enabled(alice.webhook(w.id).get()) is False, "isEnabled false round-trips")
alice.webhook(w.id)._update(timeout="short", isEnabled=True)
check(enabled(alice.webhook(w.id).get()) is True, "isEnabled true again")

# bad template: the client's error with type invalid-input
try:
    hooks.create(event_types=["ACTOR.RUN.SUCCEEDED"], actor_id="act1",
                 request_url="https://example.com/x", payload_template='{"a": {{nope}}}')
    check(False, "bad template was accepted")
except ApifyApiError as e:
    check(e.type == "invalid-input", f"error type {e.type}")
    check("payloadTemplate" in e.message, f"message names the field: {e.message}")
try:
    alice.webhook(w.id).update(headers_template="[1]")
    check(False, "bad headers template was accepted")
except ApifyApiError as e:
    check(e.type == "invalid-input", f"error type {e.type}")

# isolation: bob sees none of alice's webhooks
check(bob.webhook(w.id).get() is None, "another user's webhook is None")
check(bob.webhooks().list().total == 0, "another user's list is empty")

# dispatches: test(), the lists, one dispatch (delivered to the suite's receiver)
RECEIVER = os.environ["HOOKD_RECEIVER"]
dh = hooks.create(event_types=["ACTOR.RUN.SUCCEEDED"], actor_id="act-d", request_url=RECEIVER)
td = alice.webhook(dh.id).test()
check(td.event_type in ("TEST",) or str(getattr(td.event_type, "value", td.event_type)) == "TEST", f"test() eventType {td.event_type}")
check(td.webhook_id == dh.id and td.user_id == "alice" and td.event_data is None, "test() dispatch")
check(td.created_at.tzinfo is not None, "dispatch createdAt is timezone-aware")
deadline = time.time() + 30
while True:
    got = alice.webhook_dispatch(td.id).get()
    status = str(getattr(got.status, "value", got.status))
    if status != "ACTIVE" or time.time() > deadline:
        break
    time.sleep(0.05)
check(status == "SUCCEEDED", f"test dispatch delivered: {status}")
check(len(got.calls) == 1 and got.calls[0].response_status == 200, f"calls {got.calls}")
check(isinstance(got.calls[0].response_body, str), "responseBody is a string")
dl = alice.webhook(dh.id).dispatches().list()
check(dl.total == 1 and dl.items[0].id == td.id, "webhook(id).dispatches().list()")
all_d = alice.webhook_dispatches().list(desc=True, limit=10)
check(all_d.total == 1 and all_d.count == 1 and all_d.items[0].id == td.id, "webhook_dispatches().list()")
check(bob.webhook_dispatch(td.id).get() is None, "another user's dispatch is None")
check(alice.webhook_dispatch("AAAAAAAAAAAAAAAAA").get() is None, "unknown dispatch is None")
check(alice.webhook(dh.id).get().stats.total_dispatches == 1, "stats follow dispatches")
try:
    bob.webhook(dh.id).test()
    check(False, "another user's test() succeeded")
except ApifyApiError as e:
    check(e.status_code == 404 if hasattr(e, "status_code") else True, "test() of another user's webhook is 404")

# delete
alice.webhook(w.id).delete()
check(alice.webhook(w.id).get() is None, "get() of a deleted id is None")
alice.webhook(w.id).delete()  # a second delete's 404 is swallowed by the client
check(len(hooks.list().items) == 5, "deleted webhook left the list")

print(f"python client suite: {checks} checks passed")
