// Verifies hookd's deliveries with the official Standard Webhooks JS library (npm
// `standardwebhooks`): the same cases and output as verify_signatures.py.
const fs = require("fs");
const { Webhook } = require("standardwebhooks");

const cases = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = [];
for (const c of cases) {
  const wh = new Webhook(c.secret);
  const headers = { ...c.headers };
  if (c.resign_offset_s !== undefined) {
    const at = new Date(Date.now() + c.resign_offset_s * 1000);
    headers["webhook-timestamp"] = String(Math.floor(at.getTime() / 1000));
    headers["webhook-signature"] = wh.sign(headers["webhook-id"], at, c.body);
  }
  try {
    wh.verify(c.body, headers);
    out.push({ label: c.label, verified: true, error: null });
  } catch (e) {
    out.push({ label: c.label, verified: false, error: String(e && e.message) });
  }
}
console.log(JSON.stringify(out));
