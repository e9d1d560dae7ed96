// Runs one call of the `pusher` npm server SDK against Aviary and prints its outcome as one
// JSON line: {"status": 200, "body": <parsed body>} or, for a call the SDK rejected,
// {"status": <HTTP status>, "error": "<body text>"}. Driven by aviary/tests/pusher_http.rs.
//
// Usage: node node_sdk.mjs <call> '<JSON arguments>'
// Config from the environment: PUSHER_HOST, PUSHER_PORT, PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET.
import Pusher from "pusher";

const pusher = new Pusher({
  appId: process.env.PUSHER_APP_ID,
  key: process.env.PUSHER_KEY,
  secret: process.env.PUSHER_SECRET,
  host: process.env.PUSHER_HOST,
  port: process.env.PUSHER_PORT,
  useTLS: false,
});

const [call, rawArgs] = process.argv.slice(2);
const args = JSON.parse(rawArgs ?? "{}");

async function answer(response) {
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

const calls = {
  trigger: (a) => pusher.trigger(a.channels, a.event, a.data, a.params).then(answer),
  triggerBatch: (a) => pusher.triggerBatch(a.batch).then(answer),
  get: (a) => pusher.get({ path: a.path, params: a.params ?? {} }).then(answer),
  terminateUserConnections: (a) => pusher.terminateUserConnections(a.user_id).then(answer),
  sendToUser: (a) => pusher.sendToUser(a.user_id, a.event, a.data).then(answer),
  // These two compute signatures locally; the test checks them against Aviary's verifier.
  authorizeChannel: async (a) => ({ status: 200, body: pusher.authorizeChannel(a.socket_id, a.channel, a.presence) }),
  authenticateUser: async (a) => ({ status: 200, body: pusher.authenticateUser(a.socket_id, a.user) }),
};

try {
  if (!calls[call]) throw new Error(`unknown call ${call}`);
  console.log(JSON.stringify(await calls[call](args)));
} catch (e) {
  if (e.status) {
    console.log(JSON.stringify({ status: e.status, error: e.body }));
  } else {
    console.error(e);
    process.exit(2);
  }
}
