// Fixture server: GET /sleep/<ms>/<nonce> sleeps <ms> then answers 200; GET /ok/<nonce> 200;
// GET /chunked/<nonce> answers 200 with a chunked body of 6000 bytes.
const http = require("http");
const port = Number(process.argv[2]);
http
  .createServer((req, res) => {
    const parts = req.url.split("/");
    const reply = (body, headers = {}) => {
      res.writeHead(200, { "Content-Length": Buffer.byteLength(body), ...headers });
      res.end(body);
    };
    if (parts[1] === "sleep") {
      const ms = Number(parts[2]);
      const t0 = process.hrtime.bigint();
      // X-Slept-Us: how long the handler really waited (timers can fire late, e.g. after a GC).
      setTimeout(() => {
        const slept = (process.hrtime.bigint() - t0) / 1000n;
        reply(`slept ${ms}\n`, { "X-Slept-Us": slept.toString() });
      }, ms);

    } else if (parts[1] === "ok") {
      reply("ok\n");
    } else if (parts[1] === "chunked") {
      // No Content-Length: Node sends each write as a chunk.
      res.writeHead(200);
      res.write("a".repeat(1000));
      res.write("b".repeat(2000));
      res.end("c".repeat(3000));
    } else {
      res.writeHead(404, { "Content-Length": 0 });
      res.end();
    }
  })
  .listen(port, "127.0.0.1");
