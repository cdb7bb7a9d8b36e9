// Node.js cluster in round-robin mode (SCHED_RR): the primary accepts every connection and hands
// it to a worker over IPC. The same tiny handler as baton-balancer's workers.
//   node node_cluster.js PORT [WORKERS]
// SIGUSR2: every worker prints its counts to stderr; SIGTERM: workers print and exit, then the primary.
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');

cluster.schedulingPolicy = cluster.SCHED_RR;  // must be set before the first fork
const port = Number(process.argv[2] || 8080);
const workers = Number(process.argv[3] || 2);

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork({ BATON_INDEX: String(i) });
  const each = (sig) => { for (const id in cluster.workers) cluster.workers[id].process.kill(sig); };
  process.on('SIGUSR2', () => each('SIGUSR2'));
  process.on('SIGTERM', () => {
    each('SIGTERM');
    setTimeout(() => process.exit(0), 300);
  });
} else {
  const index = process.env.BATON_INDEX;
  let connections = 0, requests = 0;
  const server = http.createServer((req, res) => {
    requests++;
    const body = `hello from node worker ${index}\n`;
    res.writeHead(200, {
      'Content-Type': 'text/plain',
      'X-Baton-Worker': index,
      'X-Baton-Pid': String(process.pid),
      'Content-Length': Buffer.byteLength(body),
    });
    res.end(body);
  });
  server.keepAliveTimeout = 60000;
  server.on('connection', () => { connections++; });
  const report = () =>
    process.stderr.write(`node worker ${index} (pid ${process.pid}): ${connections} connections, ${requests} requests\n`);
  process.on('SIGUSR2', report);
  process.on('SIGTERM', () => { report(); process.exit(0); });
  server.listen(port, '127.0.0.1');
}
