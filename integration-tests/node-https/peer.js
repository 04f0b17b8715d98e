// Microsoft's hyco-https listener as a conformance peer for our relay's HTTP request mode.
// Usage: node peer.js LISTEN-URL   (env HC_KEY_NAME, HC_KEY). Prints JSON lines:
// {"event":"listening"} and one {"event":"request",...} per request. Routes (any prefix):
//   .../echo?status=S&reason=R   answers S R with the request body and X-Method/X-Length/X-Sha256
//   .../big?n=N                  answers 200 with N bytes (over 64 KiB it goes by rendezvous)
//   .../silent                   never answers
'use strict';
const crypto = require('crypto');
const https = require('hyco-https');

const url = process.argv[2];
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');
const token = () => https.createRelayToken(url, process.env.HC_KEY_NAME, process.env.HC_KEY);

const server = https.createRelayedServer({ server: url, token: token }, (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(Buffer.from(c)));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    out({ event: 'request', method: req.method, url: req.url, length: body.length, sha256: sha(body), headers: req.headers });
    const u = new URL(req.url, 'http://listener');
    if (u.pathname.endsWith('/silent')) return;
    if (u.pathname.endsWith('/big')) {
      res.statusCode = 200;
      res.setHeader('Content-Type', 'application/octet-stream');
      res.end(Buffer.alloc(parseInt(u.searchParams.get('n') || '0', 10), 7));
      return;
    }
    res.statusCode = parseInt(u.searchParams.get('status') || '200', 10);
    res.statusMessage = u.searchParams.get('reason') || 'OK';
    res.setHeader('X-Method', req.method);
    res.setHeader('X-Length', String(body.length));
    res.setHeader('X-Sha256', sha(body));
    // hyco-https sends nothing at all for res.end(<empty Buffer>): end without a chunk instead.
    if (body.length) res.end(body); else res.end();
  });
});
server.on('listening', () => out({ event: 'listening' }));
server.on('error', (e) => out({ event: 'error', message: String(e && e.message || e) }));
server.listen();
