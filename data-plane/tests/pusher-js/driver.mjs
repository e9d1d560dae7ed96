// Drives real pusher-js clients for data-plane/tests/pusher_socket.rs.
//
// Reads one JSON command per stdin line, writes one JSON line per observation to stdout:
//   {"cmd":"connect","client":"a","key":K,"secret":S,"host":H,"port":P,"user":{"id":"u1"}?}
//       -> {"client":"a","type":"connected","socket_id":...}
//          (or {"type":"error"...} / {"type":"state"...} if the server refuses)
//   {"cmd":"subscribe","client":"a","channel":C,"member":{"user_id":..,"user_info":..}?,"secret":S?}
//       -> {"type":"subscribed","channel":C,"members":{...}?} or {"type":"subscription_error",...}
//   {"cmd":"unsubscribe","client":"a","channel":C}
//   {"cmd":"trigger","client":"a","channel":C,"event":E,"data":D} -> {"type":"triggered","ok":bool}
//   {"cmd":"signin","client":"a"}   (with "user" given at connect)
//   {"cmd":"members","client":"a","channel":C} -> {"type":"members","ids":[...],"count":n}
//   {"cmd":"encrypt","client":"a","channel":C,"data":D} -> {"type":"encrypted","nonce","ciphertext"}
//   {"cmd":"disconnect","client":"a"}
// Every channel event is reported as {"client","type":"event","channel","event","data","user_id"},
// every user event as {"type":"user_event","event","data"}, connection errors and state changes
// as {"type":"error","error":...} and {"type":"state","current":...}.
//
// The channel authorization and user authentication a backend would do are computed here with
// the credential's secret, exactly as Pusher defines them (the "secret" of a command overrides
// it, to test refusals).
import { createHmac } from 'node:crypto';
import { createInterface } from 'node:readline';

import Pusher from 'pusher-js';
import nacl from 'tweetnacl';

const clients = new Map();

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function sign(secret, text) {
  return createHmac('sha256', secret).update(text).digest('hex');
}

// The per-channel key a backend derives for a private-encrypted- channel (any 32 bytes known to
// the backend and its authorized clients do; this test derives them from the channel name).
function sharedSecret(channel) {
  return createHmac('sha256', 'test master key').update(channel).digest();
}

function connect(cmd) {
  const { client, key, host, port } = cmd;
  const state = { secret: cmd.secret, members: new Map(), user: cmd.user };
  const pusher = new Pusher(key, {
    cluster: 'aviary',
    wsHost: host,
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    activityTimeout: cmd.activityTimeout ?? 120000,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const secret = state.channelSecrets?.get(channelName) ?? state.secret;
        const member = state.members.get(channelName);
        if (member) {
          const channelData = JSON.stringify(member);
          const auth = `${key}:${sign(secret, `${socketId}:${channelName}:${channelData}`)}`;
          callback(null, { auth, channel_data: channelData });
        } else {
          const answer = { auth: `${key}:${sign(secret, `${socketId}:${channelName}`)}` };
          // As Pusher's server SDKs do: the channel's key, which the Aviary server never sees.
          if (channelName.startsWith('private-encrypted-')) answer.shared_secret = sharedSecret(channelName).toString('base64');
          callback(null, answer);
        }
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        const userData = JSON.stringify(state.user);
        const secret = state.userSecret ?? state.secret;
        callback(null, { auth: `${key}:${sign(secret, `${socketId}::user::${userData}`)}`, user_data: userData });
      },
    },
  });
  state.pusher = pusher;
  clients.set(client, state);
  pusher.connection.bind('connected', () => {
    out({ client, type: 'connected', socket_id: pusher.connection.socket_id });
  });
  pusher.connection.bind('state_change', ({ current }) => out({ client, type: 'state', current }));
  pusher.connection.bind('error', (error) => out({ client, type: 'error', error: error?.data ?? error?.error?.data ?? String(error?.type ?? error) }));
  pusher.user.bind_global((event, data) => out({ client, type: 'user_event', event, data }));
  // Channel events as pusher-js decodes them, with the `user_id` Pusher adds on presence
  // channels (bind_global callbacks do not get it). Encrypted channels report from the channel
  // object, which decrypts.
  pusher.connection.bind('message', (event) => {
    const name = event.event ?? '';
    if (!event.channel || name.startsWith('pusher') || event.channel.startsWith('private-encrypted-')) return;
    if (event.channel.startsWith('#server-to-user-')) return;
    out({ client, type: 'event', channel: event.channel, event: name, data: event.data, user_id: event.user_id ?? null });
  });
}

