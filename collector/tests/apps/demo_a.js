// Demo service A (Node.js, one event loop): GET /call/<nonce> calls B's /work/<nonce> and relays its body.
// Usage: demo_a.js LISTEN B, each a port (on 127.0.0.1) or host:port; B may also be a list of
// routes NAME=HOST:PORT,... that GET /call/<NAME>/<nonce> picks from (/call/<nonce>: route b).
const http = require("http");
// Name the process (its comm), as a service's own binary would be named.
process.title = "service-a";
const addr = (text) => {
  const i = text.lastIndexOf(":");
  return i < 0 ? { host: "127.0.0.1", port: Number(text) } : { host: text.slice(0, i), port: Number(text.slice(i + 1)) };
};
const listen = addr(process.argv[2]);
const routes = {};
if (process.argv[3].includes("=")) {
  for (const r of process.argv[3].split(",")) {
    const [name, a] = r.split("=");
    routes[name] = addr(a);
  }
} else {
  routes.b = addr(process.argv[3]);
}
const agent = new http.Agent({ keepAlive: true });
http
  .createServer((req, res) => {
    const parts = req.url.split("/");
    const route = routes[parts.length > 3 ? parts[2] : "b"];
    if (parts[1] !== "call" || !route) {
      res.writeHead(404, { "Content-Length": 0 });
      return res.end();
    }
    http
      .get({ host: route.host, port: route.port, path: `/work/${parts[parts.length - 1]}`, agent }, (reply) => {
        const chunks = [];
        reply.on("data", (c) => chunks.push(c));
        reply.on("end", () => {
          const body = Buffer.concat(chunks);
          res.writeHead(reply.statusCode, { "Content-Type": "application/json", "Content-Length": body.length });
          res.end(body);
        });
      })
      .on("error", (e) => {
        res.writeHead(502, { "Content-Length": 0 });
        res.end();
      });
  })
  .listen(listen.port, listen.host);
