// Socket.io 4 peer for aviary-bench: rooms over WebSocket plus an HTTP publish endpoint, the
// minimal server the Socket.io guides build. Listens on 127.0.0.1:$PORT (default 0) and prints
// `listening on http://ADDR` like `aviary dev`, so the harness can start it the same way.
// With REDIS_URL set it joins the other nodes through @socket.io/redis-adapter (channels prefixed
// with REDIS_PREFIX, default `socket.io`), so an emit on one node reaches every node's sockets.
'use strict';
const http = require('node:http');
const { Server } = require('socket.io');

const httpServer = http.createServer((req, res) => {
  // POST /publish/<room> with a JSON body: emitted as `message` to every socket in the room.
  if (req.method === 'POST' && req.url.startsWith('/publish/')) {
    const room = decodeURIComponent(req.url.slice('/publish/'.length));
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      let data;
      try { data = JSON.parse(body); } catch { res.writeHead(400).end(); return; }
      io.to(room).emit('message', data);
      res.writeHead(201, { 'content-type': 'application/json' }).end('{}');
    });
    return;
  }
  res.writeHead(404).end();
});

// WebSocket only (no long-polling upgrade dance), as a fair comparison with the other servers.
const io = new Server(httpServer, { transports: ['websocket'], serveClient: false });
io.on('connection', (socket) => {
  socket.on('join', (room, ack) => { socket.join(room); if (typeof ack === 'function') ack('ok'); });
  // A client publication goes to everyone in the room, the sender included (as in Aviary).
  socket.on('publish', (room, data) => { io.to(room).emit('message', data); });
});

// Without REDIS_URL the default in-memory adapter (one node) is used.
async function useRedisAdapter(url, key) {
  const { createClient } = require('redis');
  const { createAdapter } = require('@socket.io/redis-adapter');
  const pubClient = createClient({ url });
  const subClient = pubClient.duplicate();
  for (const client of [pubClient, subClient]) {
    client.on('error', (err) => console.error(`redis: ${err.message}`));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);
  io.adapter(createAdapter(pubClient, subClient, { key }));
}

(async () => {
  if (process.env.REDIS_URL) {
    await useRedisAdapter(process.env.REDIS_URL, process.env.REDIS_PREFIX || 'socket.io');
  }
  httpServer.listen(Number(process.env.PORT || 0), process.env.HOST || '127.0.0.1', () => {
    const { address, port } = httpServer.address();
    console.log(`listening on http://${address}:${port}`);
  });
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
