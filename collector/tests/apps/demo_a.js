// Demo service A (Node.js, one event loop): GET /call/<nonce> calls B's /work/<nonce> and relays its body.
const http = require("http");
// Name the process (its comm), as a service's own binary would be named.
process.title = "service-a";
const [port, bPort] = [Number(process.argv[2]), Number(process.argv[3])];
const agent = new http.Agent({ keepAlive: true });
http
  .createServer((req, res) => {
    const parts = req.url.split("/");
    if (parts[1] !== "call") {
      res.writeHead(404, { "Content-Length": 0 });
      return res.end();
    }
    http
      .get({ host: "127.0.0.1", port: bPort, path: `/work/${parts[2]}`, agent }, (reply) => {
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
  .listen(port, "127.0.0.1");