function subscribe(cmd) {
  const state = clients.get(cmd.client);
  if (cmd.member) state.members.set(cmd.channel, cmd.member);
  if (cmd.secret) {
    state.channelSecrets ??= new Map();
    state.channelSecrets.set(cmd.channel, cmd.secret);
  }
  const channel = state.pusher.subscribe(cmd.channel);
  channel.bind('pusher:subscription_succeeded', (members) => {
    const report = { client: cmd.client, type: 'subscribed', channel: cmd.channel };
    if (members && typeof members.each === 'function') {
      const list = {};
      members.each((m) => (list[m.id] = m.info ?? null));
      report.members = list;
      report.me = members.me?.id;
    }
    out(report);
  });
  channel.bind('pusher:subscription_error', (error) => out({ client: cmd.client, type: 'subscription_error', channel: cmd.channel, error }));
  channel.bind('pusher:cache_miss', () => out({ client: cmd.client, type: 'cache_miss', channel: cmd.channel }));
  channel.bind('pusher:member_added', (m) => out({ client: cmd.client, type: 'member_added', channel: cmd.channel, id: m.id, info: m.info ?? null }));
  channel.bind('pusher:member_removed', (m) => out({ client: cmd.client, type: 'member_removed', channel: cmd.channel, id: m.id }));
  if (cmd.channel.startsWith('private-encrypted-')) {
    channel.bind_global((event, data) => {
      if (event.startsWith('pusher:') || event.startsWith('pusher_internal:')) return;
      out({ client: cmd.client, type: 'event', channel: cmd.channel, event, data, user_id: null });
    });
  }
}

function handle(cmd) {
  const state = clients.get(cmd.client);
  switch (cmd.cmd) {
    case 'connect':
      return connect(cmd);
    case 'subscribe':
      return subscribe(cmd);
    case 'unsubscribe':
      return state.pusher.unsubscribe(cmd.channel);
    case 'trigger': {
      const ok = state.pusher.channel(cmd.channel).trigger(cmd.event, cmd.data);
      return out({ client: cmd.client, type: 'triggered', ok });
    }
    case 'signin':
      if (cmd.secret) state.userSecret = cmd.secret;
      return state.pusher.signin();
    case 'members': {
      const members = state.pusher.channel(cmd.channel).members;
      const ids = [];
      members.each((m) => ids.push(m.id));
      return out({ client: cmd.client, type: 'members', channel: cmd.channel, ids: ids.sort(), count: members.count });
    }
    case 'encrypt': {
      // What a backend publishes on a private-encrypted- channel.
      const nonce = nacl.randomBytes(24);
      const message = new TextEncoder().encode(JSON.stringify(cmd.data));
      const box = nacl.secretbox(message, nonce, new Uint8Array(sharedSecret(cmd.channel)));
      return out({ client: cmd.client, type: 'encrypted', nonce: Buffer.from(nonce).toString('base64'), ciphertext: Buffer.from(box).toString('base64') });
    }
    case 'disconnect':
      state.pusher.disconnect();
      return out({ client: cmd.client, type: 'disconnected' });
    default:
      throw new Error(`unknown command ${cmd.cmd}`);
  }
}

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  if (!line.trim()) return;
  try {
    handle(JSON.parse(line));
  } catch (e) {
    out({ type: 'driver_error', error: String(e?.stack ?? e) });
  }
});
lines.on('close', () => {
  for (const state of clients.values()) state.pusher.disconnect();
  setTimeout(() => process.exit(0), 100);
});
