// Microsoft's hyco-ws as a conformance peer for our relay. Driven by integration-tests/tests/hyco.rs;
// prints one JSON object per line on stdout. Usage: node peer.js MODE URL [TOKEN-OPTIONS via env]
//   listen-echo  URL   RelayedServer; echoes every message with its type; reports closes
//   send         URL   relayedConnect; text, binary, 16 MiB binary, close 4000 "bye"
//   send-query   URL   like send, but the token goes in sb-hc-token (appendRelayToken)
//   send-bytes   URL   sends one binary message, prints what comes back (through our hcm to TCP)
//   status       URL   opens a WebSocket with the token header and reports the HTTP status
// Env: HC_KEY_NAME, HC_KEY (createRelayToken), HC_TOKEN_SECONDS (default 3600; negative = expired).
'use strict';
const crypto = require('crypto');
const WS = require('hyco-ws');

const [mode, url] = process.argv.slice(2);
const seconds = parseInt(process.env.HC_TOKEN_SECONDS || '3600', 10);
const token = () => WS.createRelayToken(url, process.env.HC_KEY_NAME, process.env.HC_KEY, seconds);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');
const big = Buffer.alloc(16 * 1024 * 1024, 0);
for (let i = 0; i < big.length; i += 4096) big[i] = i & 0xff;

function reportFailures(ws) {
  ws.on('unexpected-response', (req, res) => { out({ event: 'status', status: res.statusCode, reason: res.statusMessage }); process.exit(0); });
  ws.on('error', (e) => { out({ event: 'error', message: String(e && e.message || e) }); });
}

if (mode === 'listen-echo') {
  const server = WS.createRelayedServer({ server: url, token: token }, (ws) => {
    out({ event: 'connection' });
    ws.on('message', (data, flags) => {
      const binary = !!(flags && flags.binary);
      out({ event: 'message', binary, length: data.length, sha256: sha(data) });
      ws.send(data, { binary });
    });
    ws.on('close', (code, reason) => out({ event: 'close', code, reason: String(reason || '') }));
  });
  server.on('listening', () => out({ event: 'listening' }));
  server.on('error', (e) => out({ event: 'error', message: String(e && e.message || e) }));
} else if (mode === 'send' || mode === 'send-query') {
  const ws = mode === 'send' ? WS.relayedConnect(url, token()) : WS.relayedConnect(WS.appendRelayToken(url, process.env.HC_KEY_NAME, process.env.HC_KEY, seconds), null);
  reportFailures(ws);
  const expected = [['text', Buffer.from('hello relay')], ['binary', Buffer.from([1, 2, 3])], ['binary', big]];
  let i = 0;
  ws.on('open', () => {
    out({ event: 'open' });
    for (const [kind, data] of expected) ws.send(kind === 'text' ? data.toString() : data, { binary: kind === 'binary' });
  });
  ws.on('message', (data, flags) => {
    const [kind, sent] = expected[i++];
    const binary = !!(flags && flags.binary);
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
    out({ event: 'echo', kind, ok: binary === (kind === 'binary') && buf.equals(sent), length: buf.length });
    if (i === expected.length) ws.close(4000, 'bye');
  });
  ws.on('close', (code, reason) => { out({ event: 'close', code, reason: String(reason || '') }); process.exit(0); });
} else if (mode === 'send-bytes') {
  const ws = WS.relayedConnect(url, token());
  reportFailures(ws);
  ws.on('open', () => ws.send(Buffer.from(process.env.HC_PAYLOAD || 'ping'), { binary: true }));
  let got = Buffer.alloc(0);
  ws.on('message', (data) => {
    got = Buffer.concat([got, Buffer.from(data)]);
    if (got.length >= Buffer.byteLength(process.env.HC_PAYLOAD || 'ping')) { out({ event: 'reply', text: got.toString() }); ws.close(1000, 'done'); }
  });
  ws.on('close', (code) => { out({ event: 'close', code }); process.exit(0); });
} else if (mode === 'status') {
  const ws = new WS(url, null, { headers: { ServiceBusAuthorization: token() } });
  reportFailures(ws);
  ws.on('open', () => { out({ event: 'status', status: 101 }); ws.close(); process.exit(0); });
} else {
  console.error('unknown mode ' + mode);
  process.exit(2);
}
