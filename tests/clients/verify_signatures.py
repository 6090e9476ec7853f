"""Verifies hookd's deliveries with the official Standard Webhooks Python library.

Reads a JSON list of cases ({label, secret, body, headers, resign_offset_s?}) from the file
named by argv[1] and prints one JSON object per case: {label, verified, error}. With
resign_offset_s, the body is signed again by the library itself at now + that offset first
(a valid signature whose timestamp is outside the tolerance, or inside it as a control).
"""

import json
import sys
from datetime import datetime, timedelta, timezone

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    out = []
    for case in cases:
        wh = Webhook(case["secret"])
        headers = dict(case["headers"])
        body = case["body"]
        if "resign_offset_s" in case:
            at = datetime.now(tz=timezone.utc) + timedelta(seconds=case["resign_offset_s"])
            headers["webhook-timestamp"] = str(int(at.timestamp()))
            headers["webhook-signature"] = wh.sign(headers["webhook-id"], at, body)
        try:
            wh.verify(body, headers)
            out.append({"label": case["label"], "verified": True, "error": None})
        except WebhookVerificationError as e:
            out.append({"label": case["label"], "verified": False, "error": str(e)})
    print(json.dumps(out))


main()
